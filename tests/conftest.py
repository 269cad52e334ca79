"""Shared test helpers: where the parity fixtures live and how to drive the installed CLI."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PARITY = Path(os.environ.get("E4E_PARITY_DIR", ROOT.parent / "shared" / "parity"))


def parity_available() -> bool:
    return (PARITY / "SPEC.md").is_file() and (PARITY / "make_checkpoint.py").is_file()


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    if not parity_available():
        pytest.skip(f"parity fixtures not available ({PARITY} is absent)")
    return PARITY


def e4e_executable() -> str:
    """The installed console script (tests drive the real CLI, as a user would)."""
    cand = Path(sys.executable).parent / "e4e"
    if cand.exists():
        return str(cand)
    found = shutil.which("e4e")
    if not found:
        pytest.skip("the e4e console script is not installed (run `make install`)")
    return found


def run_e4e(*args, cwd=None, env=None, timeout=600, input=None) -> subprocess.CompletedProcess:
    """Run `e4e ARGS...` and return the completed process (text mode, never raises)."""
    full_env = dict(os.environ)
    full_env.pop("E4E_DEBUG", None)
    full_env.setdefault("E4E_NO_PROGRESS", "1")
    if env:
        full_env.update(env)
    return subprocess.run(
        [e4e_executable(), *map(str, args)],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """A failed command printed a short reason (no traceback) that mentions `needles`."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    err = proc.stderr
    assert "Traceback" not in err and "Traceback" not in proc.stdout, err
    for needle in needles:
        assert needle.lower() in (err + proc.stdout).lower(), (needle, err, proc.stdout)


CKPT_CACHE = Path(os.environ.get("E4E_TEST_CACHE", ROOT / ".cache" / "test-checkpoints"))


def synthetic_checkpoint(size: int, seed: int, domain: str) -> Path:
    """Build (once, cached under .cache/) a synthetic checkpoint in the released format."""
    if not parity_available():
        pytest.skip(f"parity fixtures not available ({PARITY} is absent)")
    CKPT_CACHE.mkdir(parents=True, exist_ok=True)
    out = CKPT_CACHE / f"e4e_{domain}_{size}_s{seed}.pt"
    if not out.exists():
        tmp = out.with_suffix(".part")
        subprocess.run(
            [sys.executable, str(PARITY / "make_checkpoint.py"), "--size", str(size), "--seed", str(seed),
             "--domain", domain, str(tmp)],
            check=True,
        )
        os.replace(tmp, out)
    return out


CASES = {"ffhq_1024_s1": (1024, 1, "ffhq"), "cars_512_s2": (512, 2, "cars"), "church_256_s3": (256, 3, "church")}


@pytest.fixture(scope="session")
def case_checkpoint():
    """case name -> path of its synthetic checkpoint."""
    return lambda name: synthetic_checkpoint(*CASES[name])


def tiny_generator(size=32, dtype=None, seed=1):
    """A small StyleGAN2 generator (16-d styles) with the checkpoint's conventions for the
    modulation bias (1) and noise strength (0.1), for tests of the ops and fast paths."""
    import torch

    from e4e_cli.networks import Generator

    torch.manual_seed(seed)
    g = Generator(size, style_dim=16, n_mlp=2, channels={4: 16, 8: 12, 16: 8, 32: 8, 64: 4})
    with torch.no_grad():
        for name, p in g.named_parameters():
            if name.endswith("modulation.bias"):
                p.fill_(1.0)
            elif name.endswith("noise.weight"):
                p.fill_(0.1)
    return g.to(dtype or torch.float32).eval()
