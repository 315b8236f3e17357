"""The live camera feed: one WebSocket session's protocol, without the handshake (docs/live.md).

The route (`service.routes.live`) checks the handshake (Origin, the session cap, a key in the
headers), accepts, and hands the socket to `LiveSession.run`:

- the first text message is the JSON settings (`LiveConfig`); the answer is `{"ready": true,
  "settings": ...}` or an error message and a close code;
- each binary message is one frame. The session keeps only the newest frame that has not been
  started: a frame arriving while one is being stylized replaces the waiting one, which is
  dropped and counted. So latency stays at most about two frame times however fast the client
  sends, and no queue builds up.
- for each frame it finishes it sends `{"frame": N, "dropped": D, ...timings}` and then the
  stylized frame as one binary message;
- a later text message changes the settings (only the fields it names).

Frames go through the same engine as POST /stylize and the jobs, one at a time per session, so
a live stream holds at most one place in the engine's queue: it shares the device as one more
client does, never by flooding it. Decoding, the stabiliser and encoding run in threads, off
the event loop. Failures are domain errors; `describe` (service.errors.websocket_error) turns
each into its JSON message and close code.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState
from torch import Tensor

from media.controls import check_controls, invalid
from media.defaults import DEFAULT_SIZE, DEFAULT_STABILITY
from media.imaging import (
    ImageLimits,
    ImageTooLargeError,
    OutputFormat,
    StyleInput,
    check_prepared_size,
    encode_image,
    header_pixels,
    open_image,
)
from models import images
from models.errors import DomainError, InvalidInputError
from models.model import StyleMix
from models.video import LIVE, Pending, Stabilizer, placed_mix, with_strength
from service import metrics
from service.caps import OpenCounts
from service.engine import EngineClosedError, StylizeItem
from service.registry import StyleRegistry, style_image
from service.security import Caller
from service.stylizer import Stylizer

log = logging.getLogger("service.live")

# A settings message is a few fields; a longer text is refused unread, as it arrives.
MAX_TEXT_BYTES = 4096
# Settings changes waiting for the frame in progress: more are refused, not queued.
MAX_PENDING_SETTINGS = 4
# Errors after which the stream cannot go on: it is closed after their message.
FATAL_FRAME_ERRORS = (ImageTooLargeError, EngineClosedError)


class LiveBusyError(DomainError):
    """ADAIN_LIVE_MAX_SESSIONS streams are open: the handshake is refused, retry later (503)."""


class LiveFailedError(DomainError):
    """A bug broke the stream (500, logged): the client may open another."""


class LiveIdleError(DomainError):
    """No message for ADAIN_LIVE_IDLE_TIMEOUT_S: the stream is closed (408)."""


class LiveConfig(BaseModel):
    """A live stream's settings: the first message sets them, later ones change some."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    style_id: str = Field(min_length=1, max_length=200, description="a registered style")
    # alpha and style_size are checked with every entry point's controls (`parse_config`).
    alpha: float = Field(1.0, description="content-style trade-off")
    # /stylize's and /jobs' content_size; `size` on the wire, as the clients send it.
    content_size: int = Field(
        256, ge=16, alias="size", description="shorter side the frames are stylized at"
    )
    # /stylize's default, so that both share the style statistics' cache.
    style_size: int = Field(DEFAULT_SIZE, description="the style's shorter side; 0 keeps it")
    stabilize: bool = Field(True, description="temporal stabilisation (previous frames only)")
    stability: float = Field(
        DEFAULT_STABILITY,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="with stabilize: 0 each frame on its own (most detail) to 1 the most stable",
    )
    model: str | None = Field(
        None,
        max_length=40,
        description="full or lite, among the models the service loaded (ADAIN_MODELS); "
        "default ADAIN_MODEL",
    )
    format: Literal["jpeg", "webp"] = "jpeg"
    quality: int = Field(80, ge=1, le=100, description="JPEG/WebP quality of the frames sent")
    key: str | None = Field(
        None,
        max_length=500,
        repr=False,
        description="API key (browsers cannot set WebSocket headers)",
    )

    def public(self, model: str) -> dict[str, object]:
        """The settings as the server answers them: never the key; the model that answers."""
        return self.model_dump(exclude={"key"}, by_alias=True) | {"model": model}


@dataclass(frozen=True)
class LiveLimits:
    max_frame_bytes: int
    max_size: int  # the largest `size`
    idle_timeout_s: float
    first_message_timeout_s: float  # ADAIN_LIVE_AUTH_TIMEOUT_S: the settings (and key) come first
    images: ImageLimits  # max_image_pixels: the live frame limit; max_output_pixels: after resizing


class LiveSessions:
    """How many live streams this process has open, in all and per caller; past either cap a
    stream is refused (`LiveBusyError` 503, `CapReachedError` 429)."""

    def __init__(self, limit: int, per_caller: int) -> None:
        self.limit = limit
        self.open = 0
        self.callers = OpenCounts(
            per_caller, "live streams", "ADAIN_LIVE_MAX_SESSIONS_PER_KEY", retry_after_s=5
        )

    def check(self, identity: str | None = None) -> None:
        """Raises when no stream could be taken now (by `identity`, when given)."""
        if self.open >= self.limit:
            raise LiveBusyError(
                f"{self.open} live streams are open, the limit of this server "
                "(ADAIN_LIVE_MAX_SESSIONS); retry later"
            )
        if identity is not None:
            self.callers.check(identity)

    def take(self, identity: str) -> None:
        self.check(identity)
        self.callers.take(identity)
        self.open += 1
        metrics.LIVE_STREAMS.set(self.open)

    def release(self, identity: str) -> None:
        self.callers.release(identity)
        self.open -= 1
        metrics.LIVE_STREAMS.set(self.open)


def check_text_size(text: str) -> None:
    if len(text) > MAX_TEXT_BYTES or len(text.encode()) > MAX_TEXT_BYTES:
        raise InvalidInputError(f"settings message over {MAX_TEXT_BYTES} bytes", "settings")


def parse_config(text: str, current: LiveConfig | None, max_size: int) -> LiveConfig:
    """The settings a text message asks for: all of them in the first message, a change of
    some (merged into `current`) later. Errors name the field."""
    check_text_size(text)
    try:
        given = json.loads(text)
    except ValueError:
        raise InvalidInputError("text messages must be JSON settings", "settings") from None
    if not isinstance(given, dict):
        raise InvalidInputError("the settings must be a JSON object", "settings")
    merged = {**(current.model_dump(by_alias=True) if current else {}), **given}
    try:
        config = LiveConfig.model_validate(merged)
    except ValidationError as exc:
        raise invalid(exc, secrets=("key",)) from None
    check_controls(styles=1, alpha=config.alpha, style_size=config.style_size)
    if config.content_size > max_size:
        raise InvalidInputError(
            f"size: {config.content_size} is over this server's limit of {max_size} "
            "(ADAIN_LIVE_MAX_SIZE)",
            "size",
        )
    return config


def decode_frame(data: bytes, size: int, limits: ImageLimits) -> Tensor:
    """(1, 3, H, W) in [0, 1] with the shorter side `size`, from one JPEG, WebP or PNG frame."""
    try:
        upright = images.to_rgb(open_image(data, "frame", limits))
    except ImageTooLargeError:  # the image limit applied here is the live one
        pixels = header_pixels(data)
        raise ImageTooLargeError(
            f"frame: {f'{pixels} pixels' if pixels else 'too many pixels'}; the limit is "
            f"{limits.max_image_pixels} (ADAIN_LIVE_MAX_FRAME_PIXELS)",
            "frame",
        ) from None
    check_prepared_size(upright.size, size, False, "size", limits)
    return images.rgb_to_tensor(upright, size)


def prepare_frame(
    data: bytes, size: int, limits: ImageLimits, stabilizer: Stabilizer | None
) -> tuple[Tensor, Pending | None]:
    """The decoded frame and, with the stabiliser on, its first half (`Stabilizer.begin`):
    one hand-over to the threads for both."""
    content = decode_frame(data, size, limits)
    return content, None if stabilizer is None else stabilizer.begin(content)


@dataclass
class ReceivedFrame:
    """A camera frame as it arrived (`media.video.Frame` is a decoded video frame)."""

    index: int  # counts the client's frames from 0
    data: bytes
    received: float  # time.perf_counter() when it arrived


@dataclass
class LiveStyle:
    """The settings in force and what they make: the mix for the engine, the stabiliser."""

    config: LiveConfig
    mix: StyleMix
    model: str  # the network `config.model` names (None there: the service's default)
    stabilizer: Stabilizer | None = None  # made at the first frame; it restarts at a new size


Describe = Callable[[DomainError], tuple[dict[str, object], int]]


class LiveSession:
    def __init__(
        self,
        socket: WebSocket,
        stylizer: Stylizer,
        registry: StyleRegistry,
        limits: LiveLimits,
        describe: Describe,
        caller: Caller | None = None,
        authorize: Callable[[str | None], Awaitable[Caller]] | None = None,
    ) -> None:
        """`authorize(key)`: raises unless the first message's key may stream; None when the
        handshake's headers already carried a valid key (or keys are off)."""
        self.socket = socket
        self.stylizer = stylizer
        self.registry = registry
        self.limits = limits
        self.describe = describe
        self.authorize = authorize
        self.caller = caller  # whose style names the stream uses; set by `authorize` otherwise
        self.style: LiveStyle | None = None
        self.waiting: ReceivedFrame | None = None  # the newest frame not started yet
        self.settings_changes: list[str] = []
        self.received = 0  # binary messages so far: the next frame's index
        self.dropped = 0
        self.wake = asyncio.Event()
        self.send_lock = asyncio.Lock()  # a result's JSON and its image stay together
        self.closed = False

    async def run(self) -> None:
        try:
            if not await self.start():
                return
            reader = asyncio.create_task(self.read())
            worker = asyncio.create_task(self.work())
            try:
                await asyncio.wait({reader, worker}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                # The client has gone or the stream is closed: a frame in the engine's queue
                # is dropped there (its caller is canceled), not computed for no one.
                for task in (reader, worker):
                    task.cancel()
                await asyncio.gather(reader, worker, return_exceptions=True)
                for task in (reader, worker):
                    if not task.cancelled() and (error := task.exception()) is not None:
                        raise error
        except WebSocketDisconnect:
            pass
        except Exception:
            log.exception("live stream failed")
            await self.fail(LiveFailedError("internal server error"), fatal=True)

    # --- messages from the client -----------------------------------------------------------

    async def receive(
        self, timeout_s: float | None = None, setting: str = "ADAIN_LIVE_IDLE_TIMEOUT_S"
    ) -> dict[str, object]:
        timeout_s = timeout_s or self.limits.idle_timeout_s
        try:
            message = await asyncio.wait_for(self.socket.receive(), timeout_s)
        except TimeoutError:
            raise LiveIdleError(
                f"no message for {timeout_s:g} s ({setting}); the stream is closed"
            ) from None
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(int(message.get("code", 1000)))
        return message

    async def start(self) -> bool:
        """The first message: the settings (and the key). False when the stream was closed."""
        try:
            message = await self.receive(
                self.limits.first_message_timeout_s, "ADAIN_LIVE_AUTH_TIMEOUT_S"
            )
            text = message.get("text")
            if not isinstance(text, str):
                raise InvalidInputError(
                    "the first message must be the JSON settings (text), not a frame", "settings"
                )
            config = parse_config(text, None, self.limits.max_size)
            if self.authorize is not None:
                self.caller = await self.authorize(config.key)
            self.style = await self.prepare(config, None)
        except DomainError as error:
            await self.fail(error, fatal=True)
            return False
        await self.send_json({"ready": True, "settings": config.public(self.style.model)})
        return True

    async def read(self) -> None:
        """Reads every message as it arrives, so that the newest frame is always known."""
        while not self.closed:
            try:
                message = await self.receive()
            except LiveIdleError as error:
                await self.fail(error, fatal=True)
                return
            data = message.get("bytes")
            if data is None:
                text = str(message.get("text") or "")
                try:  # checked as it arrives: nothing large or unbounded waits in memory
                    check_text_size(text)
                    if len(self.settings_changes) >= MAX_PENDING_SETTINGS:
                        raise InvalidInputError(
                            f"{MAX_PENDING_SETTINGS} settings changes are waiting already; send "
                            "the next once one is answered",
                            "settings",
                        )
                except DomainError as error:
                    await self.fail(error, fatal=False)
                    continue
                self.settings_changes.append(text)
            else:
                index = self.received
                self.received += 1
                if len(data) > self.limits.max_frame_bytes:
                    await self.fail(
                        ImageTooLargeError(
                            f"frame {index}: {len(data)} bytes; the limit is "
                            f"{self.limits.max_frame_bytes} (ADAIN_LIVE_MAX_FRAME_BYTES)",
                            "frame",
                        ),
                        fatal=True,
                    )
                    return
                if self.waiting is not None:
                    self.dropped += 1
                    metrics.LIVE_FRAMES.labels("dropped").inc()
                self.waiting = ReceivedFrame(index, data, time.perf_counter())
            self.wake.set()

    # --- the work ---------------------------------------------------------------------------

    async def work(self) -> None:
        while not self.closed:
            await self.wake.wait()
            self.wake.clear()
            while self.settings_changes:
                await self.change_settings(self.settings_changes.pop(0))
            frame, self.waiting = self.waiting, None
            if frame is not None:
                try:
                    await self.process(frame)
                except DomainError as error:
                    metrics.LIVE_FRAMES.labels("failed").inc()
                    await self.fail(
                        error, isinstance(error, FATAL_FRAME_ERRORS), {"failed_frame": frame.index}
                    )

    async def change_settings(self, text: str) -> None:
        assert self.style is not None
        try:
            config = parse_config(text, self.style.config, self.limits.max_size)
            self.style = await self.prepare(config, self.style)
        except DomainError as error:
            await self.fail(error, fatal=False)  # the previous settings stay
            return
        await self.send_json({"ready": True, "settings": config.public(self.style.model)})

    async def prepare(self, config: LiveConfig, current: LiveStyle | None) -> LiveStyle:
        """The mix for `config`: the style's statistics from the cache or the engine. The
        stabiliser starts again: its previous output is of the old settings."""
        model = self.stylizer.check_model(config.model)
        if current is not None and (
            current.config.style_id,
            current.config.style_size,
            current.model,
        ) == (config.style_id, config.style_size, model):
            mean, std = current.mix.mean, current.mix.std
        else:
            owner = None if self.caller is None else self.caller.owner
            data = await style_image(self.registry, config.style_id, owner, "style_id")
            stats, _, _ = await self.stylizer.style_statistics(
                StyleInput(data, "style_id"), config.style_size, False, model=model
            )
            mean, std = stats.mean, stats.std
        return LiveStyle(config, StyleMix(mean, std, torch.ones(1), alpha=config.alpha), model)

    async def process(self, frame: ReceivedFrame) -> None:
        assert self.style is not None
        style = self.style
        started = time.perf_counter()
        if style.config.stabilize and style.stabilizer is None:
            style.stabilizer = Stabilizer(None, with_strength(LIVE, style.config.stability))
        stabilizer = style.stabilizer if style.config.stabilize else None
        content, pending = await self.stylizer.decode_budget.decode(
            header_pixels(frame.data),
            "frame",
            prepare_frame,
            frame.data,
            style.config.content_size,
            self.limits.images,
            stabilizer,
        )
        decoded = time.perf_counter()
        if stabilizer is not None and pending is not None:
            stylized, encoded, network_ms = await self.stabilized(style, stabilizer, pending)
            done = time.perf_counter()
        else:
            item = StylizeItem(content, style.mix, style.model)
            result = await self.stylizer.engine.stylize(item)
            stylized, network_ms = result.value, result.compute_ms
            done = time.perf_counter()
            encoded = await run_in_threadpool(
                encode_image, stylized, OutputFormat(style.config.format), style.config.quality
            )
        finished = time.perf_counter()
        header = {
            "frame": frame.index,
            "model": style.model,
            "dropped": self.dropped,
            "width": stylized.shape[-1],
            "height": stylized.shape[-2],
            "wait_ms": ms(frame.received, started),  # waiting for the previous frame
            "decode_ms": ms(started, decoded),  # (+ the stabiliser's first half)
            "network_ms": round(network_ms, 1),  # the engine's time for this frame's batch
            # queue + network (+ the stabiliser's second half and, with it, the encoding)
            "stylize_ms": ms(decoded, done),
            "encode_ms": ms(done, finished),  # 0 when stabilised: it is in stylize_ms
            "server_ms": ms(frame.received, finished),  # arrival to sending
        }
        async with self.send_lock:
            if not self.closed:
                await self.socket.send_json(header)
                await self.socket.send_bytes(encoded)
        metrics.LIVE_FRAMES.labels("stylized").inc()

    async def stabilized(
        self, style: LiveStyle, stabilizer: Stabilizer, pending: Pending
    ) -> tuple[Tensor, bytes, float]:
        """The stabiliser's output for a frame it has begun (`prepare_frame`), encoded, and
        the network's time. Its second half runs with the encoding in a thread (one hand-over
        each way, as the unstabilised path's decoding and encoding have), after the network
        in the engine."""
        outputs, network_ms = [], 0.0
        try:
            for canvas, placement in pending.inputs:
                item = StylizeItem(canvas, placed_mix(style.mix, placement), style.model)
                result = await self.stylizer.engine.stylize(item)
                outputs.append(result.value)
                network_ms += result.compute_ms
        except BaseException:
            stabilizer.reset()  # it tracked a frame that will not be finished
            raise
        output_format = OutputFormat(style.config.format)

        def finish_and_encode() -> tuple[Tensor, bytes]:
            output = stabilizer.finish(pending, outputs)
            return output, encode_image(output, output_format, style.config.quality)

        stylized, encoded = await run_in_threadpool(finish_and_encode)
        return stylized, encoded, network_ms

    # --- messages to the client -------------------------------------------------------------

    async def send_json(self, message: dict[str, object]) -> None:
        async with self.send_lock:
            if not self.closed:
                await self.socket.send_json(message)

    async def fail(
        self, error: DomainError, fatal: bool, extra: dict[str, object] | None = None
    ) -> None:
        """The error's message; then, when the stream cannot go on, the close."""
        message, code = self.describe(error)
        message.update(extra or {})
        if fatal:
            await self.close(code, message)
        else:
            await self.send_json(message)

    async def close(self, code: int, message: dict[str, object]) -> None:
        async with self.send_lock:
            if self.closed or self.socket.application_state != WebSocketState.CONNECTED:
                return
            self.closed = True
            self.wake.set()
            try:
                await self.socket.send_json(message)
                # A close reason has at most 123 bytes.
                reason = str(message.get("detail", "")).encode()[:120].decode(errors="ignore")
                await self.socket.close(code, reason)
            except (WebSocketDisconnect, RuntimeError, OSError):
                pass  # the client has gone already


def ms(start: float, end: float) -> float:
    return round((end - start) * 1000, 1)
