"""WebSocket /live: the camera feed, stylized frame by frame (protocol in docs/live.md).

The handshake is checked before it is accepted: the Origin (`service.security.OriginGuard`),
the caps on open streams (in all, and per key or address), and a key sent in the headers.
Refusals are HTTP answers with the JSON error body (503 or 429 + Retry-After at a cap). A key
in the first message is checked by the session (which must send it within
ADAIN_LIVE_AUTH_TIMEOUT_S), and only then does the stream take its place; the session then
runs the protocol (`service.live.LiveSession`).
"""

from __future__ import annotations

from fastapi import APIRouter, WebSocket

from media.imaging import ImageLimits
from models.errors import DomainError
from service.deps import Services
from service.errors import refuse_handshake, websocket_error
from service.live import LiveLimits, LiveSession, LiveSessions
from service.security import Caller, Keys, Role, admit, client_address, presented_key

router = APIRouter(tags=["live"])


def live_limits(services: Services) -> LiveLimits:
    settings = services.settings
    return LiveLimits(
        max_frame_bytes=settings.live_max_frame_bytes,
        max_size=settings.live_max_size,
        idle_timeout_s=settings.live_idle_timeout_s,
        first_message_timeout_s=settings.live_auth_timeout_s,
        images=ImageLimits(settings.live_max_frame_pixels, services.limits.max_output_pixels),
    )


@router.websocket("/live")
async def live(websocket: WebSocket) -> None:
    services: Services = websocket.app.state.services
    sessions: LiveSessions = websocket.app.state.live_sessions
    keys: Keys = websocket.app.state.keys
    # Browsers cannot set headers on a WebSocket: their key comes in the first message.
    key_in_message = keys.enabled and presented_key(websocket) is None
    caller = None
    held: list[str] = []  # the identity whose place this stream holds, once it holds one
    try:
        if key_in_message:
            # Counted once per address as it opens, whatever key comes (docs/live.md); it
            # takes a place only once its key is known, so silent sockets hold none.
            await services.rate_limiter.check(client_address(websocket))
            sessions.check()
        else:
            caller = await admit(websocket, Role.user)
            sessions.take(caller.identity)
            held.append(caller.identity)
    except DomainError as error:
        await refuse_handshake(websocket.scope, websocket.receive, websocket.send, error)
        return

    async def authorize(key: str | None) -> Caller:
        authorized = await admit(websocket, Role.user, key)
        sessions.take(authorized.identity)
        held.append(authorized.identity)
        return authorized

    try:
        await websocket.accept()
        session = LiveSession(
            websocket,
            services.stylizer,
            services.registry,
            live_limits(services),
            websocket_error,
            caller=caller,
            authorize=authorize if key_in_message else None,
        )
        await session.run()
    finally:
        for identity in held:
            sessions.release(identity)
