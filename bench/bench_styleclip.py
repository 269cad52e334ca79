"""Text edits (StyleCLIP global directions, issue 33): `make bench` runs it; alone:

    .venv/bin/python bench/bench_styleclip.py [--repeat 3] [--skip-relevance]

- text encoding: the 79 templates of the target and the neutral text through CLIP ViT-B/32's
  text tower (random weights of the real shape: the real file cannot be fetched on the build
  machines; the cost is the same), first call and cached call;
- a text edit at 1024 (synthetic ffhq checkpoint): Δs from a [6048,512] relevance, then the decode
  with the style offsets (fast path, float32 and `auto` precision), the text encoding cached;
  the plain decode beside it;
- the relevance (`e4e directions relevance`) per channel and sample: two decodes and two CLIP
  ViT-B/32 image embeddings, at 256 (church) and 1024 (ffhq).

CPU (and GPU rows when CUDA is there). Writes bench/results_styleclip.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "bench", ROOT / "tests"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))


def _clip_files(folder: Path) -> Path:
    """A weights folder with a random CLIP of ViT-B/32's shape and CLIP's real vocabulary."""
    import torch
    from safetensors.torch import save_file
    from transformers import CLIPConfig, CLIPModel

    from clip_support import real_vocab

    folder.mkdir(parents=True, exist_ok=True)
    vocab = real_vocab()
    (folder / "bpe_simple_vocab_16e6.txt.gz").write_bytes(vocab.read_bytes())
    text = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8,
                max_position_embeddings=77, projection_dim=512, bos_token_id=49406, eos_token_id=49407)
    vision = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, image_size=224,
                  patch_size=32, projection_dim=512)
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=512))
    sd = {k: v.contiguous() for k, v in model.state_dict().items() if not k.endswith("position_ids")}
    save_file(sd, str(folder / "clip-vit-base-patch32.safetensors"))
    return folder


def _median(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-relevance", action="store_true")
    args = ap.parse_args()

    import numpy as np
    import torch

    from e4e_cli import styleclip, synthetic, textedit
    from e4e_cli.model import E4E
    from e4e_cli.nn import runtime

    runtime.tune_process()
    rows = {}
    with tempfile.TemporaryDirectory(prefix="e4e-bench-styleclip-") as tmp:
        weights = _clip_files(Path(tmp) / "weights")
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        for dev in devices:
            clip = textedit.load_clip_model(weights, device=dev)
            t = time.perf_counter()
            cache: dict = {}
            dt = styleclip.text_direction(clip, "a face with glasses", "a face", cache=cache)
            first = time.perf_counter() - t
            cached = _median(lambda: styleclip.text_direction(clip, "a face with glasses", "a face", cache=cache),
                             args.repeat)
            rows[f"{dev}: text encoding (2 texts x 79 templates), first / cached s"] = [round(first, 3),
                                                                                       round(cached, 5)]
            model = E4E.from_checkpoint(synthetic.synthetic_checkpoint(1024, 1, "ffhq"), device=dev)
            g = model.generator
            rng = np.random.RandomState(0)
            fs3 = rng.randn(g.n_style_channels, 512).astype(np.float32)
            fs3 /= np.linalg.norm(fs3, axis=1, keepdims=True)
            std = torch.rand(g.n_style_channels)
            codes = model.sample_w(1, seed=0)[:, None].repeat(1, g.n_styles, 1)
            for prec in ("float32", "auto"):
                def edit():
                    d = styleclip.style_direction(fs3, styleclip.text_direction(clip, "a face with glasses", "a face",
                                                                                cache=cache), std, beta=0.05)
                    model.decode(codes, precision=prec, style_offsets=4.0 * d.delta)

                edit()  # warm-up
                rows[f"{dev}: text edit at 1024, {prec}, s (text cached)"] = round(_median(edit, args.repeat), 3)
                rows[f"{dev}: plain decode at 1024, {prec}, s"] = round(
                    _median(lambda: model.decode(codes, precision=prec), args.repeat), 3)
            if not args.skip_relevance:
                from e4e_cli.jobs import relevance
                from e4e_cli.jobs.sampled import GeneratorSource

                for name, (size, seed, domain) in {"church 256": (256, 3, "church"),
                                                   "ffhq 1024": (1024, 1, "ffhq")}.items():
                    ck = synthetic.synthetic_checkpoint(size, seed, domain)
                    out = Path(tmp) / f"rel_{dev}_{size}.npz"
                    _, info = relevance.compute_relevance(relevance.RelevanceJob(
                        source=GeneratorSource(checkpoint=ck, weights_dir=weights), out=out, samples=2,
                        stats_samples=2000, channels=(0, 2), batch=4, device=dev, show_progress=False))
                    rows[f"{dev}: relevance {name}, s per channel and sample (2 decodes + 2 CLIP images)"] = \
                        info["seconds_per_channel_and_sample"]
    for k, v in rows.items():
        print(f"{k:90s} {v}")
    info = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
            "rows": rows, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    (ROOT / "bench" / "results_styleclip.json").write_text(json.dumps(info, indent=1) + "\n")


if __name__ == "__main__":
    main()
