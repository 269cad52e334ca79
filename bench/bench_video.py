"""Video edits: frames per second per stage and peak memory, on a clip made here.

A 720p clip (the fixture face photo moving across a textured background, 30 frames/s, an AAC
tone) is edited by `jobs.video.run_video_edit` in a fresh process per case (so its peak RSS is
its own), with the synthetic checkpoints of the parity fixtures: one row per (checkpoint,
precision, frames). Stages: align (decode + face tracking), invert (decode + crop + encoder),
edit = generate (decode of the edited codes) + paste + encode (libx264) + the rest (decoding the
frames again). Peak RSS for two clip lengths shows whether memory grows with the clip (it must
be flat). Results go to bench/results_video.json.

    python bench/bench_video.py [--cases church_256_s3,ffhq_1024_s1] [--frames 12,48] [--precisions fp32,auto]
    python bench/bench_video.py --cases church_256_s3 --precisions auto --frames 60,180 --face-frames 12  # memory
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CASES = {"ffhq_1024_s1": (1024, 1, "ffhq"), "cars_512_s2": (512, 2, "cars"), "church_256_s3": (256, 3, "church")}


def make_clip(path: Path, frames: int, size=(1280, 720), fps: int = 30, face_frames: int = 0, *, start: int = 100,
              speed: int = 4, wobble: int = 0, noise: float = 0.0, audio: bool = True, crf: int | None = None) -> None:
    """The face photo (60% of the height) drifting right (`speed` px a frame from x = `start`)
    across a smooth background, with a tone; `face_frames` > 0: the face is in the first that
    many frames only (long clips for memory); `wobble`: a random hand-held shake of up to that
    many px a frame, `noise`: sensor noise (sigma, gray levels)."""
    import av
    import numpy as np
    from PIL import Image

    from e4e_cli import synthetic

    w, h = size
    side = int(h * 0.6)
    face = Image.open(synthetic.parity_dir() / "images" / "input_img.jpg").convert("RGB").resize((side, side))
    rng = np.random.default_rng(0)
    bg = np.asarray(Image.fromarray(rng.integers(0, 255, (9, 16, 3)).astype(np.uint8)).resize((w, h), Image.BICUBIC))
    out = av.open(str(path), "w")
    vs = out.add_stream("libx264", rate=fps)
    vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
    if crf is not None:
        vs.options = {"crf": str(crf)}
    a = None
    if audio:
        a = out.add_stream("aac", rate=48000)
        a.layout = "mono"
    for i in range(frames):
        img = Image.fromarray(bg)
        dx, dy = rng.integers(-wobble, wobble + 1, 2) if wobble else (0, 0)
        if not face_frames or i < face_frames:
            img.paste(face, (start + speed * i + int(dx), (h - side) // 2 + int(dy)))
        arr = np.asarray(img)
        if noise:
            arr = np.clip(arr.astype(np.float32) + rng.normal(0, noise, (h, w, 3)), 0, 255).astype(np.uint8)
        f = av.VideoFrame.from_ndarray(arr, format="rgb24")
        f.pts = i
        out.mux(vs.encode(f))
    out.mux(vs.encode(None))
    if a is not None:
        n = int(48000 * frames / fps)
        sig = (0.2 * np.sin(2 * np.pi * 440 * np.arange(n) / 48000)).astype(np.float32)
        step = a.codec_context.frame_size or 1024
        for s in range(0, n, step):
            fr = av.AudioFrame.from_ndarray(sig[None, s : s + step], format="fltp", layout="mono")
            fr.sample_rate, fr.pts = 48000, s
            out.mux(a.encode(fr))
        out.mux(a.encode(None))
    out.close()


def one(case: str, precision: str, clip: Path) -> dict:
    """One edit of `clip` in this process (run by `main` in a child that does nothing else, so
    its peak RSS is the edit's own): stage seconds and peak RSS."""
    from e4e_cli import synthetic
    from e4e_cli.jobs.video import VideoEditJob, run_video_edit

    ckpt = synthetic.synthetic_checkpoint(*CASES[case])
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        r = run_video_edit(VideoEditJob(video=clip, direction="sefa:0", strengths=[2.0], out=Path(d) / "out",
                                        checkpoint=ckpt, precision=precision, device="cpu"))
        total = time.perf_counter() - t0
    fps = lambda s: round(r.frames / s, 3) if s else None  # noqa: E731
    rest = r.seconds["edit"] - sum(r.parts.values())
    return {"case": case, "precision": precision, "frames": r.frames, "with_face": r.edited,
            "seconds": {k: round(v, 2) for k, v in {**r.seconds, **r.parts, "edit_rest": rest, "total": total}.items()},
            "frames_per_s": {k: fps(v) for k, v in {**r.seconds, **r.parts, "total": total}.items()},
            "align_share": round(r.seconds["align"] / total, 3),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default="church_256_s3,ffhq_1024_s1")
    ap.add_argument("--frames", default="12")
    ap.add_argument("--precisions", default="fp32,auto")
    ap.add_argument("--face-frames", type=int, default=0, help="the face in the first N frames only (memory rows)")
    ap.add_argument("--one", nargs=3, metavar=("CASE", "PRECISION", "CLIP"), help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results_video.json")
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], args.one[1], Path(args.one[2]))))
        return
    rows = []
    for case in args.cases.split(","):
        for precision in args.precisions.split(","):
            for n in map(int, args.frames.split(",")):
                with tempfile.TemporaryDirectory() as d:  # the clip is made here, outside the measured process
                    clip = Path(d) / "clip.mp4"
                    make_clip(clip, n, face_frames=args.face_frames)
                    proc = subprocess.run([sys.executable, __file__, "--one", case, precision, str(clip)],
                                          capture_output=True, text=True, env={**__import__("os").environ,
                                                                               "E4E_NO_PROGRESS": "1"})
                if proc.returncode:
                    print(proc.stderr[-2000:], file=sys.stderr)
                    continue
                row = {**json.loads(proc.stdout.strip().splitlines()[-1]), "face_frames": args.face_frames}
                rows.append(row)
                f = row["frames_per_s"]
                print(f"{case:14s} {precision:5s} {n:4d} frames 720p: total {f['total']} frames/s "
                      f"(align {f['align']}, invert {f['invert']}, generate {f.get('generate')}, paste {f.get('paste')}, "
                      f"encode {f.get('encode')}); align {row['align_share']:.0%} of the time; "
                      f"peak RSS {row['peak_rss_mb']} MB", flush=True)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    args.out.write_text(json.dumps({"cpu": cpu, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
