"""Issue 30's file-reading guarantees: no untrusted .pt file is read by a torch whose safe mode is
not safe, and the restricted .pkl reader lets a file change nothing but the records it made."""
from __future__ import annotations

import ast
import configparser
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, RunsCode
from e4e_cli.checkpoint import SAFE_TORCH, read_checkpoint, torch_release
from e4e_cli.errors import E4EError

PKG = ROOT / "e4e_cli"


# ------------------------------------------------------------------------------------------
# torch older than 2.6: weights_only=True can be made to run code (CVE-2025-32434)


def test_setup_cfg_asks_for_a_safe_torch():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    reqs = [r.split("#")[0].strip() for r in cfg["options"]["install_requires"].splitlines()]
    (torch_req,) = [r for r in reqs if re.match(r"torch\b", r)]
    m = re.fullmatch(r"torch\s*>=\s*(\d+)\.(\d+)(\.\d+)?", torch_req)
    assert m and (int(m.group(1)), int(m.group(2))) >= SAFE_TORCH == (2, 6), torch_req


def test_torch_release_parses_local_and_pre_release_versions():
    assert torch_release("2.13.0+cpu") == (2, 13)
    assert torch_release("2.5.1") == (2, 5)
    assert torch_release("2.6.0a0+git1234") == (2, 6)
    assert torch_release("garbage") == (0, 0)


def test_torch_load_is_called_in_one_place():
    """Every .pt read goes through checkpoint.load_untrusted (which checks the torch version)."""
    calls = []
    for path in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
                calls.append(f"{path.relative_to(PKG)}:{node.lineno}")
    assert len(calls) == 1 and calls[0].startswith("checkpoint.py:"), calls


@pytest.fixture
def old_torch(monkeypatch):
    monkeypatch.setattr(torch, "__version__", "2.5.1+cpu")


def _pt(tmp_path, obj, name="x.pt") -> Path:
    p = tmp_path / name
    torch.save(obj, p)
    return p


def test_old_torch_refuses_every_untrusted_pt_reader(tmp_path, old_torch):
    from e4e_cli.editing import load_single_tensor
    from e4e_cli.train import lossnets
    from e4e_cli.train.generators import load_generator

    marker = tmp_path / "ran"
    evil = _pt(tmp_path, {"state_dict": {"w": RunsCode(marker)}}, "evil.pt")
    plain = _pt(tmp_path, torch.zeros(3), "plain.pt")
    readers = [lambda: read_checkpoint(evil), lambda: load_generator(evil), lambda: load_single_tensor(plain),
               lambda: lossnets._load_state(plain, what="LPIPS weights")]
    for read in readers:
        with pytest.raises(E4EError, match=r"CVE-2025-32434.*torch>=2\.6") as err:
            read()
        assert "\n" not in str(err.value) and "2.5.1" in str(err.value)
    assert not marker.exists()


def test_current_torch_still_reads_them(tmp_path):
    from e4e_cli.editing import load_single_tensor

    assert torch_release(torch.__version__) >= SAFE_TORCH
    assert load_single_tensor(_pt(tmp_path, torch.ones(3))).sum() == 3


def test_the_cli_refuses_in_one_line_on_old_torch(tmp_path):
    """As installed with --no-deps into an environment with torch 2.5: `e4e edit` of a latent.pt with a
    --checkpoint says why in one line, exit 1 (the checkpoint is the first .pt it reads)."""
    latent = _pt(tmp_path, torch.zeros(1, 14, 512), "latent.pt")
    code = ("import sys, torch; torch.__version__ = '2.5.1'\n"
            "from e4e_cli.cli.app import main\n"
            f"sys.exit(main(['edit', {str(latent)!r}, '-d', 'age', '-s', '1', '--checkpoint', {str(latent)!r}, "
            f"'--out', {str(tmp_path / 'out')!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("e4e: error:")]
    assert len(errors) == 1 and "CVE-2025-32434" in errors[0], proc.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").glob("*.png"))


# ------------------------------------------------------------------------------------------
# the restricted .pkl reader: no BUILD / SETITEMS on what it did not make

HOSTILE = {
    # BUILD with slot state on an allowed function: sets its __defaults__ for the whole process
    "defaults_of_rebuild_tensor": b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\nN}X\x0c\x00\x00\x00__defaults__K\x01\x85s\x86b.",
    # BUILD with slot state on the reader's own record class (EasyDict's stand-in)
    "attribute_on_record_class": b"\x80\x02cdnnlib.util\nEasyDict\nN}X\x05\x00\x00\x00evil_K\x01s\x86b.",
    # BUILD with a dict state on an allowed function: its __dict__
    "dict_of_a_function": b"\x80\x02ctorch._utils\n_rebuild_parameter\n}X\x05\x00\x00\x00evil_K\x01sb.",
    # SETITEMS on a class
    "setitems_on_a_class": b"\x80\x02cdnnlib.util\nEasyDict\n(X\x01\x00\x00\x00aK\x01u.",
    # SETITEM on a class
    "setitem_on_a_class": b"\x80\x02ccollections\nOrderedDict\nX\x01\x00\x00\x00aK\x01s.",
    # APPENDS on a storage class
    "appends_on_a_class": b"\x80\x02ctorch\nFloatStorage\n(K\x01e.",
}


def _allowed_state():
    from e4e_cli.train import generators as gen

    fns = [v for v in gen._ALLOWED.values() if callable(v)]
    return ({id(f): (getattr(f, "__defaults__", None), dict(getattr(f, "__dict__", {}) or {})) for f in fns},
            np.dtype("f4").byteorder, np.dtype("f4").str)


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_pickle_cannot_change_what_the_reader_allows(tmp_path, name):
    from e4e_cli.train import generators as gen

    before = _allowed_state()
    p = tmp_path / "g.pkl"
    p.write_bytes(HOSTILE[name])
    with pytest.raises(E4EError) as err:
        gen.load_generator(p)
    assert "changes an object it did not make" in str(err.value) and "\n" not in str(err.value), str(err.value)
    assert _allowed_state() == before
    assert not hasattr(gen._PlainDict, "evil_")


def test_a_numpy_dtype_in_a_pickle_is_a_record_not_the_shared_dtype(tmp_path):
    """ADA pickles BUILD on the dtypes of their scalars; numpy's own dtype object is shared by the
    process, so the reader gives the pickle a record of it instead."""
    from e4e_cli.train import generators as gen

    # numpy.dtype('f4') then BUILD (3, '>', ...): a big-endian state on numpy's shared float32 dtype
    data = (b"\x80\x02cnumpy\ndtype\nX\x02\x00\x00\x00f4K\x00K\x01\x87R(K\x03X\x01\x00\x00\x00>NNNJ\xff\xff\xff\xff"
            b"J\xff\xff\xff\xffK\x00tb.")
    before = np.dtype("f4").str
    p = tmp_path / "g.pkl"
    p.write_bytes(data)
    with pytest.raises(E4EError):
        gen.load_generator(p)  # a dtype alone is no generator
    assert np.dtype("f4").str == before
    rec = gen._RestrictedUnpickler(open(p, "rb")).load()
    assert isinstance(rec, gen._DtypeRecord) and rec.resolve() == np.dtype(">f4")


# ------------------------------------------------------------------------------------------
# .npz members are checked on their headers before any is inflated


def _npz_with(path: Path, arrays: dict, *, declared: dict | None = None) -> Path:
    """An npz (deflated) of `arrays`; a member named in `declared` gets a header declaring that
    shape (float32) over a few kilobytes of deflated zeros: a bomb's header without the bomb."""
    import io
    import zipfile

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, a in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(a), allow_pickle=False)
            zf.writestr(f"{name}.npy", buf.getvalue())
        for name, shape in (declared or {}).items():
            buf = io.BytesIO()
            np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": shape})
            zf.writestr(f"{name}.npy", buf.getvalue() + bytes(1 << 16))
    return path


@pytest.fixture
def nothing_inflated(monkeypatch):
    """Fails the test if any npz member's data is read (headers are fine)."""
    def refuse(*a, **k):
        raise AssertionError("an array was read before its declared size was checked")

    monkeypatch.setattr(np.lib.format, "read_array", refuse)


def _offsets_meta(**extra) -> np.ndarray:
    import json

    from e4e_cli.refine import OFFSETS_FORMAT

    return np.array(json.dumps({"format": OFFSETS_FORMAT, "layers": [3], "precision": "fp16", **extra}))


def test_offsets_bomb_is_refused_unread(tmp_path, nothing_inflated):
    from e4e_cli.refine import load_offsets

    p = _npz_with(tmp_path / "o.npz", {"meta": _offsets_meta()}, declared={"layer_03": (100_000, 100_000)})
    with pytest.raises(E4EError, match=r"declares \[100000, 100000\]") as err:
        load_offsets(p)
    assert "\n" not in str(err.value)


def test_offsets_of_another_shape_than_the_generator_are_refused_unread(tmp_path, nothing_inflated):
    from conftest import tiny_generator
    from e4e_cli.refine import load_offsets

    g = tiny_generator()
    o, c, k, _ = g.layers()[3][0].weight.shape[1:]
    p = _npz_with(tmp_path / "o.npz", {"meta": _offsets_meta()}, declared={"layer_03": (o, c + 1, k, k)})
    with pytest.raises(E4EError, match="does not fit this generator .the offsets of layer 3 are"):
        load_offsets(p, generator=g)
    p = _npz_with(tmp_path / "l.npz", {"meta": _offsets_meta(latent=[g.n_styles, 512])},
                  declared={"layer_03": (o, c, k, k), "latent": (1 << 20, 512)})
    with pytest.raises(E4EError, match="'latent' array declares"):
        load_offsets(p, generator=g)


def test_offsets_that_fit_still_load(tmp_path):
    from conftest import tiny_generator
    from e4e_cli.refine import load_offsets, save_offsets

    g = tiny_generator()
    o, c, k, _ = g.layers()[3][0].weight.shape[1:]
    p = save_offsets(tmp_path / "o.npz", {3: torch.ones(o, c, k, k)}, meta={"method": "hyperstyle"})
    offsets, _ = load_offsets(p, generator=g)
    assert offsets[3].shape == (o, c, k, k)


def test_a_direction_npz_bomb_is_refused_unread(tmp_path, nothing_inflated):
    from e4e_cli.editing import load_single_tensor

    p = _npz_with(tmp_path / "d.npz", {}, declared={"direction": (1 << 20, 1 << 10)})
    with pytest.raises(E4EError, match="declares"):
        load_single_tensor(p)


def test_a_shard_bomb_is_refused_unread(tmp_path, nothing_inflated):
    from e4e_cli.jobs.dataset import check_shard, shard_is_done

    fields = {"ok": np.ones(2, bool), "errors": np.array(["", ""]), "paths": np.array(["a.png", "b.png"]),
              "fingerprint": np.array("{}"), "format": np.array("x")}
    p = _npz_with(tmp_path / "s.npz", fields, declared={"codes": (1 << 20, 18, 512)})
    with pytest.raises(E4EError, match="'codes' array declares"):
        check_shard(p, count=2, n_styles=18)
    assert shard_is_done(p, ["a.png", "b.png"], "{}") is False
