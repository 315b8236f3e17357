"""WebSocket /live: the camera feed, stylized frame by frame (protocol in docs/live.md).

The handshake is checked before it is accepted: the Origin (`service.security.OriginGuard`),
the cap on open streams, and a key sent in the headers. Refusals are HTTP answers with the JSON
error body (503 + Retry-After at the cap). A key in the first message is checked by the session,
which then runs the protocol (`service.live.LiveSession`).
"""

from __future__ import annotations

from fastapi import APIRouter, WebSocket

from media.imaging import ImageLimits
from models.errors import DomainError
from service.deps import Services
from service.errors import refuse_handshake, websocket_error
from service.live import LiveLimits, LiveSession, LiveSessions
from service.security import Keys, Role, admit, presented_key

router = APIRouter(tags=["live"])


def live_limits(services: Services) -> LiveLimits:
    settings = services.settings
    return LiveLimits(
        max_frame_bytes=settings.live_max_frame_bytes,
        max_size=settings.live_max_size,
        idle_timeout_s=settings.live_idle_timeout_s,
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
    try:
        if not key_in_message:
            caller = await admit(websocket, Role.user)
        sessions.take()
    except DomainError as error:
        await refuse_handshake(websocket.scope, websocket.receive, websocket.send, error)
        return
    try:
        await websocket.accept()
        session = LiveSession(
            websocket,
            services.stylizer,
            services.registry,
            live_limits(services),
            websocket_error,
            caller=caller,
            authorize=(lambda key: admit(websocket, Role.user, key)) if key_in_message else None,
        )
        await session.run()
    finally:
        sessions.release()
