"""`e4e edit CLIP.mp4`: videos made here with PyAV from the fixture face photo moved along a known
path (a tone with noise on the audio), edited through the installed CLI with the synthetic church
256 checkpoint (the encoder costs about 2 s a frame on a 2-core CPU: clips are a few frames).
"""
from __future__ import annotations

import json
from pathlib import Path

from fractions import Fraction

import av  # a dependency of the package (setup.cfg): missing, the tests fail here instead of skipping
import numpy as np
import pytest

from conftest import assert_one_line_error, interrupt_e4e, run_e4e

FPS = 24
SR = 48000


def face_photo(parity_dir: Path, side: int):
    from PIL import Image

    return Image.open(parity_dir / "images" / "input_img.jpg").convert("RGB").resize((side, side))


def background(w: int, h: int, seed: int = 0) -> np.ndarray:
    """A smooth gradient with low-frequency blotches and a little noise (a codec keeps it well)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    low = rng.integers(0, 255, (6, 8, 3)).astype(np.uint8)
    blotches = np.asarray(Image.fromarray(low).resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)
    grad = np.linspace(40, 200, w, dtype=np.float32)[None, :, None]
    img = 0.5 * blotches + 0.5 * grad + rng.normal(0, 2, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def make_clip(path: Path, parity_dir: Path, *, n: int, size=(224, 176), positions=None, face_in=None,
              audio: str | None = "aac", fmt: str | None = None, lossless: bool = True, rotation: int = 0,
              pts_ms: list | None = None) -> list:
    """Write a clip; returns each frame's face box (x, y, side) or None. The face moves 3 px right
    and 1 px down a frame unless `positions` says otherwise; `face_in(i)` False leaves it out.
    `rotation`: stored turned, with a display matrix that shows it upright (a phone clip);
    `pts_ms`: each frame's time in ms (a variable frame rate)."""
    from PIL import Image

    w, h = size
    side = int(h * 0.8)
    face = face_photo(parity_dir, side)
    bg = background(w, h)
    out = av.open(str(path), "w", format=fmt)
    vs = out.add_stream("libx264", rate=FPS)
    vs.width, vs.height = (h, w) if rotation % 180 else (w, h)
    if rotation:
        vs.set_display_rotation(rotation)
    if pts_ms:
        vs.time_base = vs.codec_context.time_base = Fraction(1, 1000)
    vs.pix_fmt = "yuv444p"  # lossless RGB round trip is not possible in 4:2:0; 4:4:4 at qp 0 is near it
    vs.options = {"qp": "0"} if lossless else {"crf": "23"}
    boxes = []
    for i in range(n):
        img = Image.fromarray(bg)
        x, y = positions[i] if positions else (8 + 3 * i, (h - side) // 2 - 4 + i)
        present = face_in(i) if face_in else True
        if present:
            img.paste(face, (int(x), int(y)))
        boxes.append((x, y, side) if present else None)
        stored = np.rot90(np.asarray(img), k=-(rotation // 90))
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(stored), format="rgb24")
        frame.pts = pts_ms[i] if pts_ms else i
        out.mux(vs.encode(frame))
    out.mux(vs.encode(None))
    out.close()
    if audio:  # remux with a tone: streams cannot be added after muxing began, so write both anew
        _add_audio(path, audio, n / FPS, fmt)
    return boxes


def _add_audio(path: Path, codec: str, seconds: float, fmt: str | None) -> None:
    src = av.open(str(path))
    tmp = path.with_name("with-audio-" + path.name)
    out = av.open(str(tmp), "w", format=fmt)
    v = out.add_stream_from_template(src.streams.video[0])
    a = out.add_stream(codec, rate=SR)
    a.layout = "mono"
    rng = np.random.default_rng(1)
    t = np.arange(int(SR * seconds)) / SR
    sig = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.02 * rng.standard_normal(len(t))).astype(np.float32)
    for pkt in src.demux(src.streams.video[0]):
        if pkt.dts is None:
            continue
        pkt.stream = v
        out.mux(pkt)
    fmt_name = a.codec_context.format.name
    step = a.codec_context.frame_size or 1024
    for s in range(0, len(sig), step):
        chunk = sig[s : s + step]
        data = (chunk * 32767).astype(np.int16)[None] if fmt_name == "s16" else chunk[None]
        frame = av.AudioFrame.from_ndarray(data, format=fmt_name, layout="mono")
        frame.sample_rate, frame.pts = SR, s
        out.mux(a.encode(frame))
    out.mux(a.encode(None))
    out.close()
    src.close()
    tmp.replace(path)


def decode_all(path: Path) -> tuple[list, list]:
    """(frames [H,W,3] uint8, times in seconds) of the first video stream."""
    with av.open(str(path)) as c:
        frames, times = [], []
        for f in c.decode(video=0):
            frames.append(f.to_ndarray(format="rgb24"))
            times.append(float(f.pts * f.time_base))
    return frames, times


def audio_seconds(path: Path) -> tuple[str, float]:
    with av.open(str(path)) as c:
        if not c.streams.audio:
            return "", 0.0
        s = c.streams.audio[0]
        n = sum(f.samples for f in c.decode(audio=0))
        return s.codec_context.name, n / s.codec_context.sample_rate


def edit(clip: Path, out: Path, church: Path, *extra, hooks=None, strength: str = "3", env=None):
    return run_e4e("edit", clip, "--direction", "sefa:0", "--strength", strength, "--checkpoint", church, "--out", out,
                   *extra, hooks=hooks, env=env)


@pytest.fixture(scope="module")
def edited(parity_dir, church, tmp_path_factory):
    """A 10-frame clip whose face is gone in frames 6 and 7, edited once: (clip, boxes, out folder, proc)."""
    d = tmp_path_factory.mktemp("video")
    clip = d / "talk.mp4"
    boxes = make_clip(clip, parity_dir, n=10, face_in=lambda i: i not in (6, 7))
    proc = edit(clip, d / "out", church)
    assert proc.returncode == 0, proc.stderr
    return clip, boxes, d / "out" / "talk", proc


def test_output_keeps_frames_times_size_and_audio(edited):
    clip, boxes, folder, proc = edited
    out = folder / "talk_sefa-0_+3.mp4"
    assert out.is_file() and (folder / "talk_sefa-0_+3.json").is_file()
    assert not list(folder.glob(".*part*")), "a temporary file was left behind"
    src_frames, src_times = decode_all(clip)
    frames, times = decode_all(out)
    assert len(frames) == len(src_frames) == 10
    assert frames[0].shape == src_frames[0].shape == (176, 224, 3)
    assert np.allclose(times, src_times, atol=1e-3)
    with av.open(str(out)) as c:
        assert c.streams.video[0].average_rate == FPS
    codec, secs = audio_seconds(out)
    src_codec, src_secs = audio_seconds(clip)
    assert codec == src_codec == "aac" and abs(secs - src_secs) < 0.03
    assert "10 frames" in proc.stdout and "8 of 10" in proc.stdout


def test_video_json_marks_each_frame(edited):
    clip, boxes, folder, _ = edited
    rec = json.loads((folder / "video.json").read_text())
    import hashlib

    assert rec["source"]["sha256"] == hashlib.sha256(clip.read_bytes()).hexdigest()
    assert rec["checkpoint"]["sha256"] and rec["direction"] == {"spec": "sefa:0"} and rec["strength"] == 3.0
    assert rec["smoothing"] == {"center_sigma": 1.0, "axes_sigma": 3.0, "codes_sigma": 0.0} and rec["precision"]
    frames = rec["frames"]
    assert [f["index"] for f in frames] == list(range(10))
    assert [f["status"] for f in frames] == ["no_face" if i in (6, 7) else "edited" for i in range(10)]
    assert all((f["quad"] is None) == (i in (6, 7)) for i, f in enumerate(frames))
    assert frames[6]["reason"] and abs(frames[5]["time"] - 5 / FPS) < 1e-3
    codes = np.load(folder / "latents.npy")
    assert codes.shape == (10, 14, 512)  # church 256: 14 styles
    assert np.isnan(codes[6]).all() and np.isfinite(codes[[0, 5, 8, 9]]).all()


def test_frames_without_the_face_pass_through_and_the_background_stays(edited):
    clip, boxes, folder, _ = edited
    src, _ = decode_all(clip)
    out, _ = decode_all(folder / "talk_sefa-0_+3.mp4")
    quads = [f["quad"] for f in json.loads((folder / "video.json").read_text())["frames"]]
    for i in (6, 7):  # through a lossy codec (crf 18): within its tolerance of the source
        diff = np.abs(out[i].astype(np.int16) - src[i])
        assert diff.mean() < 2.5 and np.percentile(diff, 99) < 16, (i, diff.mean())
    for i in (0, 4, 9):
        q = np.asarray(quads[i])
        x0, y0 = np.floor(q.min(axis=0)).astype(int)
        x1, y1 = np.ceil(q.max(axis=0)).astype(int)
        far = np.ones(src[i].shape[:2], bool)
        far[max(0, y0 - 8) : y1 + 8, max(0, x0 - 8) : x1 + 8] = False
        diff = np.abs(out[i].astype(np.int16) - src[i])
        assert far.sum() > 2000
        assert diff[far].mean() < 2.5, (i, diff[far].mean())
        assert diff[~far].mean() > 4 * diff[far].mean(), "the face was not edited"


def test_crop_follows_the_known_path(edited):
    clip, boxes, folder, _ = edited
    frames = json.loads((folder / "video.json").read_text())["frames"]
    offsets = [np.mean(f["quad"], axis=0) - boxes[i][:2] for i, f in enumerate(frames) if f["quad"] is not None]
    offsets = np.asarray(offsets)
    assert np.abs(offsets - offsets.mean(axis=0)).max() < 2.0, offsets


def test_rerun_reuses_the_codes(edited, church):
    clip, boxes, folder, _ = edited
    latents = folder / "latents.npy"
    before = latents.stat()
    again = edit(clip, folder.parent, church)
    assert again.returncode == 0 and "already done" in again.stdout, again.stdout + again.stderr
    other = run_e4e("edit", clip, "--direction", "sefa:0", "--strength", "-2", "--checkpoint", church, "--out",
                    folder.parent)
    assert other.returncode == 0, other.stderr
    after = latents.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), "codes were computed again"
    assert (folder / "talk_sefa-0_-2.mp4").is_file()


def test_codes_of_another_checkpoint_are_not_reused(edited, church, tmp_path):
    clip, _, folder, _ = edited
    import shutil

    out = tmp_path / "o"
    shutil.copytree(folder, out / "talk")
    rec = json.loads((out / "talk" / "latents.json").read_text())
    rec["key"]["checkpoint_sha256"] = "0" * 64  # as if another checkpoint had made them
    (out / "talk" / "latents.json").write_text(json.dumps(rec))
    planted = np.load(out / "talk" / "latents.npy")
    planted[0] += 1.0
    np.save(out / "talk" / "latents.npy", planted)
    for p in (out / "talk").glob("*.mp4"):
        p.unlink()
    proc = edit(clip, out, church)
    assert proc.returncode == 0, proc.stderr
    fresh = np.load(out / "talk" / "latents.npy")
    assert np.abs(fresh[0] - planted[0]).max() > 0.5, "codes keyed to another checkpoint were reused"


def test_interrupted_inversion_resumes(parity_dir, church, tmp_path):
    clip = tmp_path / "short.mp4"
    make_clip(clip, parity_dir, n=6, audio=None)
    out = tmp_path / "o"
    killed = edit(clip, out, church, "--batch-size", "2", hooks=["--kill-after-latent-batches", "1"])
    assert killed.returncode == 3, killed.stderr
    folder = out / "short"
    assert not (folder / "latents.npy").exists() and not list(folder.glob("*.mp4"))
    part = np.lib.format.open_memmap(folder / "latents.npy.part", mode="r+")
    done = np.load(folder / "latents.done.npy")
    assert done.tolist() == [1, 1, 0, 0, 0, 0] and np.isfinite(part[:2]).all() and np.isnan(part[2:]).all()
    part[0] += 1.0  # a marker: a resumed run keeps the rows done before the kill
    part.flush()
    del part
    proc = edit(clip, out, church, "--batch-size", "2")
    assert proc.returncode == 0, proc.stderr
    codes = np.load(folder / "latents.npy")
    assert np.isfinite(codes).all()
    assert not (folder / "latents.npy.part").exists() and not (folder / "latents.part.json").exists()
    assert not (folder / "latents.done.npy").exists()
    again = np.load(folder / "latents.npy")
    assert np.array_equal(codes, again)
    one = json.loads((folder / "latents.json").read_text())
    assert one["key"]["video_sha256"]
    # the marker survived: rows before the kill were not computed again
    proc2 = edit(clip, tmp_path / "fresh", church, "--batch-size", "2")
    assert proc2.returncode == 0
    fresh = np.load(tmp_path / "fresh" / "short" / "latents.npy")
    assert np.abs(codes[0] - fresh[0] - 1.0).max() < 1e-4
    assert np.abs(codes[2:] - fresh[2:]).max() < 1e-4


def test_smoothing_steadies_the_crop_and_never_crosses_a_gap(parity_dir):
    """The tracker on frames whose face jitters about a straight path: the smoothed crop is nearer
    the path than each frame's own; a run after a gap is smoothed on its own."""
    from PIL import Image

    from e4e_cli.alignment import default_aligner
    from e4e_cli.facetrack import FaceTracker, quad_to_cxy, smooth_quads

    rng = np.random.default_rng(3)
    w, h, side = 224, 176, 140
    face, bg = face_photo(parity_dir, side), background(w, h)
    tracker = FaceTracker(default_aligner(), face="largest")
    raw, path = [], []
    for i in range(16):
        x, y = 10 + 3 * i, 14 + 0.5 * i
        jx, jy = rng.integers(-3, 4, 2)
        img = Image.fromarray(bg)
        img.paste(face, (int(x + jx), int(y + jy)))
        raw.append(tracker.see(np.asarray(img)).quad)
        path.append((x, y))
    assert all(q is not None for q in raw)
    path = np.asarray(path)

    def wobble(quads):
        c = np.array([quad_to_cxy(q)[0] for q in quads]) - path
        return np.abs(c - c.mean(axis=0)).mean()

    smooth = smooth_quads(raw, center_sigma=1.0, axes_sigma=3.0)
    assert wobble(smooth) < 0.7 * wobble(raw), (wobble(smooth), wobble(raw))
    off = smooth_quads(raw, center_sigma=0, axes_sigma=0)
    assert all(np.allclose(a, b) for a, b in zip(off, raw))
    gapped = raw[:8] + [None] + [q + 100.0 for q in raw[9:]]
    sm = smooth_quads(gapped)
    alone = smooth_quads(gapped[9:])
    assert sm[8] is None and all(np.allclose(a, b) for a, b in zip(sm[9:], alone))
    assert all(np.allclose(a, b) for a, b in zip(sm[:8], smooth_quads(raw[:8])))


def test_odd_size_truncated_clip_with_pcm_audio(parity_dir, church, tmp_path):
    """Odd sides are kept (yuv444p); PCM audio, which MP4 cannot hold, is re-encoded to AAC; a clip
    cut short is edited as far as it decodes, with a note."""
    clip = tmp_path / "odd.mkv"
    make_clip(clip, parity_dir, n=8, size=(201, 161), audio="pcm_s16le", fmt="matroska")
    data = clip.read_bytes()
    clip.write_bytes(data[: int(len(data) * 0.6)])
    n_ok = len(decode_all_tolerant(clip))
    assert 0 < n_ok < 8
    proc = edit(clip, tmp_path / "o", church)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "o" / "odd" / "odd_sefa-0_+3.mp4"
    frames, _ = decode_all(out)
    assert len(frames) == n_ok and frames[0].shape == (161, 201, 3)
    codec, secs = audio_seconds(out)
    assert codec == "aac" and secs > 0
    assert "e4e: note:" in proc.stderr and "re-encoded to AAC" in proc.stderr
    assert f"the {n_ok} frames that decode are edited" in proc.stderr


def decode_all_tolerant(path: Path) -> list:
    frames = []
    with av.open(str(path)) as c:
        try:
            for f in c.decode(video=0):
                frames.append(f)
        except av.FFmpegError:
            pass
    return frames


def test_one_frame_without_audio(parity_dir, church, tmp_path):
    clip = tmp_path / "one.mov"
    make_clip(clip, parity_dir, n=1, audio=None, fmt="mov")
    proc = edit(clip, tmp_path / "o", church, "--side-by-side")
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "o" / "one" / "one_sefa-0_+3_side-by-side.mp4"
    frames, _ = decode_all(out)
    assert len(frames) == 1 and frames[0].shape == (176, 448, 3)
    assert audio_seconds(out) == ("", 0.0)


def test_bad_videos_are_one_line(parity_dir, church, tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n")
    proc = edit(text, tmp_path / "o1", church)
    assert_one_line_error(proc, "notes.mp4", "not a video", code=1)
    assert not list((tmp_path / "o1").rglob("*.mp4"))

    cut = tmp_path / "cut.mp4"
    make_clip(cut, parity_dir, n=4, audio=None)
    cut.write_bytes(cut.read_bytes()[:1500])  # the MP4 index (moov) is at the end: nothing decodes
    proc = edit(cut, tmp_path / "o2", church)
    assert_one_line_error(proc, "cut.mp4", code=1)
    assert not list((tmp_path / "o2").rglob("*.mp4"))

    empty = tmp_path / "empty.mp4"
    make_clip(empty, parity_dir, n=3, face_in=lambda i: False)
    proc = edit(empty, tmp_path / "o3", church)
    assert_one_line_error(proc, "no face", "3 frames", code=1)
    assert not list((tmp_path / "o3").rglob("*.mp4"))


@pytest.mark.parametrize("extra, needle", [
    (["--face", "all"], "--face all"),
    (["--smooth-center", "-1"], "--smooth-center"),
    (["--smooth-axes", "nan"], "--smooth-axes"),
    (["--smooth-codes", "-0.5"], "--smooth-codes"),
    (["--refine", "pti"], "--refine pti"),
    (["--paste-back"], "--paste-back"),
])
def test_refused_video_options(parity_dir, church, tmp_path, extra, needle):
    clip = tmp_path / "c.mp4"
    make_clip(clip, parity_dir, n=1, audio=None)
    proc = edit(clip, tmp_path / "o", church, *extra)
    assert_one_line_error(proc, needle, code=2)
    assert not list((tmp_path / "o").rglob("*.mp4"))


def test_video_options_are_refused_for_photos(parity_dir, tmp_path):
    lat = tmp_path / "x.npy"
    np.save(lat, np.zeros((18, 512), np.float32))
    proc = run_e4e("edit", lat, "--direction", "sefa:0", "--strength", "1", "--side-by-side", "--out", tmp_path / "o")
    assert_one_line_error(proc, "--side-by-side", "videos", code=2)


def test_rotated_variable_rate_clip(parity_dir, church, tmp_path):
    """A phone clip stored turned (display matrix 90) with irregular frame times: the output is
    stored and shown the same way, every frame at its own time."""
    clip = tmp_path / "phone.mp4"
    pts = [0, 40, 70, 150, 190]
    make_clip(clip, parity_dir, n=5, audio=None, rotation=90, pts_ms=pts)
    proc = edit(clip, tmp_path / "o", church)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "o" / "phone" / "phone_sefa-0_+3.mp4"
    with av.open(str(out)) as c, av.open(str(clip)) as s:
        got = [(f.rotation, f.width, f.height, round(float(f.pts * f.time_base), 3)) for f in c.decode(video=0)]
        want = [(f.rotation, f.width, f.height, round(float(f.pts * f.time_base), 3)) for f in s.decode(video=0)]
    assert got == want and got[0][:3] == (90, 176, 224) and [g[3] for g in got] == [p / 1000 for p in pts]
    rec = json.loads((tmp_path / "o" / "phone" / "video.json").read_text())
    assert rec["rotation"] == 90 and rec["size"] == [224, 176]
    assert [f["status"] for f in rec["frames"]] == ["edited"] * 5  # found upright: the face was turned back


def test_evaluate_reports_temporal_identity_and_flicker(edited, lossnet_weights, tmp_path):
    clip, _, folder, _ = edited
    out_video = folder / "talk_sefa-0_+3.mp4"
    same = run_e4e("evaluate", clip, clip, "--weights-dir", lossnet_weights, "--out", tmp_path / "e1")
    assert same.returncode == 0, same.stderr
    rec = json.loads((tmp_path / "e1" / "talk_temporal.json").read_text())
    assert rec["frames"] == 10 and rec["with_face"] == 8
    assert rec["tl_id"] == pytest.approx(1.0, abs=1e-6) and rec["tg_id"] == pytest.approx(1.0, abs=1e-6)
    assert rec["flicker_ratio"] == pytest.approx(1.0, abs=1e-9)
    proc = run_e4e("evaluate", clip, out_video, "--weights-dir", lossnet_weights, "--out", tmp_path / "e2")
    assert proc.returncode == 0, proc.stderr
    assert "TL-ID" in proc.stdout and "TG-ID" in proc.stdout
    rec = json.loads((tmp_path / "e2" / "talk_sefa-0_+3_temporal.json").read_text())
    assert 0 < rec["tl_id"] < 2 and 0 < rec["tg_id"] < 2 and rec["flicker_edited"] > 0
    assert rec["tl_id"] != pytest.approx(1.0, abs=1e-6), "the edit was measured as the source"
    one = run_e4e("evaluate", clip, "--weights-dir", lossnet_weights, "--out", tmp_path / "e3")
    assert_one_line_error(one, "SOURCE_VIDEO EDITED_VIDEO", code=2)


def test_temporal_identity_definitions():
    from e4e_cli.jobs.video_eval import _local_global

    f = np.eye(4, dtype=np.float32)[[0, 0, 1, 1]]  # frames 0,1 alike, 2,3 alike, the two pairs orthogonal
    local, glob = _local_global(f, np.array([True] * 4))
    assert local == pytest.approx(2 / 3) and glob == pytest.approx(2 / 6)
    local, glob = _local_global(f, np.array([True, True, False, True]))  # pairs across the gap do not count
    assert local == pytest.approx(1.0) and glob == pytest.approx(1 / 3)


def test_a_run_killed_while_encoding_leaves_no_video_and_reruns(edited, church, tmp_path):
    clip, _, folder, _ = edited
    import shutil

    out = tmp_path / "o"
    shutil.copytree(folder, out / "talk")  # the codes are there: the rerun goes straight to encoding
    for p in (out / "talk").glob("*.mp4"):
        p.unlink()
    killed = edit(clip, out, church, strength="1", hooks=["--kill-after-video-frames", "4"])
    assert killed.returncode == 3, killed.stderr
    assert not (out / "talk" / "talk_sefa-0_+1.mp4").exists() and not (out / "talk" / "talk_sefa-0_+1.json").exists()
    assert len(list((out / "talk").glob(".talk_sefa-0_+1.mp4.*.part"))) == 1
    proc = edit(clip, out, church, strength="1")
    assert proc.returncode == 0, proc.stderr
    assert len(decode_all(out / "talk" / "talk_sefa-0_+1.mp4")[0]) == 10
    assert not list((out / "talk").glob(".*.part")), "the killed run's temporary file was not cleaned up"


def test_sweep_writes_one_video_per_strength(parity_dir, church, tmp_path):
    clip = tmp_path / "one.mp4"
    make_clip(clip, parity_dir, n=2, audio=None)
    proc = run_e4e("edit", clip, "--direction", "sefa:0", "--sweep", "-2:2:2", "--checkpoint", church, "--out",
                   tmp_path / "o")
    assert proc.returncode == 0, proc.stderr
    folder = tmp_path / "o" / "one"
    assert sorted(p.name for p in folder.glob("*.mp4")) == ["one_sefa-0_+2.mp4", "one_sefa-0_-2.mp4"]
    rec = json.loads((folder / "video.json").read_text())
    assert rec["strengths"] == [-2.0, 2.0] and rec["strength"] is None
    a, b = (decode_all(folder / f"one_sefa-0_{s}.mp4")[0][0] for s in ("-2", "+2"))
    assert np.abs(a.astype(np.int16) - b).mean() > 1.0, "both strengths made the same video"


def test_tracker_follows_the_chosen_face(parity_dir):
    """Two faces: `largest` and `--face N` (left to right) pick one in the first frame; later
    frames keep the detection nearest it, though the other face is larger."""
    from PIL import Image

    from e4e_cli.alignment import default_aligner
    from e4e_cli.facetrack import FaceTracker, quad_to_cxy

    bg = background(300, 200)

    def frame(shift: int, big: int = 150, small: int = 120) -> np.ndarray:
        img = Image.fromarray(bg)
        img.paste(face_photo(parity_dir, small), (10 + shift, 40))  # left, smaller
        img.paste(face_photo(parity_dir, big), (132 + shift, 25))  # right, larger, close by
        return np.asarray(img)

    centre_x = lambda s: quad_to_cxy(s.quad)[0][0]  # noqa: E731
    aligner = default_aligner()
    largest = FaceTracker(aligner, face="largest")
    assert centre_x(largest.see(frame(0))) > 170
    left = FaceTracker(aligner, face=0)
    xs = [centre_x(left.see(frame(4 * i))) for i in range(4)]
    assert all(x < 110 for x in xs) and np.allclose(np.diff(xs), 4, atol=1.5), xs
    right = FaceTracker(aligner, face=1)
    assert centre_x(right.see(frame(0))) > 170
    missing = FaceTracker(aligner, face=2)
    seen = missing.see(frame(0))
    assert seen.quad is None and "face 2" in seen.reason and missing.asked_face_missing


def test_ctrl_c_is_one_line_and_the_same_command_resumes(parity_dir, church, tmp_path):
    clip = tmp_path / "long.mp4"
    make_clip(clip, parity_dir, n=6, audio=None)
    out = tmp_path / "o"
    args = ["edit", clip, "-d", "sefa:0", "-s", "1", "--checkpoint", church, "--out", out, "--batch-size", "1"]
    proc = interrupt_e4e(*args, when=out / "long" / "latents.part.json")
    assert_one_line_error(proc, "interrupted", "resumes", code=130)
    assert not list((out / "long").glob("*.mp4"))
    again = run_e4e(*args)
    assert again.returncode == 0, again.stderr
    assert len(decode_all(out / "long" / "long_sefa-0_+1.mp4")[0]) == 6


def test_torchrun_two_processes_match_one(parity_dir, church, tmp_path):
    """Two processes share the inversion and the edit by frame ranges; the first encodes. The same
    batches either way (`plan_chunks`), one thread per process: the output equals one process's
    (within float32's last bits)."""
    import os
    import subprocess
    import sys

    from conftest import HOOKS

    clip = tmp_path / "long.mp4"
    make_clip(clip, parity_dir, n=7, face_in=lambda i: i != 3)
    env = {"OMP_NUM_THREADS": "1"}
    one = edit(clip, tmp_path / "one", church, "--batch-size", "2", env=env)
    assert one.returncode == 0, one.stderr
    logs = tmp_path / "logs"
    logs.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(HOOKS),
           "--log-video-crops", str(logs), "--", "edit", str(clip), "--direction", "sefa:0", "--strength", "3",
           "--checkpoint", str(church), "--out", str(tmp_path / "two"), "--batch-size", "2"]
    two = subprocess.run(cmd, env=dict(os.environ, E4E_NO_PROGRESS="1", **env), capture_output=True, text=True,
                         timeout=900)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("6 of 7 frames have the face") == 1, two.stdout  # the first process speaks
    crops = {r: [int(x) for x in (logs / f"rank{r}.txt").read_text().split()] for r in (0, 1)}
    assert sum(crops[0]) and sum(crops[1]) and sum(crops[0]) + sum(crops[1]) == 6, crops  # the work was shared
    a, b = tmp_path / "one" / "long", tmp_path / "two" / "long"
    ca, cb = np.load(a / "latents.npy"), np.load(b / "latents.npy")
    assert np.array_equal(np.isnan(ca), np.isnan(cb)) and np.nanmax(np.abs(ca - cb)) <= 1e-5
    fa, ta = decode_all(a / "long_sefa-0_+3.mp4")
    fb, tb = decode_all(b / "long_sefa-0_+3.mp4")
    assert len(fa) == len(fb) == 7 and ta == tb
    # the same batches and threads give the same frames (in practice bit for bit); a frame out of
    # place or from another share would differ by tens of levels
    diffs = [float(np.abs(x.astype(np.int16) - y).mean()) for x, y in zip(fa, fb)]
    assert max(diffs) < 0.05, diffs
    assert audio_seconds(a / "long_sefa-0_+3.mp4") == audio_seconds(b / "long_sefa-0_+3.mp4")
    assert json.loads((b / "video.json").read_text())["processes"] == 2
    assert not list(b.glob(".*part*")), "a held-frames file was left behind"


def test_refine_hyperstyle_per_frame(parity_dir, tmp_path):
    """`--refine hyperstyle`: each frame's crop is refined and its edit decoded with its own
    offsets (steps 1 differs from steps 0 in the face, and not elsewhere)."""
    from conftest import hyperstyle_checkpoints

    hs, we = hyperstyle_checkpoints("ffhq_1024_s1")
    clip = tmp_path / "one.mp4"
    make_clip(clip, parity_dir, n=1, audio=None)
    outs = {}
    for steps in ("0", "1"):
        proc = run_e4e("edit", clip, "--direction", "sefa:0", "--strength", "2", "--refine", "hyperstyle",
                       "--refiner", hs, "--w-encoder", we, "--refine-steps", steps, "--out", tmp_path / steps)
        assert proc.returncode == 0, proc.stderr
        folder = tmp_path / steps / "one"
        rec = json.loads((folder / "one_sefa-0_+2.json").read_text())
        assert rec["refine"]["method"] == "hyperstyle" and rec["refine"]["steps"] == int(steps)
        assert json.loads((folder / "video.json").read_text())["refine"]["refiner_sha256"] == rec["refine"]["refiner_sha256"]
        outs[steps] = decode_all(folder / "one_sefa-0_+2.mp4")[0][0].astype(np.int16)
    q = np.asarray(json.loads((tmp_path / "1" / "one" / "video.json").read_text())["frames"][0]["quad"])
    x0, y0 = np.floor(q.min(axis=0)).astype(int)
    x1, y1 = np.ceil(q.max(axis=0)).astype(int)
    inside = np.zeros(outs["0"].shape[:2], bool)  # the middle of the crop, well inside the paste mask
    cx, cy, r = (x0 + x1) // 2, (y0 + y1) // 2, (x1 - x0) // 5
    inside[max(0, cy - r) : cy + r, max(0, cx - r) : cx + r] = True
    diff = np.abs(outs["1"] - outs["0"]).mean(axis=2)
    assert diff[inside].mean() > 1.0, "the frame's offsets were not used"
    far = np.ones_like(inside)
    far[max(0, y0 - 8) : y1 + 8, max(0, x0 - 8) : x1 + 8] = False
    assert diff[far].mean() < 2.5 and diff[inside].mean() > 4 * diff[far].mean(), (diff[inside].mean(), diff[far].mean())


def test_refine_with_an_e4e_checkpoint_is_refused(parity_dir, church, tmp_path):
    clip = tmp_path / "c.mp4"
    make_clip(clip, parity_dir, n=1, audio=None)
    proc = edit(clip, tmp_path / "o", church, "--refine", "hyperstyle")
    assert_one_line_error(proc, "--checkpoint", "hyperstyle", code=2)
    assert not list((tmp_path / "o").rglob("*.mp4"))


def test_smooth_rows_reads_a_window_and_equals_the_whole_run():
    from e4e_cli.facetrack import _smooth_run, smooth_rows

    v = np.random.default_rng(0).normal(size=(30, 2, 5))
    whole = _smooth_run(v[4:25], 2.5)
    rows = [4, 5, 13, 23, 24]
    assert np.allclose(smooth_rows(v, rows, (4, 25), 2.5), whole[[r - 4 for r in rows]], atol=1e-12)
    assert np.array_equal(smooth_rows(v, rows, (4, 25), 0.0), v[rows])


def test_smooth_codes_edits_the_smoothed_codes(edited, church, tmp_path):
    """--smooth-codes 2 decodes codes smoothed within each run of face frames: a code planted at
    frame 2 spreads to its neighbours, and never across the gap (frames 6, 7) to the second run.
    The codes on disk are reused (no new inversion); the record says it. Without smoothing the
    plant would move frame 2 alone: its neighbours would differ from the plain edit by the
    codec's noise only, as frames 8 and 9 do here."""
    import shutil

    clip, _, folder, _ = edited
    out = tmp_path / "o"
    shutil.copytree(folder, out / "talk", ignore=shutil.ignore_patterns("talk_*"))
    codes = np.load(out / "talk" / "latents.npy")
    codes[2] += 2.0  # the record still matches: these codes are taken as the clip's
    np.save(out / "talk" / "latents.npy", codes)
    stamp = (out / "talk" / "latents.npy").stat().st_mtime_ns
    proc = edit(clip, out, church, "--smooth-codes", "2")
    assert proc.returncode == 0, proc.stderr
    assert (out / "talk" / "latents.npy").stat().st_mtime_ns == stamp, "codes were computed again"
    rec = json.loads((out / "talk" / "talk_sefa-0_+3.json").read_text())
    assert rec["smoothing"]["codes_sigma"] == 2.0
    plain = decode_all(folder / "talk_sefa-0_+3.mp4")[0]
    smooth = decode_all(out / "talk" / "talk_sefa-0_+3.mp4")[0]
    q = np.asarray(json.loads((folder / "video.json").read_text())["frames"][2]["quad"])
    (x0, y0), (x1, y1) = np.floor(q.min(axis=0)).astype(int), np.ceil(q.max(axis=0)).astype(int)
    face = (slice(max(0, y0), y1), slice(max(0, x0), x1))
    moved = [float(np.abs(plain[i][face].astype(np.int16) - smooth[i][face]).mean()) for i in range(10)]
    assert min(moved[i] for i in (0, 1, 3, 4)) > 3 * max(moved[i] for i in (8, 9)), moved

def test_a_4k_clip(parity_dir, church, tmp_path):
    """3840x2160, two frames: the size is kept, the face (1728 px) is found on a reduced copy,
    cropped with the shrink-first path and pasted back; the background stays."""
    clip = tmp_path / "uhd.mp4"
    boxes = make_clip(clip, parity_dir, n=2, size=(3840, 2160), lossless=False)
    proc = edit(clip, tmp_path / "o", church)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "o" / "uhd" / "uhd_sefa-0_+3.mp4"
    frames, _ = decode_all(out)
    src, _ = decode_all(clip)
    assert len(frames) == 2 and frames[0].shape == (2160, 3840, 3)
    x, y, side = boxes[1]
    diff = np.abs(frames[1].astype(np.int16) - src[1]).mean(axis=2)
    face = diff[y + side // 3 : y + 2 * side // 3, x + side // 3 : x + 2 * side // 3].mean()
    far = diff[:, x + side + 200 :].mean()
    assert face > 4 * far and far < 2.5, (face, far)
