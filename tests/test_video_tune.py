"""Issue 32: `e4e edit CLIP.mp4 --tune N`, STIT's tuning of one generator on all of a clip's face
frames (pti_clip.tune_on_frames), on the synthetic church 256 checkpoint and a 2-frame clip (a
tuning update at 256 costs seconds on a CPU), the loop itself on a small generator.

The loss goes down over the passes; the tuned clip differs from the plain one in the face and its
strength-0 frames are the tuned generator's decodes pasted back; the one difference per clip
reloads and a rerun reuses it; changed settings tune again; an interrupted tuning leaves nothing;
bad uses are one line each.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import assert_one_line_error, interrupt_e4e, run_e4e
from test_video import decode_all, make_clip

FP32 = ("--device", "cpu", "--precision", "fp32")
N_FRAMES = 2


@pytest.fixture(scope="module")
def church_model(church):
    from e4e_cli.model import E4E

    return E4E.from_checkpoint(church, device="cpu", precision="fp32")


def tune_edit(clip, out, church, lpips_dir, *extra, strength="0", env=None):
    return run_e4e("edit", clip, "--direction", "sefa:0", "--strength", strength, "--checkpoint", church, "--out",
                   out, "--weights-dir", lpips_dir, *FP32, *extra, env=env)


def untuned_copy(folder: Path, dest: Path) -> Path:
    """The clip's folder without its videos and tuning: the codes and track are reused."""
    shutil.copytree(folder, dest)
    for p in list(dest.glob("*.mp4")) + list(dest.glob("*_*.json")) + [dest / "tuned_generator.npz"]:
        p.unlink(missing_ok=True)
    return dest


@pytest.fixture(scope="module")
def tuned(parity_dir, church, lpips_dir, tmp_path_factory):
    """A 2-frame clip edited at strength 0 with --tune 1 (at lr 1e-4: two updates at STIT's 3e-5 move
    the face by less than the codec's error), and the same clip without --tune
    (the codes reused): (clip, tuned folder, plain folder, the tuned run's process)."""
    d = tmp_path_factory.mktemp("tune")
    clip = d / "talk.mp4"
    make_clip(clip, parity_dir, n=N_FRAMES, audio=None)
    proc = tune_edit(clip, d / "tuned", church, lpips_dir, "--tune", "1", "--tune-lr", "1e-4")
    assert proc.returncode == 0, proc.stderr
    folder = d / "tuned" / "talk"
    plain = untuned_copy(folder, d / "plain" / "talk")
    proc2 = tune_edit(clip, d / "plain", church, lpips_dir)
    assert proc2.returncode == 0, proc2.stderr
    return clip, folder, plain, proc


def test_clip_tuning_lowers_the_loss(lpips_dir):
    """Four passes over three frames at STIT's settings (a small generator, LPIPS-alex): a step is
    every frame in order with one update each, the mean loss of a pass falls, the loss is
    10 x L2 + 1 x LPIPS, the mapping network never moves."""
    from conftest import tiny_generator
    from e4e_cli.pti_clip import ClipTuneSettings, tune_on_frames
    from e4e_cli.train.lossnets import load_lpips

    gen = tiny_generator(size=64, seed=1)
    other = tiny_generator(size=64, seed=2)
    codes = torch.randn(3, gen.n_styles, gen.style_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        targets = other.synthesize(codes).clamp(-1, 1)
    before = {k: v.detach().clone() for k, v in gen.named_parameters()}
    seen = []
    lpips = load_lpips(weights_dir=lpips_dir)
    log = tune_on_frames(gen, codes, targets, lpips,
                         settings=ClipTuneSettings(steps=4, lr=3e-3), on_frame=lambda s, f, l: seen.append((s, f)))
    assert seen == [(s, f) for s in range(4) for f in range(3)]
    assert log.steps == 4 and log.updates == 12 and len(log.losses) == 4
    totals = [t for _, _, t in log.losses]
    assert all(b < a for a, b in zip(totals, totals[1:])), totals
    for l2, lp, total in log.losses:
        assert abs(10 * l2 + lp - total) < 1e-4 * total
    params = dict(gen.named_parameters())
    assert all(bool((params[k] == before[k]).all()) for k in params if k.startswith("style."))
    assert all(not bool((params[k] == before[k]).all()) for k in params if k.startswith("conv1."))
    # one update per frame, not one per pass: the same tuning with the frames as one batch differs
    g2 = tiny_generator(size=64, seed=1)
    tune_on_frames(g2, codes[:1].expand(3, -1, -1), targets[:1].expand(3, -1, -1, -1), lpips,
                   settings=ClipTuneSettings(steps=1, lr=3e-3))
    g3 = tiny_generator(size=64, seed=1)
    tune_on_frames(g3, codes[:1], targets[:1], lpips, settings=ClipTuneSettings(steps=3, lr=3e-3))
    for (k, a), b in zip(g2.named_parameters(), g3.parameters()):
        assert torch.allclose(a, b, atol=1e-6), k  # 1 pass over 3 copies = 3 passes over 1 frame


def _face_box(quad, shape, inset: int = 5):
    q = np.asarray(quad)
    x0, y0 = np.floor(q.min(axis=0)).astype(int)
    x1, y1 = np.ceil(q.max(axis=0)).astype(int)
    cx, cy, r = (x0 + x1) // 2, (y0 + y1) // 2, (x1 - x0) // inset
    box = np.zeros(shape[:2], bool)
    box[max(0, cy - r):cy + r, max(0, cx - r):cx + r] = True
    return box


def test_tuned_clip_is_decoded_with_the_tuned_generator(tuned, church_model):
    """The face differs from the plain edit's; at strength 0 it is the tuned generator's decode of
    the frame's code, pasted back (within the codec's error), not the base generator's."""
    from e4e_cli.compositing import paste_face
    from e4e_cli.pti import load_tuned

    clip, folder, plain, _ = tuned
    src, _ = decode_all(clip)
    out_t, _ = decode_all(folder / "talk_sefa-0_+0.mp4")
    out_p, _ = decode_all(plain / "talk_sefa-0_+0.mp4")
    assert len(out_t) == len(out_p) == N_FRAMES
    frames = json.loads((folder / "video.json").read_text())["frames"]
    codes = np.load(folder / "latents.npy")
    dec, _ = load_tuned(folder / "tuned_generator.npz", church_model)
    for i in range(N_FRAMES):
        quad = frames[i]["quad"]
        box = _face_box(quad, src[i].shape)
        diff = np.abs(out_t[i].astype(np.int16) - out_p[i]).mean(axis=2)
        assert diff[box].mean() > 1.0, f"frame {i}: the tuned generator was not used"
        with torch.inference_mode():
            c = torch.from_numpy(codes[i:i + 1])
            mine = dec.to_pil(dec.decode(c, crop=False))[0]
            base = church_model.to_pil(church_model.decode(c, crop=False))[0]
        want = np.asarray(paste_face(Image.fromarray(src[i]), mine, np.asarray(quad), mask="ellipse"), np.int16)
        wrong = np.asarray(paste_face(Image.fromarray(src[i]), base, np.asarray(quad), mask="ellipse"), np.int16)
        err = np.abs(out_t[i] - want).mean(axis=2)[box].mean()
        other = np.abs(out_t[i] - wrong).mean(axis=2)[box].mean()
        codec = np.abs(out_p[i] - wrong).mean(axis=2)[box].mean()  # the plain clip against the base decode
        assert err < 2 * codec + 1 and err < 0.3 * other, (i, err, codec, other)


def test_one_difference_per_clip_recorded_and_reloadable(tuned, church, church_model):
    from e4e_cli.digests import content_sha256
    from e4e_cli.pti import load_diff

    clip, folder, plain, proc = tuned
    path = folder / "tuned_generator.npz"
    assert sorted(p.name for p in folder.glob("*.npz")) == ["tuned_generator.npz"]
    assert not list(folder.glob(".*part*")) and not list(folder.glob("*.part")), "a temporary file was left"
    with np.load(path, allow_pickle=False) as z:
        kinds = {z[k].dtype for k in z.files if k.startswith("d/")}
    assert kinds == {np.dtype(np.float16)}
    sha = content_sha256(church)
    diff, meta = load_diff(path, generator=church_model.generator, base_sha256=sha)
    assert diff and meta["steps_run"] == 1 and meta["frames"] == N_FRAMES and meta["updates"] == N_FRAMES
    assert (meta["steps"], meta["lr"], meta["l2_weight"], meta["lpips_weight"]) == (1, 1e-4, 10.0, 1.0)
    assert meta["base_sha256"] == sha and len(meta["codes_sha256"]) == 64
    video = json.loads((folder / "video.json").read_text())
    assert video["tune"]["steps_run"] == 1 and video["tune"]["codes_sha256"] == meta["codes_sha256"]
    assert json.loads((folder / "talk_sefa-0_+0.json").read_text())["tune"]["steps"] == 1
    assert json.loads((plain / "video.json").read_text())["tune"] is None
    assert "tuned the generator" in proc.stderr and "s/step" in proc.stderr


def test_rerun_reuses_the_tuning(tuned, church, lpips_dir):
    clip, folder, _, _ = tuned
    path = folder / "tuned_generator.npz"
    before, data = path.stat(), path.read_bytes()
    again = tune_edit(clip, folder.parent, church, lpips_dir, "--tune", "1", "--tune-lr", "1e-4", strength="1")
    assert again.returncode == 0, again.stderr
    assert "reused the tuned generator" in again.stderr and "tuned the generator" not in again.stderr
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns) and path.read_bytes() == data
    assert (folder / "talk_sefa-0_+1.mp4").is_file()


def test_a_tuning_made_another_way_is_not_reused(tuned, church_model, tmp_path):
    """The record decides: other settings, codes, clip or base checkpoint tune again, and so does a
    damaged file."""
    from e4e_cli.jobs.video_tune import reusable_tuning
    from e4e_cli.pti import load_diff

    _, folder, _, _ = tuned
    path = folder / "tuned_generator.npz"
    key = load_diff(path)[1]["key"]
    assert reusable_tuning(path, church_model, key) is not None
    for change in ({"lr": 3e-5}, {"steps": 2}, {"codes_sha256": "0" * 64}, {"video_sha256": "1" * 64},
                   {"center_sigma": 0.0}, {"face": "1"}, {"base_sha256": "2" * 64}):
        assert reusable_tuning(path, church_model, {**key, **change}) is None, change
    cut = tmp_path / "tuned_generator.npz"
    cut.write_bytes(path.read_bytes()[:-200])
    assert reusable_tuning(cut, church_model, key) is None
    assert reusable_tuning(tmp_path / "absent.npz", church_model, key) is None


def test_interrupted_tuning_leaves_no_file(tuned, church, lpips_dir, tmp_path):
    clip, folder, _, _ = tuned
    work = untuned_copy(folder, tmp_path / "o" / "talk")
    args = ["edit", clip, "-d", "sefa:0", "-s", "0", "--checkpoint", church, "--out", tmp_path / "o",
            "--weights-dir", lpips_dir, *FP32, "--tune", "300"]
    proc = interrupt_e4e(*args, when=work / ".tune-targets.npy.part")
    assert_one_line_error(proc, "interrupted", code=130)
    assert not (work / "tuned_generator.npz").exists() and not list(work.glob("*.mp4"))
    assert not list(work.glob(".*part*")) and not list(work.glob("*.tmp*")), sorted(p.name for p in work.iterdir())


def test_tune_refusals_are_one_line(parity_dir, church, tmp_path):
    clip = tmp_path / "c.mp4"
    make_clip(clip, parity_dir, n=1, audio=None)
    photo = Path(parity_dir) / "images" / "church_img.jpg"
    base = ["edit", "--direction", "sefa:0", "--strength", "1", "--out", tmp_path / "o"]
    cases = [
        ([photo, "--tune", "1", "--checkpoint", church], "--tune"),
        ([clip, "--tune", "1", "--refine", "hyperstyle"], "--refine hyperstyle"),
        ([clip, "--tune", "-1", "--checkpoint", church], "--tune"),
        ([clip, "--tune", "2.5", "--checkpoint", church], "--tune"),
        ([clip, "--tune-lr", "1e-4", "--checkpoint", church], "--tune"),
        ([clip, "--tune", "1", "--tune-lr", "0", "--checkpoint", church], "--tune-lr"),
    ]
    for extra, needle in cases:
        assert_one_line_error(run_e4e(*base[:1], *extra[:1], *base[1:], *extra[1:]), needle, code=2)
    torchrun = run_e4e(*base[:1], clip, *base[1:], "--tune", "1", "--checkpoint", church,
                       env={"WORLD_SIZE": "2", "RANK": "0"})
    assert_one_line_error(torchrun, "torchrun", code=2)
    empty = tmp_path / "no-weights"
    empty.mkdir()
    missing = run_e4e(*base[:1], clip, *base[1:], "--tune", "1", "--checkpoint", church, "--weights-dir", empty)
    assert_one_line_error(missing, "e4e download-weights lpips", code=3)
    assert not list((tmp_path / "o").rglob("*.mp4")) and not list((tmp_path / "o").rglob("*.npz"))
