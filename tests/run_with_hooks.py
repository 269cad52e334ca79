"""Run the `e4e` command line with test hooks that shipped code does not carry.

    python tests/run_with_hooks.py [--kill-after-shards N] [--log-shards DIR] [--dump-params DIR] -- e4e ARGS...

--kill-after-shards N: after the N-th dataset shard is written the process dies at once
  (os._exit(3)), as a killed run would: no index, no clean-up.
--log-shards DIR: every dataset shard written is named, one index a line, in DIR/rank{R}.txt
  (R: torchrun's RANK, 0 without it), so a test sees which process wrote which shard.
--dump-params DIR: `e4e train` saves every rank's encoder parameters before and after the run
  as DIR/rank{R}_start.pt and DIR/rank{R}.pt (the hook `train.coach.run(on_params=...)`).
--log-video-crops DIR: `e4e edit CLIP.mp4` appends the size of every batch of crops it inverts to
  DIR/rank<R>.txt.
--kill-after-video-frames N: `e4e edit CLIP.mp4` dies at once after writing the N-th output frame.
--kill-after-latent-batches N: `e4e edit CLIP.mp4` dies at once (os._exit(3)) after the N-th batch
  of frame codes is marked done in latents.done.npy, as a killed run would.
Runs under torchrun as well (`torchrun ... tests/run_with_hooks.py ...`).
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path


def main() -> int:
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser()
    parser.add_argument("--kill-after-shards", type=int, default=0)
    parser.add_argument("--log-shards", type=Path, default=None)
    parser.add_argument("--dump-params", type=Path, default=None)
    parser.add_argument("--kill-after-latent-batches", type=int, default=0)
    parser.add_argument("--kill-after-video-frames", type=int, default=0)
    parser.add_argument("--log-video-crops", type=Path, default=None)
    hooks = parser.parse_args(argv[:cut])
    e4e_args = argv[cut + 1:]

    if hooks.kill_after_shards:
        from e4e_cli.jobs import dataset

        real, written = dataset.write_shard, [0]

        def write_then_maybe_die(*args, **kwargs):
            real(*args, **kwargs)
            written[0] += 1
            if written[0] >= hooks.kill_after_shards:
                os._exit(3)

        dataset.write_shard = write_then_maybe_die
    if hooks.log_shards is not None:
        from e4e_cli.jobs import dataset

        inner, log = dataset.write_shard, hooks.log_shards / f"rank{os.environ.get('RANK', '0')}.txt"

        def write_and_log(path, *args, **kwargs):
            inner(path, *args, **kwargs)
            with open(log, "a") as fh:
                fh.write(f"{int(Path(path).stem.rsplit('-', 1)[1])}\n")

        dataset.write_shard = write_and_log
    if hooks.dump_params is not None:
        import torch

        from e4e_cli.train import coach

        def dump(tag: str, rank: int, params: dict) -> None:
            torch.save(params, hooks.dump_params / f"rank{rank}{tag}.pt")

        coach.run = functools.partial(coach.run, on_params=dump)

    if hooks.kill_after_latent_batches:
        from e4e_cli.jobs import video

        real_mark, batches = video.mark_done, [0]

        def mark_then_maybe_die(*args, **kwargs):
            real_mark(*args, **kwargs)
            batches[0] += 1
            if batches[0] >= hooks.kill_after_latent_batches:
                os._exit(3)

        video.mark_done = mark_then_maybe_die

    if hooks.kill_after_video_frames:
        from e4e_cli import video as video_io

        real_write, frames = video_io.VideoWriter.write, [0]

        def write_then_maybe_die(self, *args, **kwargs):
            real_write(self, *args, **kwargs)
            frames[0] += 1
            if frames[0] >= hooks.kill_after_video_frames:
                os._exit(3)

        video_io.VideoWriter.write = write_then_maybe_die

    if hooks.log_video_crops is not None:
        from e4e_cli.jobs import video

        encode, log = video._encode_crops, hooks.log_video_crops / f"rank{os.environ.get('RANK', '0')}.txt"

        def encode_and_log(model, imgs):
            with open(log, "a") as fh:
                fh.write(f"{len(imgs)}\n")
            return encode(model, imgs)

        video._encode_crops = encode_and_log

    from e4e_cli.cli.app import main as e4e_main

    return e4e_main(e4e_args)


if __name__ == "__main__":
    sys.exit(main())
