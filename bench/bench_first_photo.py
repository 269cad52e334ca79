"""First photo (issue 25): the wall time of one `e4e invert photo.jpg` (alignment included) from a
cold process, the parts it spends it on, and the warm per-image time it is measured against.

Each run is a fresh process (`subprocess`), so Python, torch, dlib and the checkpoint are loaded
anew; the page cache is warm (the checkpoint and the landmark model were read before), as on a
machine that has run e4e before. The parts are timed inside one such process by wrapping the
package's own functions from outside (nothing in e4e_cli knows about it):

    start       process start to the CLI's main (Python, typer)
    torch       importing torch
    checkpoint  reading the checkpoint (torch.load, memory-mapped)
    networks    building the encoder and generator and assigning the weights
    dlib        importing dlib and loading the 68-landmark model
    align       decoding the photo, face detection, landmarks and the warp
    encode      the first encode (its fast path's planning included)
    decode      the first decode (the same)
    write       writing aligned.png, inversion.png, the latents and meta.json
    exit        the end of the command to the end of the process

The photo is aligned in a thread while the model loads, so the parts may add up to more than the
wall time; `other` is what no part covers (wall minus the sum, when positive). `until_first_encode`
(process start to the first encode: the start-up proper, without the network's work) is the
steadiest number on a busy machine, where the encode and decode vary most. The warm
per-image time is the extra wall time per photo of one command given 3 photos, against 1 (the
same options; its model's own encode + decode of a later photo is shown beside it).
`--isa avx2` runs everything as on an AVX2-only CPU (ATen and oneDNN limited to AVX2, no native
bfloat16, so `--precision auto` picks float32 as there).

    .venv/bin/python bench/bench_first_photo.py [--checkpoint PATH] [--photo JPG] [--isa avx2] [--runs 3]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PY = sys.executable
ISA_ENV = {"avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "E4E_NATIVE_BF16": "0"}}
PARTS = ("start", "torch", "checkpoint", "networks", "dlib", "align", "encode", "decode", "write", "exit")
TOKEN = "bench-first-photo-token-0123456789"

# Runs in the measured process: wraps functions as their modules are imported, then runs the CLI.
CHILD = r'''
import importlib.abc, importlib.machinery, sys, threading, time
WRAP = {
    "e4e_cli.model": [("read_checkpoint", "checkpoint"), ("E4E.from_checkpoint", "load"),
                      ("E4E.encode_parts", "encode"), ("E4E.decode", "decode")],
    "e4e_cli.alignment": [("FaceAligner.__init__", "dlib"), ("align_photo", "align_photo")],
    "e4e_cli.jobs.invert": [("_write_inversion", "write")],
    "e4e_cli.cli.options": [("print_results", "results")],
}
TIMED_IMPORTS = {"torch": "torch"}
lock = threading.Lock()

def note(label, t0, t1):
    with lock:
        print("T", label, t0, t1 - t0, flush=True)

def timed(fn, label):
    def inner(*args, **kwargs):
        t0 = time.time()
        try:
            return fn(*args, **kwargs)
        finally:
            note(label, t0, time.time())
    inner.__wrapped__ = fn
    return inner

def patch(module):
    for dotted, label in WRAP.get(module.__name__, ()):
        owner, _, name = dotted.rpartition(".")
        target = getattr(module, owner) if owner else module
        raw = target.__dict__[name] if isinstance(target, type) else getattr(target, name)
        if isinstance(raw, classmethod):
            setattr(target, name, classmethod(timed(raw.__func__, label)))
        else:
            setattr(target, name, timed(raw, label))

class Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name not in WRAP and name not in TIMED_IMPORTS:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module
        def exec_module(module):
            t0 = time.time()
            run(module)
            if name in TIMED_IMPORTS:
                note(TIMED_IMPORTS[name], t0, time.time())
            patch(module)
        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, Finder())
from e4e_cli.cli.app import main
sys.argv = ["e4e", *sys.argv[1:]]
print("T", "main", time.time(), 0.0, flush=True)
rc = main()
print("T", "end", time.time(), 0.0, flush=True)
sys.exit(rc)
'''


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_child(args: list[str], env: dict, *, root: Path = ROOT) -> dict:
    """One cold `e4e <args>` with the timers, running the e4e_cli of `root`: its wall time and
    timer lines."""
    t0 = time.time()
    p = subprocess.Popen([PY, "-c", CHILD, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env, cwd=str(root))
    out, err = p.communicate()
    t1 = time.time()
    marks: dict[str, list[tuple[float, float]]] = {}
    for line in out.splitlines():
        if line.startswith("T "):
            _, label, start, dur = line.split()
            marks.setdefault(label, []).append((float(start), float(dur)))
    return {"t0": t0, "t1": t1, "rc": p.returncode, "marks": marks, "tail": (out + err).strip()[-300:]}


def _peak_rss_mb(cmd: list[str], env: dict) -> float:
    """Peak RSS of a fresh process running `cmd` (resource of the waited-for child)."""
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=str(ROOT))
    _, _, ru = os.wait4(p.pid, 0)
    return ru.ru_maxrss / 1024.0


def parts_of(r: dict) -> dict:
    """The PARTS of one run, in seconds (first occurrence of each timer)."""
    m = r["marks"]
    first = lambda k: m[k][0] if k in m else (float("nan"), float("nan"))  # noqa: E731
    out = {"start": first("main")[0] - r["t0"], "torch": first("torch")[1],
           "checkpoint": first("checkpoint")[1], "networks": first("load")[1] - first("checkpoint")[1],
           "dlib": first("dlib")[1], "align": first("align_photo")[1] - first("dlib")[1],
           "encode": first("encode")[1], "decode": first("decode")[1], "write": first("write")[1]}
    res = first("results")
    out["exit"] = r["t1"] - (res[0] + res[1])
    wall = r["t1"] - r["t0"]
    total = sum(out[k] for k in PARTS)
    out.update({"wall": wall, "sum_of_parts": total, "other": max(0.0, wall - total),
                "until_encode": first("encode")[0] - r["t0"]})
    return out


def bench_first_photo(*, checkpoint: Path | None = None, photo: Path | None = None, isa: str | None = None,
                      runs: int = 3, ui: bool = True) -> dict:
    """Best of `runs` cold first photos (per part: the run with the best wall time), the warm
    per-image time, peak RSS, and the `e4e ui` start-up. Returns a dict for results.json."""
    from e4e_cli.synthetic import parity_dir, synthetic_checkpoint

    ckpt = Path(checkpoint) if checkpoint else synthetic_checkpoint(1024, 1, "ffhq", log=log)
    photo = Path(photo) if photo else parity_dir() / "images" / "input_img.jpg"
    if not photo.is_file():
        return {"skipped": f"no photo at {photo}"}
    env = dict(os.environ, E4E_NO_PROGRESS="1", **(ISA_ENV[isa] if isa else {}))
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    tmp = Path(tempfile.mkdtemp(prefix="e4e-bench-first-"))
    try:
        three = tmp / "three"
        three.mkdir()
        for i in range(3):
            shutil.copy(photo, three / f"photo{i}{photo.suffix}")
        base = ["--checkpoint", str(ckpt), "--device", "cpu", "--overwrite"]
        one = ["invert", str(photo), "--out", str(tmp / "out1"), *base]
        run_child(one, env)  # page cache: the checkpoint, the landmark model, torch's libraries
        cold, many = [], []
        for _ in range(runs):  # interleaved, so a drift of the machine's speed hits both alike
            r = run_child(one, env)
            if r["rc"] != 0:
                return {"failed": r["tail"]}
            cold.append(parts_of(r))
            r3 = run_child(["invert", str(three), "--out", str(tmp / "out3"), *base], env)
            if r3["rc"] != 0:
                return {"failed": r3["tail"]}
            many.append((r3["t1"] - r3["t0"], r3["marks"]))
        best = min(cold, key=lambda p: p["wall"])
        wall3, marks3 = min(many, key=lambda x: x[0])
        warm = (wall3 - best["wall"]) / 2
        later = [e[1] + d[1] for e, d in zip(marks3.get("encode", [])[1:], marks3.get("decode", [])[1:])]
        out = {
            "what": f"e4e invert {photo.name} (with alignment) from a cold process, page cache warm; best of {runs}",
            "isa": isa or "native",
            "first_photo_s": round(best["wall"], 3),
            "first_photo_median_s": round(sorted(p["wall"] for p in cold)[len(cold) // 2], 3),
            "parts_s": {k: round(best[k], 3) for k in (*PARTS, "other")},
            "sum_of_parts_s": round(best["sum_of_parts"], 3),
            "until_first_encode_s": round(min(p["until_encode"] for p in cold), 3),
            "warm_per_image_s": round(warm, 3),
            "warm_encode_decode_s": round(min(later), 3) if later else None,
            "first_over_warm": round(best["wall"] / warm, 2) if warm > 0 else None,
            "peak_rss_mb": round(_peak_rss_mb([PY, "-m", "e4e_cli", *one], env), 1),
        }
        if ui:
            out["ui_first_page_s"] = ui_startup(ckpt, env)
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ui_startup(ckpt: Path, env: dict, timeout: float = 180.0) -> float | str:
    """Seconds from launching `e4e ui --no-browser` until its page answers 200."""
    import socket
    import urllib.error
    import urllib.request

    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        return "skipped (no fastapi/uvicorn)"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/?token={TOKEN}"
    t0 = time.perf_counter()
    p = subprocess.Popen([PY, "-m", "e4e_cli", "ui", "--checkpoint", str(ckpt), "--device", "cpu", "--no-browser",
                          "--port", str(port)], env=dict(env, E4E_UI_TOKEN=TOKEN),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=str(ROOT))
    try:
        while time.perf_counter() - t0 < timeout:
            if p.poll() is not None:
                return f"failed: {p.stderr.read().decode()[-200:]}"
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    if resp.status == 200:
                        return round(time.perf_counter() - t0, 3)
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.05)
        return f"no page after {timeout:.0f} s"
    finally:
        p.terminate()
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def format_rows(r: dict) -> list[str]:
    """Lines for bench.py's table, from {"native": bench_first_photo(), "avx2": ...}."""
    if not isinstance(r, dict):
        return [f"first photo: {r}"]
    lines = []
    for key in ("native", "avx2"):
        x = r.get(key)
        if not isinstance(x, dict) or "parts_s" not in x:
            if x is not None:
                lines.append(f"first photo ({key}): {x}")
            continue
        parts = ", ".join(f"{k} {v:.2f}" for k, v in x["parts_s"].items())
        lines.append(f"first photo ({key}): e4e invert photo.jpg cold {x['first_photo_s']:.2f} s (median "
                     f"{x['first_photo_median_s']:.2f}) = {x['first_over_warm']}x the warm {x['warm_per_image_s']:.2f} s/photo; "
                     f"parts sum {x['sum_of_parts_s']:.2f} s: {parts}; peak RSS {x['peak_rss_mb']:.0f} MB; "
                     f"e4e ui page {x.get('ui_first_page_s')} s")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", help="a 1024 e4e checkpoint (default: the synthetic one in .cache/)")
    ap.add_argument("--photo", help="a face photo (default: the parity folder's input_img.jpg)")
    ap.add_argument("--isa", choices=sorted(ISA_ENV), help="emulate an older CPU's kernels")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-ui", action="store_true", help="skip the e4e ui start-up")
    args = ap.parse_args(argv)
    r = bench_first_photo(checkpoint=args.checkpoint, photo=args.photo, isa=args.isa, runs=args.runs, ui=not args.no_ui)
    print(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
