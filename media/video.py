"""Video files in and out with PyAV (FFmpeg's libraries): probing and limits, upright frames as
tensors, H.264 segments, and the final MP4 with the input's timing and audio.

Input: the containers of `DEMUXERS` (MP4/MOV/3GP, Matroska/WebM, GIF, AVI) with a video stream
(H.264, HEVC, VP8, VP9, AV1, ...); FFmpeg's other demuxers are never tried: some follow names
in the file (concat, playlists, image sequences). Frames are turned upright (the display matrix
of phone videos), resized as images are (`models.images.rgb_to_tensor`: shorter side to
`content_size`) and cut to even sides (yuv420p halves the chroma planes: at most one row and one
column go).

Output: MP4, H.264 yuv420p at a constant quality (CRF), moov atom first (faststart: players start
before the download ends), every input frame with its own timestamp (so the frame count, rate and
variable timing are kept), the audio track copied (AAC, MP3) or re-encoded to AAC.

A job writes its frames as a run of short MP4 segments (`SegmentWriter`), each closed at a
checkpoint, and `finalize` joins them without re-encoding: a process killed mid-job loses only
the open segment. Segments have no B-frames, so that decode order is presentation order and the
join is a plain concatenation of packets.
"""

from __future__ import annotations

import errno
import heapq
import struct
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.error
import numpy as np
from av.video.reformatter import ColorRange, Colorspace
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from models import images
from models.errors import DomainError, InvalidInputError
from models.model import MIN_SIDE

FIELD = "video"
BT709 = 1  # ITU-T H.273 code of BT.709 primaries and transfer
# Audio codecs an MP4 carries that every player plays: copied as they are; others -> AAC.
COPIED_AUDIO = {"aac", "mp3"}
AAC_BIT_RATE = 192_000
# The only FFmpeg demuxers a file is probed with (their names as FFmpeg lists them): the
# containers documented in docs/video.md. None of them opens another file or URL.
DEMUXERS = ("mov", "mp4", "m4a", "3gp", "3g2", "mj2", "matroska", "webm", "gif", "avi")
INPUT_OPTIONS = {"format_whitelist": ",".join(DEMUXERS), "protocol_whitelist": "file"}
# A stream ending this much earlier than its container says is a truncated file.
TRUNCATION_TOLERANCE = 0.05


class UnsupportedVideoError(DomainError):
    """An upload that is not a video FFmpeg can read, has no video stream, or is truncated."""


class VideoTooLargeError(DomainError):
    """A video over ADAIN_MAX_VIDEO_FRAMES, ADAIN_MAX_VIDEO_DURATION_S,
    ADAIN_MAX_VIDEO_FRAME_PIXELS or ADAIN_MAX_JOB_PIXELS."""


@dataclass(frozen=True)
class VideoLimits:
    max_frames: int
    max_duration_s: float
    max_frame_pixels: int  # per input frame, as coded
    max_job_pixels: int  # frames x output pixels: the work a job may ask for


@dataclass(frozen=True)
class VideoInfo:
    """What `probe` learnt of a file. width, height: upright (after rotation), as coded."""

    width: int
    height: int
    frames: int  # video packets: the frames to stylize (a job counts the decoded ones exactly)
    rate: Fraction  # average frame rate
    time_base: Fraction  # of the stream's timestamps, which the output keeps
    duration_s: float
    rotation: int  # degrees counter-clockwise the display turns the coded frames
    audio_codec: str | None
    codec: str


def _unreadable(detail: str) -> UnsupportedVideoError:
    return UnsupportedVideoError(f"{FIELD}: {detail}", FIELD)


def open_input(path: Path) -> av.container.InputContainer:
    """The upload opened by one of `DEMUXERS` (anything else: `UnsupportedVideoError`)."""
    try:
        return av.open(str(path), "r", container_options=INPUT_OPTIONS)
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        still = still_image_format(path)
        if still is not None:
            raise _unreadable(
                f"a still image ({still}), not a video; POST /stylize takes images"
            ) from None
        raise _unreadable(
            f"not a video file FFmpeg can read ({exc.__class__.__name__}); the containers "
            "read are MP4, MOV, 3GP, Matroska, WebM, GIF and AVI"
        ) from None


def still_image_format(path: Path) -> str | None:
    """Pillow's name for the image format of the file's header (PNG, JPEG...), or None."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return image.format
    except (Image.DecompressionBombError, UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None


def too_many_pixels(what: str, width: int, height: int, limit: int) -> VideoTooLargeError:
    return VideoTooLargeError(
        f"{FIELD}: {what} {width} x {height} = {width * height} pixels; the limit is "
        f"{limit} (ADAIN_MAX_VIDEO_FRAME_PIXELS)",
        FIELD,
    )


def limit_decoder(stream: av.VideoStream, max_pixels: int) -> None:
    """The decoder refuses a frame over `max_pixels` before it allocates it (FFmpeg's
    max_pixels): memory is bounded by the limit, whatever the file's frames declare."""
    stream.codec_context.options = {"max_pixels": str(max_pixels)}


def decode_error(
    exc: av.error.FFmpegError, stream: av.VideoStream, frame: int, max_pixels: int
) -> DomainError:
    """Why decoding stopped: a frame whose size the decoder refused (FFmpeg then leaves the
    context without a size: over `max_pixels`, or over what it can allocate at all), or
    damage."""
    context = stream.codec_context
    if exc.errno == errno.EINVAL and context.width == 0 and context.height == 0:
        return VideoTooLargeError(
            f"{FIELD}: frame {frame} is larger than the limit of {max_pixels} pixels "
            "(ADAIN_MAX_VIDEO_FRAME_PIXELS)",
            FIELD,
        )
    return _unreadable(f"the video stream is damaged ({exc.__class__.__name__})")


def gif_screen(path: Path) -> tuple[int, int]:
    """A GIF's logical screen (width, height): the size its decoder gives every frame."""
    with path.open("rb") as file:
        header = file.read(10)
    return struct.unpack("<HH", header[6:10]) if len(header) == 10 else (0, 0)


def rotation_of(frame: av.VideoFrame) -> int:
    """The display rotation in degrees counter-clockwise (the display matrix), 0/90/180/270."""
    return round(frame.rotation / 90) % 4 * 90


def probe(path: Path, limits: VideoLimits) -> VideoInfo:
    """Opens the file, demuxes every packet of its first video stream and of its first audio
    stream (the streams a job keeps; cheap: no decoding) and decodes the first frame. Refuses
    files that are not videos, have no video stream, are truncated (fewer packets, or a
    shorter stream, than the container declares), cannot be decoded, or are over the limits
    (the duration: of the longer of the two streams)."""
    container = open_input(path)
    with container:
        if not container.streams.video:
            raise _unreadable("the file has no video stream")
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        if container.format.name == "gif":
            width, height = max((width, height), gif_screen(path))
        if width * height > limits.max_frame_pixels:
            raise too_many_pixels("frames of", width, height, limits.max_frame_pixels)
        limit_decoder(stream, limits.max_frame_pixels)
        sound = container.streams.audio[0] if container.streams.audio else None
        audio = sound.codec_context.name if sound is not None else None
        declared = stream.frames
        packets, first = 0, None
        ends: dict[int, float] = {}  # the end of each kept stream's last packet, in seconds
        kept = [stream] if sound is None else [stream, sound]
        try:
            for packet in container.demux(kept):
                if packet.size == 0:  # the demuxer's flush packet
                    continue
                if packet.pts is not None and packet.time_base is not None:
                    end = float((packet.pts + (packet.duration or 0)) * packet.time_base)
                    index = packet.stream.index
                    ends[index] = max(ends.get(index, end), end)
                if packet.stream.index != stream.index:
                    continue
                packets += 1
                if first is None:
                    for frame in packet.decode():
                        first = frame
                        break
                if packets > limits.max_frames:
                    raise VideoTooLargeError(
                        f"{FIELD}: more than {limits.max_frames} frames (ADAIN_MAX_VIDEO_FRAMES)",
                        FIELD,
                    )
            if first is None:  # a decoder that holds frames back (some codecs' delay)
                for frame in stream.codec_context.decode(None):
                    first = frame
                    break
        except av.error.FFmpegError as exc:
            raise decode_error(exc, stream, 0, limits.max_frame_pixels) from None
        if first is None or packets == 0:
            raise _unreadable("no frame of the video stream could be decoded")
        if first.width * first.height > limits.max_frame_pixels:
            raise too_many_pixels("frame 0 is", first.width, first.height, limits.max_frame_pixels)
        if declared and packets < declared:
            raise _unreadable(f"truncated: {packets} of the {declared} frames it declares")
        start = float(stream.start_time * stream.time_base) if stream.start_time else 0.0
        last_end = ends.get(stream.index)
        # The video stream's own duration; else the container's, which covers every stream.
        own_s = float(stream.duration * stream.time_base) if stream.duration else None
        container_s = container.duration / av.time_base if container.duration else None
        played_s = {index: end - start for index, end in ends.items()}
        if own_s and last_end is not None:
            played = last_end - start
            if played < own_s * (1 - TRUNCATION_TOLERANCE) - 0.1:
                raise _unreadable(f"truncated: {played:.2f} s of the {own_s:.2f} s it declares")
        elif container_s and played_s:
            played = max(played_s.values())
            if played < container_s * (1 - TRUNCATION_TOLERANCE) - 0.1:
                raise _unreadable(
                    f"truncated: {played:.2f} s of the {container_s:.2f} s it declares"
                )
        duration = own_s or container_s or played_s.get(stream.index, 0.0)
        longest = max([duration, *played_s.values()])
        if longest > limits.max_duration_s:
            raise VideoTooLargeError(
                f"{FIELD}: {longest:.1f} s (the longer of its video and audio); the limit is "
                f"{limits.max_duration_s:g} s (ADAIN_MAX_VIDEO_DURATION_S)",
                FIELD,
            )
        rate = stream.average_rate or stream.guessed_rate or Fraction(packets, max(duration, 1e-3))
        rotation = rotation_of(first)
        if rotation in (90, 270):
            width, height = height, width
        return VideoInfo(
            width,
            height,
            packets,
            Fraction(rate),
            Fraction(stream.time_base),
            duration,
            rotation,
            audio,
            stream.codec_context.name,
        )


def even_size(height: int, width: int) -> tuple[int, int]:
    """yuv420p needs even sides: an odd one loses its last row or column."""
    return height - height % 2, width - width % 2


def output_size(info: VideoInfo, content_size: int, crop: bool) -> tuple[int, int]:
    """(H, W) of the stylized frames: the images' resize rule, then even sides."""
    return even_size(*images.prepared_size(info.width, info.height, content_size, crop))


def check_output_size(info: VideoInfo, content_size: int, crop: bool, max_pixels: int) -> None:
    height, width = output_size(info, content_size, crop)
    if min(height, width) < MIN_SIDE:
        raise InvalidInputError(
            f"content_size={content_size} makes {width} x {height} pixel frames; the networks "
            f"need at least {MIN_SIDE} pixels per side",
            "content_size",
        )
    if height * width > max_pixels:
        raise InvalidInputError(
            f"content_size={content_size} makes {width} x {height} = {width * height} pixel "
            f"frames; the limit is {max_pixels} pixels (ADAIN_MAX_OUTPUT_PIXELS)",
            "content_size",
        )


def check_cost(info: VideoInfo, content_size: int, crop: bool, max_job_pixels: int) -> None:
    """The job's work, frames x output pixels, within the limit: a small upload (a GIF of
    thousands of 1 x 1 frames) can ask for hours of upscaled frames."""
    height, width = output_size(info, content_size, crop)
    cost = info.frames * height * width
    if cost > max_job_pixels:
        raise VideoTooLargeError(
            f"{FIELD}: {info.frames} frames of {width} x {height} = {cost} pixels to stylize; "
            f"the limit is {max_job_pixels} (ADAIN_MAX_JOB_PIXELS): send fewer frames or a "
            "smaller content_size",
            FIELD,
        )


@dataclass(frozen=True)
class Frame:
    """One decoded frame: upright RGB, and its presentation time in the stream's time base."""

    image: Image.Image
    pts: int
    time_base: Fraction


def upright(frame: av.VideoFrame) -> Image.Image:
    picture = frame.to_image().convert("RGB")
    turns = rotation_of(frame) // 90
    return picture.rotate(90 * turns, expand=True) if turns else picture


def read_frames(path: Path, max_pixels: int) -> Iterator[Frame]:
    """Every frame of the first video stream, upright, with strictly increasing timestamps
    (a missing or repeated one is the previous plus a frame's duration). A frame over
    `max_pixels` (ADAIN_MAX_VIDEO_FRAME_PIXELS) is refused before it is converted."""
    with open_input(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        limit_decoder(stream, max_pixels)
        index = 0
        time_base = Fraction(stream.time_base)
        rate = stream.average_rate or stream.guessed_rate or Fraction(25)
        step = max(1, round(1 / (rate * time_base)))
        previous: int | None = None
        try:
            for frame in container.decode(stream):
                pts = frame.pts
                if pts is None or (previous is not None and pts <= previous):
                    pts = (previous + step) if previous is not None else 0
                previous = pts
                if frame.width * frame.height > max_pixels:
                    size = frame.width, frame.height
                    raise too_many_pixels(f"frame {index} is", *size, max_pixels)
                yield Frame(upright(frame), pts, time_base)
                index += 1
        except av.error.FFmpegError as exc:
            raise decode_error(exc, stream, index, max_pixels) from None


def frame_tensor(frame: Frame, content_size: int, crop: bool) -> Tensor:
    """(1, 3, H, W) in [0, 1] as `/stylize` prepares an image, cut to even sides."""
    tensor = images.rgb_to_tensor(frame.image, content_size, crop)
    height, width = even_size(tensor.shape[-2], tensor.shape[-1])
    return tensor[..., :height, :width].contiguous()


def tensor_to_rgb(result: Tensor) -> np.ndarray:
    """(1, 3, H, W) in [0, 1] -> (H, W, 3) uint8, rounded as images are."""
    return images.to_uint8(result).numpy()


class SegmentWriter:
    """One MP4 segment of H.264 frames (yuv420p, CRF, no B-frames) with given timestamps."""

    def __init__(
        self,
        path: Path,
        size: tuple[int, int],
        time_base: Fraction,
        rate: Fraction,
        crf: int,
        preset: str,
    ) -> None:
        self.path = path
        self.container = av.open(str(path), "w", format="mp4")
        self.stream = self.container.add_stream("libx264", rate=rate)
        self.stream.height, self.stream.width = size
        self.stream.pix_fmt = "yuv420p"
        self.stream.codec_context.time_base = time_base
        self.stream.options = {"crf": str(crf), "preset": preset, "x264-params": "bframes=0"}
        # Converted and tagged as BT.709, limited range: players assume BT.709 for HD and would
        # shift the colours of untagged BT.601 (swscale's default) frames.
        context = self.stream.codec_context
        context.colorspace, context.color_range = Colorspace.ITU709, ColorRange.MPEG
        context.color_primaries = context.color_trc = BT709
        self.frames = 0

    def write(self, rgb: np.ndarray, pts: int) -> None:
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(
            format="yuv420p", dst_colorspace=Colorspace.ITU709, dst_color_range=ColorRange.MPEG
        )
        frame.pts = pts
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        for packet in self.stream.encode(None):
            self.container.mux(packet)
        self.container.close()


@dataclass(frozen=True)
class Segment:
    """A closed segment: its file and the presentation time of its first frame (input's time
    base): the container may shift timestamps, so the join puts them back from this."""

    path: Path
    first_pts: int
    frames: int


def _segment_packets(
    segments: Sequence[Segment], time_base: Fraction, out: av.VideoStream
) -> Iterator[tuple[float, int, av.Packet]]:
    for segment in segments:
        with av.open(str(segment.path), "r") as container:
            stream = container.streams.video[0]
            packets = [p for p in container.demux(stream) if p.size]
            if len(packets) != segment.frames:
                raise RuntimeError(
                    f"{segment.path.name}: {len(packets)} frames of {segment.frames}"
                )
            first = min(p.pts for p in packets)
            shift = round(segment.first_pts * time_base / stream.time_base) - first
            for packet in packets:
                packet.pts += shift
                packet.dts = packet.pts  # no B-frames: decode order is presentation order
                packet.stream = out
                yield float(packet.pts * stream.time_base), 0, packet


def _audio_packets(
    source: av.container.InputContainer, out_container: av.container.OutputContainer
) -> Iterator[tuple[float, int, av.Packet]]:
    """The source's first audio track as packets for `out_container`: copied, or as AAC."""
    audio = source.streams.audio[0]
    if audio.codec_context.name in COPIED_AUDIO:
        out = out_container.add_stream_from_template(audio)
        for packet in source.demux(audio):
            if packet.size == 0 or packet.pts is None:
                continue
            packet.stream = out
            yield float(packet.pts * audio.time_base), 1, packet
        return
    layout = "stereo" if audio.codec_context.channels >= 2 else "mono"
    out = out_container.add_stream("aac", rate=audio.codec_context.sample_rate, layout=layout)
    out.bit_rate = AAC_BIT_RATE
    clock = Fraction(1, audio.codec_context.sample_rate)  # the encoder's time base
    samples = 0
    for frame in [*source.decode(audio), None]:
        if frame is not None:  # a clock of samples: the decoder's may skip or start late
            frame.pts, frame.time_base = samples, clock
            samples += frame.samples
        for packet in out.encode(frame):
            yield float(packet.pts * (packet.time_base or clock)), 1, packet


def finalize(segments: Sequence[Segment], source: Path, output: Path, time_base: Fraction) -> None:
    """Join the segments into `output` (MP4, faststart) with the source's audio, interleaved by
    time, without re-encoding the video."""
    first = segments[0].path
    with (
        av.open(str(first), "r") as template,
        av.open(str(output), "w", format="mp4", options={"movflags": "+faststart"}) as out,
        open_input(source) as src,
    ):
        video = out.add_stream_from_template(template.streams.video[0])
        video.time_base = template.streams.video[0].time_base
        streams = [_segment_packets(segments, time_base, video)]
        if src.streams.audio:
            streams.append(_audio_packets(src, out))
        for _, _, packet in heapq.merge(*streams, key=lambda item: (item[0], item[1])):
            out.mux(packet)


def describe_output(path: Path) -> dict[str, object]:
    """Frames, size, rate and audio codec of a finished file (tests, the command's summary)."""
    with av.open(str(path), "r") as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
    with av.open(str(path), "r") as container:
        stream = container.streams.video[0]
        audio = container.streams.audio[0] if container.streams.audio else None
        return {
            "frames": frames,
            "width": stream.codec_context.width,
            "height": stream.codec_context.height,
            "rate": Fraction(stream.average_rate) if stream.average_rate else None,
            "duration_s": (container.duration or 0) / av.time_base,
            "audio_codec": audio.codec_context.name if audio else None,
            "audio_duration_s": (
                float(audio.duration * audio.time_base) if audio and audio.duration else None
            ),
            "pix_fmt": stream.codec_context.pix_fmt,
            "codec": stream.codec_context.name,
        }
