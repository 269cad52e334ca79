"""Read and write videos with PyAV (FFmpeg bundled in its wheels: no ffmpeg binary needed).

Frames stream: `read_frames` yields one upright RGB frame at a time (the rotation a player
applies from the display matrix is applied to the pixels), so memory does not grow with the
clip's length. `VideoWriter` encodes H.264 (libx264) into a temporary file beside the final
name and renames it only when the whole video is written; it keeps each frame's timestamp
(pts in the source stream's time base, so variable frame rates survive) and copies the
source's audio packets while it goes (interleaved by time, never buffered whole). Audio the
MP4 container cannot hold is re-encoded to AAC.

Rotation (a phone clip's display matrix): frames are handed out upright, and the writer turns
them back to the stored orientation and writes the same display matrix, so the output is
stored and shown as the source was.

Odd sizes: 4:2:0 chroma (yuv420p) needs even sides, so an odd-sized clip is encoded as yuv444p
(full-resolution chroma, H.264 High 4:4:4): the size is kept exactly; some players (browsers,
QuickTime) do not play 4:4:4.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from .errors import E4EError

VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi")
#: audio codecs FFmpeg's MP4 muxer takes as they are (others are re-encoded to AAC)
MP4_AUDIO = {"aac", "mp3", "ac3", "eac3", "opus", "alac", "flac"}
DEFAULT_CRF = 18  # visually lossless for most clips; 0 = lossless


def is_video(path: Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def _reason(exc: BaseException) -> str:
    return " ".join(str(getattr(exc, "strerror", None) or exc).split())[:160]


def _open_input(path: Path):
    import av

    p = Path(path)
    if not p.is_file():
        raise E4EError(f"{p} not found")
    try:
        container = av.open(str(p), "r")
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise E4EError(f"{p.name} is not a video that can be read ({_reason(exc)})") from None
    if not container.streams.video:
        container.close()
        raise E4EError(f"{p.name} has no video stream")
    return container


@dataclass
class VideoInfo:
    """What a clip is: displayed size (after rotation), stream timing, audio streams."""

    width: int
    height: int
    rotation: int  # degrees the player turns the stored pixels (counter-clockwise), 0/90/180/270
    time_base: Fraction
    rate: Optional[Fraction]  # average frame rate (None when unknown)
    frames: int  # as the container says (0: unknown)
    duration: Optional[float]  # seconds
    audio: list = field(default_factory=list)  # codec names of the audio streams


def probe(path: Path) -> VideoInfo:
    """The clip's facts, from its headers and first frame (its rotation). Raises E4EError."""
    with contextlib.closing(_open_input(path)) as c:
        vs = c.streams.video[0]
        rotation = 0
        w, h = vs.codec_context.width, vs.codec_context.height
        try:
            for frame in c.decode(vs):
                rotation = _quarter_turns(frame) * 90
                w, h = frame.width, frame.height
                break
        except Exception as exc:  # noqa: BLE001  (FFmpeg's errors: a file that does not decode)
            raise E4EError(f"{Path(path).name} is not a video that can be decoded ({_reason(exc)})") from None
        if rotation in (90, 270):
            w, h = h, w
        dur = float(vs.duration * vs.time_base) if vs.duration and vs.time_base else (
            c.duration / 1e6 if c.duration else None)
        return VideoInfo(width=int(w), height=int(h), rotation=rotation, time_base=vs.time_base or Fraction(1, 90000),
                         rate=vs.average_rate, frames=int(vs.frames or 0), duration=dur,
                         audio=[a.codec_context.name for a in c.streams.audio])


def _quarter_turns(frame) -> int:
    """Counter-clockwise quarter turns the player applies (PyAV's `rotation`: the display
    matrix's angle, degrees counter-clockwise)."""
    rot = getattr(frame, "rotation", 0) or 0
    return int(round(float(rot) / 90.0)) % 4


@dataclass
class Frame:
    index: int
    pts: int  # in `time_base` units
    time: float  # seconds
    rgb: np.ndarray  # [H,W,3] uint8, upright


@dataclass
class ReadReport:
    """Filled while `read_frames` runs: how many frames decoded and, if the stream broke, where."""

    frames: int = 0
    broke_at: Optional[int] = None  # index of the first frame that could not be decoded
    reason: Optional[str] = None


def read_frames(path: Path, *, report: Optional[ReadReport] = None, start: int = 0) -> Iterator[Frame]:
    """Decode the first video stream frame by frame (upright RGB). A stream that breaks part-way
    (a truncated file) ends there; `report` says where and why. Frames before `start` are
    decoded but not converted (a resumed pass skips them cheaply)."""
    report = report if report is not None else ReadReport()
    with contextlib.closing(_open_input(path)) as c:
        vs = c.streams.video[0]
        vs.thread_type = "AUTO"
        tb = vs.time_base or Fraction(1, 90000)
        rate = vs.average_rate or Fraction(25)
        index, last_pts = 0, None
        frames = c.decode(vs)
        while True:
            try:
                frame = next(frames)
            except StopIteration:
                break
            except Exception as exc:  # noqa: BLE001  (any FFmpeg error: keep what decoded)
                report.broke_at, report.reason = index, _reason(exc)
                break
            pts = frame.pts if frame.pts is not None else (
                int(round(index / rate / tb)) if last_pts is None else last_pts + 1)
            if last_pts is not None and pts <= last_pts:  # duplicate timestamps: keep them increasing
                pts = last_pts + 1
            last_pts = pts
            if index >= start:
                rgb = frame.to_ndarray(format="rgb24")
                k = _quarter_turns(frame)
                if k:
                    rgb = np.ascontiguousarray(np.rot90(rgb, k=k))
                yield Frame(index=index, pts=int(pts), time=float(pts * tb), rgb=rgb)
            index += 1
            report.frames = index


class VideoWriter:
    """An H.264 MP4 written under a temporary name and renamed to `dest` by `commit()`; the
    source's audio is copied in by time as frames arrive. Use as a context manager: leaving it
    without `commit()` (an error, Ctrl-C) removes the temporary file."""

    def __init__(self, dest: Path, *, source: Path, width: int, height: int, time_base: Fraction,
                 rate: Optional[Fraction], crf: int = DEFAULT_CRF, preset: str = "medium", audio: bool = True,
                 rotation: int = 0):
        """width, height: the upright frames given to `write`; rotation: the source's display
        rotation (degrees counter-clockwise), written back with the pixels stored as the source's."""
        import av

        self.dest = Path(dest)
        for stale in self.dest.parent.glob(f".{self.dest.name}.*.part"):  # left by a killed run
            stale.unlink(missing_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.dest.name}.", suffix=".part", dir=self.dest.parent)
        os.close(fd)
        self.tmp = Path(tmp)
        self.out = av.open(tmp, "w", format="mp4")
        self.turns = int(round(rotation / 90.0)) % 4
        if self.turns % 2:
            width, height = height, width  # stored sides
        self.odd = width % 2 or height % 2
        vs = self.out.add_stream("libx264", rate=rate or Fraction(25))
        vs.width, vs.height = int(width), int(height)
        if self.turns:
            vs.set_display_rotation(self.turns * 90)
        vs.pix_fmt = "yuv444p" if self.odd else "yuv420p"
        vs.time_base = time_base
        vs.codec_context.time_base = time_base
        vs.options = {"crf": str(int(crf)), "preset": preset}
        self.video = vs
        self.time_base = time_base
        self.audio_note: Optional[str] = None
        self._audio_in = None
        self._pending: list = []  # one packet per audio stream, waiting for its time
        if audio:
            self._setup_audio(source)

    # -- audio ------------------------------------------------------------------------
    def _setup_audio(self, source: Path) -> None:
        import av

        c = av.open(str(source), "r")
        if not c.streams.audio:
            c.close()
            return
        self._audio_in = c
        self._map = {}
        for s in c.streams.audio:
            name = s.codec_context.name
            if name in MP4_AUDIO:
                self._map[s.index] = (self.out.add_stream_from_template(s), None)
            else:  # e.g. PCM or Vorbis: re-encode
                enc = self.out.add_stream("aac", rate=s.codec_context.sample_rate or 48000)
                self._map[s.index] = (enc, av.AudioResampler(format="fltp", layout=enc.codec_context.layout,
                                                             rate=enc.codec_context.sample_rate))
                self.audio_note = f"audio {name} re-encoded to AAC (the MP4 container cannot hold it)"
        self._packets = c.demux(c.streams.audio)
        self._next = self._read_audio()

    def _read_audio(self):
        try:
            while True:
                pkt = next(self._packets)
                if pkt.dts is not None and pkt.size:
                    return pkt
        except StopIteration:
            return None
        except Exception:  # noqa: BLE001  (a truncated audio track ends where it breaks)
            return None

    def _write_audio(self, until: Optional[float]) -> None:
        while self._audio_in is not None and self._next is not None:
            pkt = self._next
            t = float(pkt.pts * pkt.time_base) if pkt.pts is not None else float(pkt.dts * pkt.time_base)
            if until is not None and t > until:
                return
            stream, resampler = self._map[pkt.stream.index]
            if resampler is None:
                pkt.stream = stream
                self.out.mux(pkt)
            else:
                for frame in pkt.decode():
                    for r in resampler.resample(frame):
                        r.pts = None
                        self.out.mux(stream.encode(r))
            self._next = self._read_audio()

    # -- video ------------------------------------------------------------------------
    def write(self, rgb: np.ndarray, *, pts: int) -> None:
        """One frame [H,W,3] uint8 at `pts` (source time base)."""
        import av

        if self.turns:
            rgb = np.rot90(rgb, k=-self.turns)  # back to the stored orientation
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts = int(pts)
        frame.time_base = self.time_base
        self.out.mux(self.video.encode(frame))
        self._write_audio(float(pts * self.time_base))

    def commit(self) -> Path:
        """Flush encoders, write the rest of the audio, close and rename to `dest`."""
        self.out.mux(self.video.encode(None))
        self._write_audio(None)
        for stream, resampler in getattr(self, "_map", {}).values():
            if resampler is not None:
                self.out.mux(stream.encode(None))
        self.out.close()
        self._close_audio()
        os.chmod(self.tmp, 0o644)
        os.replace(self.tmp, self.dest)
        return self.dest

    def _close_audio(self) -> None:
        if self._audio_in is not None:
            self._audio_in.close()
            self._audio_in = None

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, *exc) -> None:
        if self.tmp.exists():  # not committed: nothing is left behind
            with contextlib.suppress(Exception):
                self.out.close()
            self._close_audio()
            with contextlib.suppress(OSError):
                self.tmp.unlink()
