"""Small real video files for tests and benchmarks, encoded with PyAV: a smooth random picture
panning a few pixels per frame, optionally with a sine tone, a display rotation, odd sides.

    data = make_video(frames=8, width=96, height=64, container="mp4")    # bytes of an MP4
"""

from __future__ import annotations

import io
import tempfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from devkit.images import random_image
from media.video import SegmentWriter

# container -> (video codec, audio codec, pixel format)
FORMATS = {
    "mp4": ("libx264", "aac", "yuv420p"),
    "mov": ("libx264", "aac", "yuv420p"),
    "webm": ("libvpx-vp9", "libopus", "yuv420p"),
    "gif": ("gif", None, "rgb8"),
}
AUDIO_RATE = 48_000


def panning_frames(
    frames: int, width: int, height: int, step: int = 3, seed: int = 0
) -> list[np.ndarray]:
    """(height, width, 3) uint8 windows of a larger random picture moving `step` px a frame."""
    canvas = np.asarray(random_image(width + step * frames + 1, height, seed=seed))
    return [np.ascontiguousarray(canvas[:, i * step : i * step + width]) for i in range(frames)]


def make_video(
    frames: int = 8,
    width: int = 96,
    height: int = 64,
    container: str = "mp4",
    rate: Fraction | int = 12,
    audio: bool = True,
    rotation: int = 0,
    seed: int = 0,
) -> bytes:
    """The bytes of a real encoded clip. `rotation`: display matrix degrees counter-clockwise
    (phone videos: 90 or 270); the audio (a 440 Hz tone) lasts as long as the video."""
    video_codec, audio_codec, pix_fmt = FORMATS[container]
    buffer = io.BytesIO()
    options = {"loop": "0"} if container == "gif" else {}
    with av.open(buffer, "w", format=container, options=options) as out:
        stream = out.add_stream(video_codec, rate=Fraction(rate))
        odd = width % 2 or height % 2
        # x264 cannot code odd sides in 4:2:0; 4:4:4 can (the odd-size inputs of the tests).
        stream.pix_fmt = "yuv444p" if odd and video_codec == "libx264" else pix_fmt
        stream.width, stream.height = width, height
        if video_codec == "libx264":
            stream.options = {"crf": "12", "preset": "veryfast"}
        if video_codec == "libvpx-vp9":
            stream.options = {"crf": "20", "b": "0", "deadline": "realtime", "cpu-used": "8"}
        if rotation:
            stream.set_display_rotation(rotation)
        sound = None
        if audio and audio_codec:
            sound = out.add_stream(audio_codec, rate=AUDIO_RATE, layout="stereo")
        for index, rgb in enumerate(panning_frames(frames, width, height, seed=seed)):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = index
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
        if sound is not None:
            samples = int(AUDIO_RATE * frames / Fraction(rate))
            tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(samples) / AUDIO_RATE)
            chunk = 960
            for start in range(0, samples, chunk):
                piece = np.repeat(tone[None, start : start + chunk], 2, axis=0)
                frame = av.AudioFrame.from_ndarray(
                    piece.astype(np.float32), format="fltp", layout="stereo"
                )
                frame.sample_rate = AUDIO_RATE
                frame.pts = start
                for packet in sound.encode(frame):
                    out.mux(packet)
            for packet in sound.encode(None):
                out.mux(packet)
    return buffer.getvalue()


def truncated(data: bytes, keep: float = 0.6) -> bytes:
    """The first `keep` of a file, as an interrupted upload leaves it."""
    return data[: int(len(data) * keep)]


def faststart(data: bytes) -> bytes:
    """The same MP4 with its index first (as phones and this service write it), so that a
    truncated copy still opens and the truncation must be noticed from the frames."""
    # The muxer re-reads its own file to move the index: a named file, not a buffer.
    with tempfile.TemporaryDirectory() as folder:
        target = Path(folder) / "faststart.mp4"
        with (
            av.open(io.BytesIO(data), "r") as src,
            av.open(str(target), "w", format="mp4", options={"movflags": "+faststart"}) as out,
        ):
            mapping = {s.index: out.add_stream_from_template(s) for s in src.streams}
            for packet in src.demux():
                if packet.size and packet.dts is not None:
                    packet.stream = mapping[packet.stream.index]
                    out.mux(packet)
        return target.read_bytes()


def make_audio_only(seconds: float = 0.5) -> bytes:
    """An M4A file: a real container with an AAC track and no video stream."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as out:
        sound = out.add_stream("aac", rate=AUDIO_RATE, layout="mono")
        samples = int(AUDIO_RATE * seconds)
        tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(samples) / AUDIO_RATE)).astype(np.float32)
        frame = av.AudioFrame.from_ndarray(tone[None], format="flt", layout="mono")
        frame.sample_rate, frame.pts = AUDIO_RATE, 0
        for packet in [*sound.encode(frame), *sound.encode(None)]:
            out.mux(packet)
    return buffer.getvalue()


def coded_as_result(
    frames: list[np.ndarray], crf: int = 18, preset: str = "medium"
) -> list[np.ndarray]:
    """(H, W, 3) uint8 frames after the job's own encoder (4:2:0, the CRF, its look-ahead,
    which codes a frame after those that follow it): what a result of exactly these pixels
    decodes to, so a test compares like with like."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "frames.mp4"
        size = frames[0].shape[:2]
        writer = SegmentWriter(path, size, Fraction(1, 12), Fraction(12), crf, preset)
        for index, rgb in enumerate(frames):
            writer.write(rgb, index)
        writer.close()
        return decode_frames(path.read_bytes())


def decode_frames(data: bytes) -> list[np.ndarray]:
    """Every frame of a file's video stream as (H, W, 3) uint8, as coded (no rotation)."""
    with av.open(io.BytesIO(data), "r") as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
