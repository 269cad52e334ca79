"""Machine-specific choices (e4e_cli.nn.runtime): process tuning at start-up, native bfloat16
detection, --precision auto, the default batch size."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from e4e_cli import model as model_mod
from e4e_cli.nn import fast_generator, runtime
from e4e_cli.nn.engine import Plans
from e4e_cli.devices import resolve_precision

from conftest import assert_one_line_error, run_e4e, synthetic_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def _python(code: str, **env) -> str:
    """Run `code` in a fresh interpreter (THP_MEM_ALLOC_ENABLE unset unless given); its stdout."""
    # nor the thread counts the test workers run under (conftest): each test says its own
    full = {k: v for k, v in os.environ.items()
            if k not in ("THP_MEM_ALLOC_ENABLE", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "E4E_NUM_THREADS")}
    full.update(env)
    out = subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_importing_runtime_changes_nothing_and_tune_process_sets_the_allocator_up():
    """Importing e4e_cli.nn.runtime leaves os.environ alone and does not import torch;
    tune_process() sets THP_MEM_ALLOC_ENABLE=1 (idempotent) where torch is not imported yet, and
    keeps a user's own value."""
    code = ("import os, sys; before = dict(os.environ); import e4e_cli.nn.runtime as r; "
            "print(dict(os.environ) == before, 'torch' in sys.modules); r.tune_process(); r.tune_process(); "
            "print(os.environ.get('THP_MEM_ALLOC_ENABLE'), 'torch' in sys.modules)")
    assert _python(code).split() == ["True", "False", "1", "False"]
    assert _python(code, THP_MEM_ALLOC_ENABLE="0").split() == ["True", "False", "0", "False"]
    late = "import torch, os; import e4e_cli.nn.runtime as r; r.tune_process(); print(os.environ.get('THP_MEM_ALLOC_ENABLE'))"
    assert _python(late) == "None"  # too late for this process: nothing set


def test_library_and_cli_start_tune_the_process():
    """A library user's first import of e4e_cli.model, and the CLI's main, set the allocator up
    before torch is imported (as importing the model module did before tune_process existed)."""
    lib = "import os; import e4e_cli.model; print(os.environ.get('THP_MEM_ALLOC_ENABLE'))"
    assert _python(lib) == "1"
    cli = ("import os, sys; from e4e_cli.cli.app import main; rc = main(['--help']); "
           "print(os.environ.get('THP_MEM_ALLOC_ENABLE'), 'torch' in sys.modules)")
    assert _python(cli).splitlines()[-1].split() == ["1", "False"]


def test_threads_set_by_the_user_after_import_are_kept():
    """configure_threads (run when a model is loaded on the CPU) leaves a thread count the user set
    after importing e4e_cli.model alone, and otherwise uses one thread per physical core."""
    kept = "from e4e_cli import model; import torch; torch.set_num_threads(1); print(model.configure_threads())"
    assert _python(kept) == "1"
    cores = "from e4e_cli import model; print(model.configure_threads(), model.physical_cores())"
    got, want = _python(cores).split()
    assert got == want


@pytest.fixture
def flags(monkeypatch):
    """Pretend the CPU reports the given flags."""
    def set_flags(*names):
        monkeypatch.delenv("E4E_NATIVE_BF16", raising=False)
        monkeypatch.setattr(runtime, "_FLAGS", frozenset(names))
    return set_flags


@pytest.mark.parametrize("names, native", [
    (("avx2", "fma"), False),                       # AVX2-only EPYC: oneDNN would emulate bf16
    (("avx2", "avx512f", "avx512bw"), False),       # AVX-512 without BF16 (Skylake-X)
    (("avx2", "avx512f", "avx512_bf16"), True),     # Zen 4, Cooper Lake
    (("avx2", "amx_tile", "amx_bf16"), True),       # Sapphire Rapids
])
def test_native_bf16_follows_the_cpu_flags(flags, names, native):
    flags(*names)
    assert runtime.native_bf16() is native
    want = torch.bfloat16 if native else torch.float32
    assert resolve_precision("auto", torch.device("cpu")) == want
    assert resolve_precision(None, torch.device("cpu")) == torch.float32  # the library's default stays exact
    assert resolve_precision("fp32", torch.device("cpu")) == torch.float32
    assert resolve_precision("bf16", torch.device("cpu")) == torch.bfloat16


@pytest.mark.parametrize("names, engine", [
    (("avx2", "fma"), False),
    (("avx2", "avx512f", "avx512_bf16"), False),    # Zen 4: bf16 dot products, no matrix engine
    (("avx2", "amx_tile", "amx_bf16"), True),       # Sapphire Rapids
])
def test_up_sampling_is_fused_in_reduced_precision_only_with_a_matrix_engine(flags, monkeypatch, names, engine):
    from conftest import tiny_generator

    flags(*names)
    monkeypatch.delenv("E4E_MATRIX_ENGINE", raising=False)
    assert runtime.matrix_engine() is engine
    g = tiny_generator(size=64)
    codes = torch.randn(1, g.n_styles, 16)
    plans = Plans()
    with torch.no_grad():
        fast_generator.synthesize(g, codes, dtype=torch.bfloat16, plans=plans)
        fast_generator.synthesize(g, codes, plans=plans)  # float32: never fused
    up_modes = sorted(key[2] for key in plans.of(g))
    assert up_modes == (["polyphase", "transpose"] if engine else ["transpose"])
    monkeypatch.setenv("E4E_MATRIX_ENGINE", "1" if not engine else "0")  # the override
    assert runtime.matrix_engine() is (not engine)


def test_native_bf16_override(monkeypatch):
    monkeypatch.setattr(runtime, "_FLAGS", frozenset({"avx512_bf16"}))
    monkeypatch.setenv("E4E_NATIVE_BF16", "0")
    assert runtime.native_bf16() is False
    monkeypatch.setenv("E4E_NATIVE_BF16", "1")
    monkeypatch.setattr(runtime, "_FLAGS", frozenset({"avx2"}))
    assert runtime.native_bf16() is True


def test_cpu_flags_read_from_proc():
    if not os.path.exists("/proc/cpuinfo"):
        pytest.skip("no /proc/cpuinfo")
    text = open("/proc/cpuinfo").read()
    line = next(l for l in text.splitlines() if l.split(":")[0].strip() in ("flags", "Features"))
    assert set(line.split(":", 1)[1].split()) == set(runtime.cpu_flags())


def test_isa_summary_names_the_machine():
    s = runtime.isa_summary()
    assert set(s) >= {"cpu", "aten_capability", "flags", "native_bf16", "cores", "threads"}
    assert s["native_bf16"] == runtime.native_bf16()
    assert all(f in runtime.cpu_flags() for f in s["flags"])


class _Fake:
    """Just what default_batch_size reads."""
    def __init__(self, size, precision, device="cpu"):
        self.info = type("I", (), {"size": size})()
        self.precision, self.device = precision, torch.device(device)

    size = property(lambda self: self.info.size)
    default_batch_size = model_mod.E4E.default_batch_size


@pytest.mark.parametrize("size, precision, want", [
    (1024, torch.float32, 1), (1024, torch.bfloat16, 4), (512, torch.float32, 4), (256, torch.float32, 4)])
def test_default_batch_size_keeps_1024_float32_to_one_image(monkeypatch, size, precision, want):
    monkeypatch.setattr(model_mod, "_available_memory", lambda: 16 << 30)
    assert _Fake(size, precision).default_batch_size() == want
    monkeypatch.setattr(model_mod, "_available_memory", lambda: 2 << 30)
    assert _Fake(size, precision).default_batch_size() == 1  # little memory left: one at a time


def test_heap_reuse_lives_in_runtime():
    assert model_mod._HeapReuse is runtime.HeapReuse
    assert model_mod.release_file_pages is runtime.release_file_pages


def test_emulated_bf16_is_one_note_line(tmp_path):
    """An explicit bf16 on a CPU without it says so once, as one `e4e: note:` line, and works."""
    ckpt = synthetic_checkpoint(256, 3, "church")
    from PIL import Image
    import numpy as np

    Image.fromarray((np.random.RandomState(0).rand(64, 64, 3) * 255).astype("uint8")).save(tmp_path / "a.png")
    proc = run_e4e("invert", tmp_path / "a.png", "--no-align", "--domain", "church", "--checkpoint", ckpt,
                   "--precision", "bf16", "--out", tmp_path / "o", env={"E4E_NATIVE_BF16": "0"})
    assert proc.returncode == 0, proc.stderr
    notes = [l for l in proc.stderr.splitlines() if "emulated" in l]
    assert len(notes) == 1 and notes[0].startswith("e4e: note: "), proc.stderr
    assert "Warning" not in proc.stderr


def test_bad_precision_is_one_line(tmp_path):
    ckpt = synthetic_checkpoint(256, 3, "church")
    proc = run_e4e("invert", tmp_path / "none.png", "--no-align", "--domain", "church", "--checkpoint", ckpt,
                   "--precision", "fp8", "--out", tmp_path / "o")
    assert_one_line_error(proc, "precision")
