"""Every bad input gets a one-line answer and a non-zero exit; nothing complete is lost (issue 8).

All through the installed CLI. Uses the synthetic church checkpoint (256, fast) where a model is needed.
"""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import RunsCode, assert_one_line_error, interrupt_e4e, run_e4e

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def photo(parity_dir):
    return Image.open(parity_dir / "images" / "church_img.jpg").convert("RGB")


def png_header_bomb(path: Path, w=100_000, h=100_000):
    """A tiny PNG file whose header claims a huge image."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def bad_images(tmp_path: Path, photo: Image.Image) -> dict[str, tuple[Path, str]]:
    out = {}
    out["missing"] = (tmp_path / "missing.jpg", "no such file")
    t = tmp_path / "text.jpg"
    t.write_text("hello, I am not a JPEG")
    out["text"] = (t, "text.jpg")
    buf = io.BytesIO()
    photo.save(buf, format="JPEG")
    tr = tmp_path / "truncated.jpg"
    tr.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    out["truncated"] = (tr, "truncated.jpg")
    bomb = tmp_path / "bomb.png"
    png_header_bomb(bomb)
    out["bomb"] = (bomb, "bomb.png")
    one = tmp_path / "one.png"
    Image.new("RGB", (1, 1), (128, 128, 128)).save(one)
    out["1x1"] = (one, "one.png")
    return out


@pytest.mark.parametrize("kind", ["missing", "text", "truncated", "bomb", "1x1"])
def test_bad_images_invert(kind, tmp_path, photo, church):
    path, needle = bad_images(tmp_path, photo)[kind]
    proc = run_e4e("invert", path, "--domain", "church", "--checkpoint", church, "--out", tmp_path / "out")
    assert proc.returncode == 1
    assert_one_line_error(proc, needle)
    assert len([l for l in proc.stderr.splitlines() if l.startswith("e4e: error")]) == 1


@pytest.mark.parametrize("kind", ["text", "bomb", "1x1"])
def test_bad_images_align(kind, tmp_path, photo):
    path, needle = bad_images(tmp_path, photo)[kind]
    proc = run_e4e("align", path, "--out", tmp_path / "aligned")
    assert_one_line_error(proc, path.name)


def test_odd_but_valid_images_work(tmp_path, photo, church):
    src = tmp_path / "in"
    src.mkdir()
    photo.convert("L").save(src / "gray.png")
    photo.convert("RGBA").save(src / "rgba.png")
    photo.convert("P", palette=Image.ADAPTIVE).save(src / "palette.png")
    arr16 = (np.asarray(photo.convert("L"), dtype=np.uint16) * 257)
    Image.fromarray(arr16).save(src / "deep16.png")
    photo.convert("CMYK").save(src / "cmyk.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    photo.transpose(Image.Transpose.ROTATE_90).save(src / "exif.jpg", exif=exif.tobytes())
    out = tmp_path / "out"
    proc = run_e4e("invert", src, "--domain", "church", "--checkpoint", church, "--out", out)
    assert proc.returncode == 0, proc.stderr
    for stem in ("gray", "rgba", "palette", "deep16", "cmyk", "exif"):
        img = Image.open(out / stem / "inversion.png")
        assert img.size == (256, 256) and img.mode == "RGB"
    # the EXIF-rotated photo is inverted upright: its code is close to the upright photo's
    Image.fromarray(np.asarray(photo)).save(src / "upright.png")
    run_e4e("invert", src / "upright.png", "--domain", "church", "--checkpoint", church, "--out", out)
    a, b = np.load(out / "exif" / "latent.npy"), np.load(out / "upright" / "latent.npy")
    assert np.abs(a - b).mean() < 0.05 * np.abs(b).mean()


def test_no_face(tmp_path, case_checkpoint):
    img = tmp_path / "sky.png"
    y = np.linspace(0, 255, 300)[:, None, None] * np.ones((300, 400, 3))
    Image.fromarray(y.astype(np.uint8)).save(img)
    proc = run_e4e("align", img, "--out", tmp_path / "a")
    assert_one_line_error(proc, "no face", "sky.png")


# ---- checkpoints ------------------------------------------------------------------------


def test_bad_checkpoints(tmp_path, parity_dir, church):
    img = parity_dir / "images" / "church_img.jpg"
    html = tmp_path / "html.pt"
    html.write_text("<!DOCTYPE html><html><body>Google Drive - Virus scan warning</body></html>")
    trunc = tmp_path / "trunc.pt"
    with open(church, "rb") as fh:
        trunc.write_bytes(fh.read(5_000_000))
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "x": RunsCode(marker)}, evil)
    missing = tmp_path / "missing_keys.pt"
    torch.save({"state_dict": {"encoder.input_layer.0.weight": torch.zeros(64, 3, 3, 3)}, "opts": {"dataset_type": "church_encode"}}, missing)
    cases = [(html, "HTML page"), (trunc, "truncated or corrupt"), (evil, "would run code"), (missing, "missing key(s)")]
    for path, needle in cases:
        proc = run_e4e("invert", img, "--domain", "church", "--checkpoint", path, "--out", tmp_path / "o")
        assert_one_line_error(proc, needle)
    assert not marker.exists(), "the pickle's code ran"


def test_wrong_architecture(tmp_path, parity_dir, church):
    ck = torch.load(church, map_location="cpu", weights_only=True, mmap=True)
    sd = dict(ck["state_dict"])
    sd["decoder.conv1.conv.weight"] = torch.zeros(1, 256, 512, 3, 3)
    ck["state_dict"] = sd
    bad = tmp_path / "wrong.pt"
    torch.save(ck, bad)
    proc = run_e4e("invert", parity_dir / "images" / "church_img.jpg", "--domain", "church", "--checkpoint", bad, "--out", tmp_path / "o")
    assert_one_line_error(proc, "wrong shape", "decoder.conv1.conv.weight")


def test_no_weights_exit_3(tmp_path, parity_dir):
    proc = run_e4e("invert", parity_dir / "images" / "input_img.jpg", env={"E4E_WEIGHTS_DIR": str(tmp_path)})
    assert proc.returncode == 3
    assert_one_line_error(proc, "e4e download-weights ffhq")
    proc = run_e4e("edit", "--direction", "smile", cwd=tmp_path, env={"E4E_WEIGHTS_DIR": str(tmp_path)})
    assert_one_line_error(proc, "e4e invert")


# ---- options and outputs ------------------------------------------------------------------


def test_output_path_is_a_file_or_unwritable(tmp_path, parity_dir, church):
    img = parity_dir / "images" / "church_img.jpg"
    f = tmp_path / "afile"
    f.write_text("keep me")
    proc = run_e4e("invert", img, "--domain", "church", "--checkpoint", church, "--out", f)
    assert_one_line_error(proc, "is a file")
    assert f.read_text() == "keep me"
    proc = run_e4e("invert", img, "--domain", "church", "--checkpoint", church, "--out", "/proc/e4e-out")
    assert_one_line_error(proc, "/proc/e4e-out")
    proc = run_e4e("invert", img, "--domain", "church", "--checkpoint", church, "--out", tmp_path / "o", "--delta-scale", "nan")
    assert_one_line_error(proc, "delta-scale")
    proc = run_e4e("invert", img, "--domain", "nowhere")
    assert_one_line_error(proc, "unknown domain")
    proc = run_e4e("invert", img, "--domain", "church", "--checkpoint", church, "--device", "cuda")
    if not torch.cuda.is_available():
        assert_one_line_error(proc, "cuda")


def test_interrupted_batch_leaves_only_complete_files_and_resumes(tmp_path, photo, church):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(8):
        photo.rotate(i * 5).save(src / f"p{i}.png")
    out = tmp_path / "out"
    proc = interrupt_e4e("invert", src, "--domain", "church", "--checkpoint", church, "--out", out, "--batch-size", "1",
                         when=out / "p1" / "meta.json")
    err = proc.stderr
    assert proc.returncode != 0
    assert "Traceback" not in err
    assert not list(out.rglob("*.part")), "temporary files left behind"
    finished = [d for d in out.iterdir() if d.is_dir() and (d / "meta.json").exists()]
    assert 2 <= len(finished) < 8
    for d in out.iterdir():  # every file that exists is complete and readable
        for f in d.glob("*.png") if d.is_dir() else []:
            Image.open(f).load()
        for f in d.glob("*.npy") if d.is_dir() else []:
            assert np.load(f).shape == (14, 512)
    again = run_e4e("invert", src, "--domain", "church", "--checkpoint", church, "--out", out)
    assert again.returncode == 0, again.stderr
    assert f"{len(finished)} already done" in again.stdout
    assert all((out / f"p{i}" / "meta.json").exists() for i in range(8))
    mtime = (out / "p0" / "latent.npy").stat().st_mtime_ns
    redo = run_e4e("invert", src / "p0.png", "--domain", "church", "--checkpoint", church, "--out", out, "--overwrite")
    assert redo.returncode == 0 and (out / "p0" / "latent.npy").stat().st_mtime_ns != mtime
