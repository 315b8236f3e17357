"""Hostile video files for tests and benchmarks (issue 33), made with PyAV and Pillow: frames
that grow past what the header says, audio far longer than the video, a GIF whose logical
screen is huge, thousands of 1 x 1 frames, a concat list naming a file.

    data = growing_mjpeg([(64, 48)] + [(4000, 4000)] * 6)   # bytes of a Matroska file
"""

from __future__ import annotations

import io
import struct
from fractions import Fraction

import av
import numpy as np
from PIL import Image

# A concat list naming `video`, the name POST /jobs saves an upload under: it names itself.
FFCONCAT_SELF = b"ffconcat version 1.0\nfile video\n"


def jpeg(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (90, 120, 200)).save(buffer, "JPEG", quality=50)
    return buffer.getvalue()


def growing_mjpeg(sizes: list[tuple[int, int]], rate: int = 10) -> bytes:
    """Motion-JPEG in Matroska whose header (and first frame) say sizes[0]; each frame is a
    JPEG of its own size, as the codec allows."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="matroska") as out:
        stream = out.add_stream("mjpeg", rate=rate)
        stream.width, stream.height = sizes[0]
        stream.pix_fmt = "yuvj420p"
        for index, (width, height) in enumerate(sizes):
            packet = av.Packet(jpeg(width, height))
            packet.stream, packet.pts, packet.dts = stream, index, index
            packet.time_base = Fraction(1, rate)
            out.mux(packet)
    return buffer.getvalue()


def with_long_audio(
    container: str, audio_codec: str, audio_s: float, sample_rate: int, frames: int = 2
) -> bytes:
    """`frames` 32 x 32 Motion-JPEG frames at 10 frames/s and `audio_s` of silent audio."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as out:
        video = out.add_stream("mjpeg", rate=10)
        video.width = video.height = 32
        video.pix_fmt = "yuvj420p"
        sound = out.add_stream(audio_codec, rate=sample_rate, layout="mono")
        for index in range(frames):
            picture = np.full((32, 32, 3), index * 40, np.uint8)
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            frame.pts = index
            for packet in video.encode(frame):
                out.mux(packet)
        for packet in video.encode(None):
            out.mux(packet)
        sample_format = sound.codec_context.format.name
        chunk = sound.codec_context.frame_size or 4096
        dtype = np.int16 if sample_format.startswith("s16") else np.float32
        silence = np.zeros((1, chunk), dtype)
        for start in range(0, int(audio_s * sample_rate), chunk):
            piece = av.AudioFrame.from_ndarray(silence, format=sample_format, layout="mono")
            piece.sample_rate, piece.pts = sample_rate, start
            for packet in sound.encode(piece):
                out.mux(packet)
        for packet in sound.encode(None):
            out.mux(packet)
    return buffer.getvalue()


def big_screen_gif(width: int, height: int) -> bytes:
    """A GIF of small frames whose logical screen (what its decoder allocates) is width x
    height."""
    buffer = io.BytesIO()
    frames = [Image.new("P", (16, 16), index) for index in range(3)]
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    data = bytearray(buffer.getvalue())
    data[6:10] = struct.pack("<HH", width, height)
    return bytes(data)


def tiny_frames_gif(frames: int) -> bytes:
    """`frames` 1 x 1 frames (alternating colours: Pillow merges equal neighbours)."""
    colours = ((0, 0, 0), (255, 255, 255))
    pictures = [Image.new("RGB", (1, 1), colours[index % 2]) for index in range(frames)]
    buffer = io.BytesIO()
    pictures[0].save(buffer, "GIF", save_all=True, append_images=pictures[1:], duration=20, loop=0)
    return buffer.getvalue()
