"""Preview latency of `e4e ui` (issue 25): `make bench` runs it; alone:

    .venv/bin/python bench/bench_preview.py [--checkpoint PATH] [--moves 10] [--no-avx2]

What a user waits for after moving a slider, through the page's own request path: a real
uvicorn server on loopback with the page's token and Origin (the `Guard` middleware), a latent
picked through /api/latent, then per slider move a POST /api/preview for the 256 px preview
(the synthesis stopped after its 256 block) and, as when the slider rests, one for the full
decode; each timed from sending the request to holding the decoded JSON (PNG data URL
included). Median (and best) of `moves` moves at different strengths, after one warm-up move,
in float32 and in `auto` precision (bfloat16 where the CPU has it natively), on the synthetic
1024 checkpoint. The decode alone (`E4E.decode(size=...)`, no server) is shown beside it.

On an AVX-512 CPU the same runs again in a child process limited to AVX2 (ATen avx2 kernels,
oneDNN AVX2, E4E_NATIVE_BF16=0 so `auto` is float32 as on an AVX2-only CPU): same cores and
caches, so an approximation of a real AVX2 machine.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "bench"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "E4E_NATIVE_BF16": "0"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stats(times: list[float]) -> dict:
    return {"median_s": statistics.median(times), "best_s": min(times), "n": len(times)}


def time_page(model, *, moves: int = 10) -> dict:
    """The page's request path for `model`: preview and full latency over `moves` slider moves."""
    import numpy as np
    import requests
    import torch
    import uvicorn

    from e4e_cli.ui.server import Editor, create_app, new_token

    with tempfile.TemporaryDirectory(prefix="e4e-bench-preview-") as tmp:
        gen = torch.Generator().manual_seed(0)
        codes = model.latent_avg + 0.5 * torch.randn(*model.latent_avg.shape, generator=gen)
        (Path(tmp) / "face").mkdir()
        np.save(Path(tmp) / "face" / "latent.npy", codes.float().cpu().numpy())
        editor = Editor(model, latents_dir=Path(tmp), synthetic=True)
        port, token = _free_port(), new_token()
        app = create_app(editor, token=token, host="127.0.0.1", port=port)
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{port}"
        http = requests.Session()
        http.headers.update({"Authorization": f"token {token}", "Origin": url})
        try:
            for _ in range(100):
                try:
                    http.get(url + "/api/info", timeout=1)
                    break
                except requests.ConnectionError:
                    time.sleep(0.1)
            sid = http.post(url + "/api/latent", json={"path": "face/latent.npy"}, timeout=300).json()["session"]
            slider = next(iter(editor.directions))
            seq = 0

            def ask(strength: float, size: str) -> float:
                nonlocal seq
                seq += 1
                t0 = time.perf_counter()
                r = http.post(url + "/api/preview", json={"session": sid, "strengths": {slider: strength}, "delta_scale": 1.0,
                                                          "seq": seq, "size": size}, timeout=600)
                data = r.json()
                dt = time.perf_counter() - t0
                if r.status_code != 200 or "image" not in data:
                    raise RuntimeError(f"/api/preview answered {r.status_code}: {str(data)[:200]}")
                return dt

            ask(0.5, "preview"), ask(0.5, "full")  # warm-up: plans, allocator
            previews, fulls = [], []
            for strength in np.linspace(-3.0, 3.0, moves):
                previews.append(ask(float(strength), "preview"))
                fulls.append(ask(float(strength), "full"))
            decode = {"preview": [], "full": []}
            c = editor.edited_codes(editor.session(sid), {slider: 1.0}, 1.0)
            with torch.inference_mode():
                for _ in range(3):
                    for kind, size in (("preview", editor.preview_size("preview")), ("full", None)):
                        t0 = time.perf_counter()
                        model.decode(c, size=size)
                        decode[kind].append(time.perf_counter() - t0)
        finally:
            server.should_exit = True
            thread.join(timeout=30)
    return {"preview_size": editor.preview_size("preview") or model.size, "full_size": model.size,
            "precision": str(model.precision).replace("torch.", ""), "slider": slider,
            "preview": _stats(previews), "full": _stats(fulls),
            "decode_only": {k: _stats(v) for k, v in decode.items()}}


def floor(model) -> dict:
    """GFLOP of the preview and the full decode (reference path, torch's FLOP counter) and this
    process's float32 convolution peak: the least time each can take in float32 here."""
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from bench import conv_peak  # noqa: E402  (bench/bench.py, beside this script)

    gflop = {}
    params = list(model.generator.parameters())
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)  # the counter's module hooks need no autograd graph
        for kind, size in (("preview", 256), ("full", None)):
            fc = FlopCounterMode(display=False)
            with fc, torch.no_grad():
                model.decode(model.latent_avg[None], size=size, impl="ref")
            gflop[kind] = fc.get_total_flops() / 1e9
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)
    peak = conv_peak(torch, F, torch.float32)
    return {"gflop": gflop, "conv_peak_fp32_gflops": peak, "fp32_floor_s": {k: v / peak for k, v in gflop.items()}}


def run_here(ckpt: Path, precisions, moves: int) -> dict:
    from e4e_cli.model import E4E
    from e4e_cli.nn.runtime import isa_summary

    out = {"isa": isa_summary(), "rows": {}}
    for p in precisions:
        model = E4E.from_checkpoint(ckpt, device="cpu", precision=p)
        out["rows"][p] = time_page(model, moves=moves)
        if "floor" not in out:
            out["floor"] = floor(model)
        del model
    return out


def bench_preview(ckpt: Path | None = None, *, moves: int = 10, avx2: bool = True) -> dict | str:
    """Native rows (fp32, auto) and, on an AVX-512 CPU, the AVX2-limited child's rows."""
    import importlib.util

    missing = [m for m in ("fastapi", "uvicorn", "requests") if importlib.util.find_spec(m) is None]
    if missing:
        return f"skipped: {', '.join(missing)} not installed (pip install -e '.[ui]')"
    from e4e_cli.synthetic import synthetic_checkpoint

    ckpt = Path(ckpt) if ckpt else synthetic_checkpoint(1024, 1, "ffhq")
    res = {"load_avg_start": os.getloadavg()[0], "native": run_here(ckpt, ("fp32", "auto"), moves)}
    if avx2 and "avx512f" in res["native"]["isa"]["flags"]:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--checkpoint", str(ckpt), "--moves", str(moves)]
        p = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, **AVX2_ENV), cwd=str(ROOT))
        line = next((x for x in p.stdout.splitlines() if x.startswith("PREVIEW ")), None)
        res["avx2"] = json.loads(line[8:]) if line else f"failed: {(p.stdout + p.stderr).strip()[-300:]}"
    res["load_avg_end"] = os.getloadavg()[0]  # other work on the machine slows every row
    return res


def format_rows(res: dict | str) -> str:
    """The table `make bench` prints."""
    if isinstance(res, str):
        return f"e4e ui preview latency: {res}"
    lines = ["e4e ui preview latency (POST /api/preview on loopback, median of the slider moves, best in brackets; "
             f"decode alone after it); load avg {res.get('load_avg_start', 0):.1f} -> {res.get('load_avg_end', 0):.1f}"]
    for where, part in (("native", res.get("native")), ("AVX2 only", res.get("avx2"))):
        if part is None:
            continue
        if isinstance(part, str):
            lines.append(f"  {where}: {part}")
            continue
        isa = part["isa"]
        fl = part.get("floor") or {}
        lines.append(f"  {where}: {isa['cpu']}, ATen {isa['aten_capability']}, {isa['threads']} threads; conv peak fp32 "
                     f"{fl.get('conv_peak_fp32_gflops', 0):.0f} GFLOP/s: float32 floor preview "
                     f"{fl.get('fp32_floor_s', {}).get('preview', 0):.3f} s ({fl.get('gflop', {}).get('preview', 0):.0f} GFLOP), "
                     f"full {fl.get('fp32_floor_s', {}).get('full', 0):.3f} s ({fl.get('gflop', {}).get('full', 0):.0f} GFLOP)")
        for asked, r in part["rows"].items():
            pv, fu, dec = r["preview"], r["full"], r["decode_only"]
            lines.append(f"    {asked:<5}({r['precision']:<8}) preview {r['preview_size']} px {pv['median_s']:.3f} s "
                         f"({pv['best_s']:.3f}), decode {dec['preview']['median_s']:.3f};  full {r['full_size']} px "
                         f"{fu['median_s']:.3f} s ({fu['best_s']:.3f}), decode {dec['full']['median_s']:.3f}  [{pv['n']} moves]")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", help="a 1024 e4e checkpoint (default: the synthetic one in .cache/)")
    ap.add_argument("--moves", type=int, default=10)
    ap.add_argument("--no-avx2", action="store_true", help="skip the AVX2-limited child process")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    from e4e_cli.nn import runtime

    runtime.tune_process()
    if args.child:  # limited to AVX2 by its environment: float32 only (auto is float32 there)
        print("PREVIEW " + json.dumps(run_here(Path(args.checkpoint), ("fp32",), args.moves)), flush=True)
        return 0
    res = bench_preview(args.checkpoint, moves=args.moves, avx2=not args.no_avx2)
    print(json.dumps(res, indent=2, default=str))
    print(format_rows(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
