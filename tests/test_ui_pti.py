"""`e4e ui` on PTI results (issue 32): a picked `e4e invert --refine pti` folder is decoded by
its tuned generator in every render of its session (strength 0 gives back inversion.png; an edit
is not the base generator's decode of the same code), one from another base checkpoint is refused
in one line, the refine switch does not apply, the latent download is named as the pivot it is,
and at most two tuned generators are kept alive.

Driven through the `Editor` object (and once through its HTTP API), on the synthetic church
256 checkpoint (one tuning step). The page decodes the pivot exactly as `e4e invert` did (same
float32 generator: base + the stored difference), and here it comes out bit for bit; the tests
allow 1 level per pixel for CPUs whose thread counts order the sums differently.
"""
from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_e4e, serve_page

pytest.importorskip("fastapi")
pytestmark = pytest.mark.slow

FP32 = ("--device", "cpu", "--precision", "fp32")
EDIT = {"sefa-0": 4.0}


@pytest.fixture(scope="module")
def latents(church, parity_dir, lpips_dir, tmp_path_factory) -> Path:
    """A latent folder with `e4e invert church_img.jpg --refine pti --pti-steps 1` in tuned/church_img
    (a larger learning rate than the default, so that the tuned generator is plainly another one)."""
    out = tmp_path_factory.mktemp("ui-pti-latents")
    proc = run_e4e("invert", Path(parity_dir) / "images" / "church_img.jpg", "--refine", "pti", "--pti-steps", "1",
                   "--pti-lr", "3e-3", "--checkpoint", church, "--weights-dir", lpips_dir, *FP32,
                   "--out", out / "tuned")
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module")
def editor(church, latents):
    from e4e_cli.model import E4E
    from e4e_cli.ui.editor import Editor

    model = E4E.from_checkpoint(church, device="cpu", precision="fp32")
    return Editor(model, latents_dir=latents, synthetic=True)


def _pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def _copy_with_record(latents: Path, name: str, **changes) -> str:
    """tuned/church_img copied to `name`, its difference file's record changed by `changes` (the
    arrays as they are): the picker's path of its latent."""
    src, dst = latents / "tuned" / "church_img", latents / name
    shutil.copytree(src, dst)
    with np.load(src / "tuned_generator.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["meta"] = np.array(json.dumps(dict(json.loads(str(arrays["meta"])), **changes), sort_keys=True))
    np.savez(dst / "tuned_generator.npz", **arrays)
    return f"{name}/latent.npy"


def test_a_pti_result_opens_and_its_strength_zero_is_its_inversion(editor, latents):
    d = latents / "tuned" / "church_img"
    r = editor.pick_latent("tuned/church_img/latent.npy")
    assert r["tuned"] is True and r["refined"] is False
    want = _pixels(Image.open(d / "inversion.png"))
    shown = _pixels(Image.open(io.BytesIO(base64.b64decode(r["inversion"].split(",", 1)[1]))))
    image, _ = editor.render(r["session"], {k: 0.0 for k in EDIT}, 1.0, False)
    assert np.abs(shown - want).max() <= 1  # the inversion the page shows when the latent is picked
    # the page decodes the pivot as `e4e invert` did (same float32 generator: base + the stored difference)
    assert np.abs(_pixels(image) - want).max() <= 1
    assert np.abs(_pixels(image) - want).mean() < 0.01
    # the base generator's decode of the same pivot is plainly another picture
    model = editor.model
    plain = _pixels(model.to_pil(model.decode(editor.session(r["session"]).codes))[0])
    assert np.abs(plain - want).mean() > 2.0


def test_an_edit_is_decoded_by_the_tuned_generator(editor, latents):
    from e4e_cli.pti import load_tuned

    sid = editor.pick_latent("tuned/church_img/latent.npy")["session"]
    image, codes = editor.render(sid, EDIT, 1.0, False)
    model = editor.model
    plain = _pixels(model.to_pil(model.decode(codes))[0])
    assert np.abs(_pixels(image) - plain).mean() > 2.0  # not the base generator
    tuned, _ = load_tuned(latents / "tuned" / "church_img" / "tuned_generator.npz", model)
    assert np.array_equal(_pixels(image), _pixels(model.to_pil(tuned.decode(codes))[0]))
    # the latent download: the edited pivot, named as one
    data, name = editor.latent_file(sid, EDIT, 1.0)
    assert name == "church_img_edit_pti_pivot.npy"
    assert np.array_equal(np.load(io.BytesIO(data)), codes[0].numpy())


def test_the_refine_switch_does_not_apply_to_a_pti_result(editor):
    from e4e_cli.errors import E4EError

    sid = editor.pick_latent("tuned/church_img/latent.npy")["session"]
    for ask in (lambda: editor.refine(sid), lambda: editor.render(sid, EDIT, 1.0, False, refined=True),
                lambda: editor.latent_file(sid, EDIT, 1.0, refined=True)):
        with pytest.raises(E4EError, match="PTI result") as e:
            ask()
        assert "\n" not in str(e.value)


def test_a_pti_result_from_another_base_checkpoint_is_refused_in_one_line(editor, latents):
    from e4e_cli.errors import E4EError

    rel = _copy_with_record(latents, "other_base", base_sha256="0" * 64)
    n = len(editor.sessions)
    with pytest.raises(E4EError, match="another base generator") as e:
        editor.pick_latent(rel)
    assert "\n" not in str(e.value) and len(editor.sessions) == n
    (latents / "other_base" / "tuned_generator.npz").unlink()  # a PTI folder without its difference
    with pytest.raises(E4EError, match="cannot read the tuned generator") as e:
        editor.pick_latent(rel)
    assert "\n" not in str(e.value) and len(editor.sessions) == n


def test_at_most_two_tuned_generators_stay_alive(editor, latents):
    from e4e_cli.errors import E4EError

    rels = [_copy_with_record(latents, f"copy{i}", note=i) for i in range(3)]  # three contents
    sids = [editor.pick_latent(rel)["session"] for rel in rels]
    assert len(editor.tuned._lru) == 2
    first, _ = editor.render(sids[0], EDIT, 1.0, False)  # dropped, rebuilt from its file
    again, _ = editor.render(sids[1], EDIT, 1.0, False)
    assert len(editor.tuned._lru) == 2 and np.array_equal(_pixels(first), _pixels(again))
    # a session whose file now holds another content is told to pick it again (not decoded by it)
    _copy_with_record(latents, "replacement", note="changed")
    shutil.copy(latents / "replacement" / "tuned_generator.npz", latents / "copy2" / "tuned_generator.npz")
    editor.render(sids[0], EDIT, 1.0, False)
    editor.render(sids[1], EDIT, 1.0, False)  # copy2's decoder is the oldest now: dropped
    with pytest.raises(E4EError, match="changed on disk"):
        editor.render(sids[2], EDIT, 1.0, False)


def test_the_http_api_opens_a_pti_result_and_refuses_the_refine_switch(editor, latents):
    """The same through the page's API: /api/latent says `tuned`, a full preview at strength 0 is
    inversion.png, /api/refine and a refined preview are one-line refusals, and the latent
    download is named as the pivot it is."""
    with serve_page(editor) as (url, _, http):
        r = http.post(url + "/api/latent", json={"path": "tuned/church_img/latent.npy"}, timeout=120).json()
        assert r["tuned"] is True and r["refined"] is False
        sid = r["session"]
        p = http.post(url + "/api/preview", json={"session": sid, "strengths": {}, "size": "full"}, timeout=120).json()
        want = _pixels(Image.open(latents / "tuned" / "church_img" / "inversion.png"))
        got = _pixels(Image.open(io.BytesIO(base64.b64decode(p["image"].split(",", 1)[1]))))
        assert np.abs(got - want).max() <= 1
        for path, body in (("/api/refine", {"session": sid}),
                           ("/api/preview", {"session": sid, "strengths": EDIT, "refined": True})):
            a = http.post(url + path, json=body, timeout=120)
            assert a.status_code == 400 and "PTI result" in a.json()["error"] and "\n" not in a.json()["error"]
        d = http.get(url + "/api/download/latent", params={"session": sid, "strengths": json.dumps(EDIT)}, timeout=120)
        assert d.status_code == 200 and "church_img_edit_pti_pivot.npy" in d.headers["content-disposition"]
