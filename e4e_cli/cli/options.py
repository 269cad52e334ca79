"""What several commands share: the --domain, --device, --precision, --batch-size and --weights-dir
options, HyperStyle's --refine family (invert, evaluate), their checks, and the closing summary
line of a batch.

Options are made by functions (a fresh `typer.Option` per command). `--weights-dir` has no
environment fallback here: `settings.weights_dir()` (E4E_WEIGHTS_DIR) is read where the folder
is resolved (`weights.locate`), so the variable has one reader.
"""
from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Callable, Optional

import typer

from ..compositing import MASK_KINDS
from ..domains import NAMES as DOMAIN_NAMES
from ..errors import INTERRUPTED, USAGE, E4EError

DOMAIN_HELP = "ffhq, cars, horse or church (default: what --checkpoint records, else ffhq; an explicit one wins)."
PRECISION_HELP = ("auto (default): bf16 where the CPU (AVX512-BF16/AMX) or GPU computes it natively, else fp32; "
                  "or fp32 (the reference's numbers), bf16, fp16.")
BATCH_HELP = "Images per forward pass (default: picked to keep memory low, e.g. 1 for 1024 fp32 on a CPU)."
WEIGHTS_HELP = "Weights folder (default: $E4E_WEIGHTS_DIR, else weights/ of a source checkout, else ~/.cache/e4e)."
CHECKPOINT_HELP = "e4e checkpoint (default: the domain's file in the weights folder)."


PRECISION_NAMES = ("auto", "fp32", "float32", "bf16", "bfloat16", "fp16", "float16")


def _usage(check):
    """A check as an option callback: a bad value is a usage error (exit 2) when the command line is parsed."""
    def callback(value):
        try:
            return check(value)
        except E4EError as exc:
            raise typer.BadParameter(str(exc)) from None
    return callback


def check_precision(precision: Optional[str]) -> Optional[str]:
    if precision is not None and str(precision).lower() not in PRECISION_NAMES:
        raise E4EError(f"unknown precision {precision!r} (use auto, fp32, bf16 or fp16)", exit_code=USAGE)
    return precision


def check_device(device: Optional[str]) -> Optional[str]:
    if device is not None and not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", str(device)):
        raise E4EError(f"unknown device {device!r} (use auto, cpu, cuda, cuda:N or mps)", exit_code=USAGE)
    return device


def domain_option(help: str = DOMAIN_HELP):
    return typer.Option(None, "--domain", help=help, callback=_usage(lambda v: check_domain(v)))


def checkpoint_option():
    return typer.Option(None, "--checkpoint", help=CHECKPOINT_HELP)


def device_option():
    return typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps.", callback=_usage(check_device))


def precision_option():
    return typer.Option("auto", "--precision", help=PRECISION_HELP, callback=_usage(check_precision))


def batch_option():
    return typer.Option(None, "--batch-size", help=BATCH_HELP, callback=_usage(lambda v: check_batch_size(v)))


def offsets_precision_option():
    return typer.Option("fp16", "--offsets-precision", help="With --refine: fp16 (half the size) or fp32.")


def weights_dir_option():
    return typer.Option(None, "--weights-dir", help=WEIGHTS_HELP)


def refine_option(help: str):
    return typer.Option(None, "--refine", help=help)


def refine_steps_option():
    return typer.Option(None, "--refine-steps", help="With --refine: hypernetwork passes (default 5).")


def refiner_option():
    return typer.Option(None, "--refiner", help="With --refine: the HyperStyle checkpoint file "
                        "(default: the domain's in the weights folder).")


def w_encoder_option():
    return typer.Option(None, "--w-encoder", help="With --refine: the W-encoder file it starts from.")


def pti_steps_option():
    return typer.Option(None, "--pti-steps", help="With --refine pti: at most this many tuning steps (default 350).")


def pti_lr_option():
    return typer.Option(None, "--pti-lr", help="With --refine pti: Adam's learning rate (default 3e-4).")


def lpips_stop_option():
    return typer.Option(None, "--lpips-stop", help="With --refine pti: stop tuning once LPIPS <= this (default 0.06).")


def pivot_option():
    return typer.Option(None, "--pivot", help="With --refine pti: the code the generator is tuned around: e4e "
                        "(default: the encoder's code, fast, what STIT does) or w (PTI's own 450-step projection "
                        "into W; slow, most editable).")


def pivot_steps_option():
    return typer.Option(None, "--pivot-steps", help="With --pivot w: the projection's steps (default 450, PTI's).")


def pti_resolution_option():
    return typer.Option(None, "--pti-resolution", help="With --refine pti: the faster variant: tune only the "
                        "generator's blocks up to this size (e.g. 256 of a 1024 generator), compared with the photo "
                        "at that size. Each step costs less; fine detail is left to the untuned top blocks.")


def locality_option():
    return typer.Option(False, "--locality", help="With --refine pti: PTI's locality regularizer (keeps the tuned "
                        "generator unchanged away from the photo; each step costs about twice as much).")


def check_pti(refine: Optional[str], steps: Optional[int], lr: Optional[float], lpips_stop: Optional[float],
              pivot: Optional[str] = None, locality: bool = False, pivot_steps: Optional[int] = None,
              resolution: Optional[int] = None):
    """pti.PTISettings when `--refine pti` is asked for, else None; one usage-error line for a
    PTI option without it or a value out of range."""
    if refine != "pti":
        if (steps, lr, lpips_stop, pivot, pivot_steps, resolution) != (None,) * 6 or locality:
            raise E4EError("--pti-steps, --pti-lr, --lpips-stop, --pivot, --pivot-steps, --pti-resolution and "
                           "--locality need --refine pti",
                           exit_code=USAGE)
        return None
    from ..pti import DEFAULT_LPIPS_STOP, DEFAULT_LR, DEFAULT_STEPS, PROJECTION_STEPS, PTISettings

    if pivot_steps is not None and pivot != "w":
        raise E4EError("--pivot-steps is the W projection's: it needs --pivot w", exit_code=USAGE)
    return PTISettings(steps=DEFAULT_STEPS if steps is None else steps, lr=DEFAULT_LR if lr is None else lr,
                       lpips_stop=DEFAULT_LPIPS_STOP if lpips_stop is None else lpips_stop,
                       pivot="e4e" if pivot is None else pivot, locality=locality,
                       pivot_steps=PROJECTION_STEPS if pivot_steps is None else pivot_steps,
                       resolution=resolution).check()


def check_refine(refine: Optional[str], steps: Optional[int], refiner: Optional[Path],
                 w_encoder: Optional[Path]) -> bool:
    """Whether `--refine hyperstyle` is asked for; one E4EError line for an unknown refinement,
    its options without it, or steps out of range."""
    if refine is None and steps is None and refiner is None and w_encoder is None:
        return False
    if refine != "hyperstyle":
        raise E4EError("--refine-steps, --refiner and --w-encoder need --refine hyperstyle" if refine is None
                       else f"unknown --refine {refine!r}: choose hyperstyle or pti", exit_code=USAGE)
    if steps is not None and not 0 <= steps <= 50:
        raise E4EError(f"--refine-steps must be from 0 to 50, got {steps}", exit_code=USAGE)
    return True


def check_domain(domain: Optional[str]) -> Optional[str]:
    """A known domain, or None (not given); else a usage error (exit 2)."""
    if domain is not None and domain not in DOMAIN_NAMES:
        raise E4EError(f"unknown domain {domain!r}: choose from {', '.join(DOMAIN_NAMES)}", exit_code=USAGE)
    return domain


def check_mask(mask: str) -> str:
    if mask not in MASK_KINDS:
        raise E4EError(f"--paste-mask must be {' or '.join(MASK_KINDS)}, got {mask!r}", exit_code=USAGE)
    return mask


def check_paste_options(paste_back: bool, *, color_match: bool, paste_mask: Optional[str]) -> None:
    """--color-match and --paste-mask only mean something with --paste-back: alone they are a
    usage error, not silently ignored."""
    if paste_mask is not None:
        check_mask(paste_mask)
    given = [name for name, on in (("--color-match", color_match), ("--paste-mask", paste_mask is not None)) if on]
    if given and not paste_back:
        raise E4EError(f"{' and '.join(given)} only work with --paste-back", exit_code=USAGE)


def check_batch_size(batch_size: Optional[int]) -> Optional[int]:
    if batch_size is not None and batch_size < 1:
        raise E4EError(f"--batch-size must be >= 1, got {batch_size}", exit_code=USAGE)
    return batch_size


def check_preview_size(size: Optional[int]) -> Optional[int]:
    """A preview resolution: a power of two, at least 4 (the checkpoint's own size is checked
    once it is loaded)."""
    if size is not None and (size < 4 or size & (size - 1)):
        raise E4EError(f"--preview-size must be a power of two from 4 up to the checkpoint's size (e.g. 256), got {size}",
                       exit_code=USAGE)
    return size


def interruptible(resume: Optional[Callable[[dict], str]] = None):
    """A command whose Ctrl-C is one line and exit 130: typer turns a KeyboardInterrupt into a silent
    exit 130 before the app can say anything. `resume(kwargs)` adds what the user can do next."""
    def wrap(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except KeyboardInterrupt:
                more = resume(kwargs) if resume is not None else ""
                raise E4EError("interrupted (Ctrl-C)" + (f": {more}" if more else ""), exit_code=INTERRUPTED) from None
        return run
    return wrap


def summary_resume(out_key: str = "out"):
    """`interruptible`'s note for a batch: where summary.json lists what was left, and that a rerun resumes."""
    return lambda kwargs: (f"{kwargs.get(out_key)}/summary.json lists what was done and what was left; "
                           "the same command resumes")


def echo_error(message: str) -> None:
    typer.echo(f"e4e: error: {message}", err=True)


def item_line(result) -> str:
    """`<input>: <reason>` for a failed item, the input named once (a reason may start with it)."""
    error = str(result.error or "failed")
    return error if error.startswith(f"{result.input}: ") else f"{result.input}: {error}"


def print_results(results, out: Path, verb: str) -> None:
    """One line per failed item on stderr, then one summary line."""
    for r in results:
        if r.status == "failed":
            echo_error(item_line(r))
    ok = sum(r.status == "ok" for r in results)
    skipped = sum(r.status == "skipped" for r in results)
    failed = sum(r.status == "failed" for r in results)
    parts = [f"{ok} {verb}"]
    if skipped:
        parts.append(f"{skipped} already done (use --overwrite to redo)")
    if failed:
        parts.append(f"{failed} failed")
    typer.echo(f"{', '.join(parts)}; results in {out}/ (summary.json lists every input)")
