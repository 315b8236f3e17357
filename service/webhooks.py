"""Job webhooks (docs/jobs.md): `webhook` and `webhook_events` on POST /jobs; deliveries signed
as the Standard Webhooks specification says (`webhook-id`, `webhook-timestamp`,
`webhook-signature`, the `standardwebhooks` package, ADAIN_WEBHOOK_SECRET).

A job's webhook and its deliveries are a document beside its record (`webhook`, in the job's
folder or in Redis: `service.jobs.records`), so they survive a restart and reach a job run by
any worker: the service watches the records of the jobs that have one and turns their changes
into events (`start`, `progress` at most every
PROGRESS_EVERY_S, `completed`). Each event keeps one `webhook-id` through its retries (at least
once: a receiver deduplicates by it), retried with doubling delays until
ADAIN_WEBHOOK_RETRY_FOR_S has passed. Several replicas share the records: a lock per job lets
one of them deliver at a time.

No server-side request forgery: a target that resolves to a loopback, private, link-local or
otherwise non-public address is refused, at submission and at each delivery, and the request
goes to the address checked (not resolved again); redirects are not followed.
ADAIN_WEBHOOK_ALLOW_PRIVATE=true allows such targets (tests, a private network).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import secrets
import socket
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from standardwebhooks.webhooks import Webhook

from models.errors import InvalidInputError
from service.jobs.batch import kind_fields
from service.jobs.store import JobRecord, JobStatus, JobStore, iso_time

log = logging.getLogger("service.webhooks")

WEBHOOK = "webhook"  # the job's document (and lock) name
PROGRESS_EVERY_S = 5.0  # one `progress` event at most this often per job
MAX_RETRY_DELAY_S = 900.0
DELIVERY_TIMEOUT_S = 10.0
MAX_URL_LENGTH = 2000


class WebhookEvent(StrEnum):
    start = "start"
    progress = "progress"
    completed = "completed"


@dataclass
class Delivery:
    id: str  # the `webhook-id`: the same on every retry of this event
    type: str
    payload: dict[str, Any]
    first_at: float
    next_at: float
    attempts: int = 0


@dataclass
class WebhookState:
    """The `webhook` document of a job."""

    url: str
    events: list[str]
    started: bool = False
    progress_at: float = 0.0
    progress: float = 0.0
    completed: bool = False
    pending: list[Delivery] = field(default_factory=list)

    @classmethod
    def loads(cls, raw: bytes) -> WebhookState:
        data = json.loads(raw)
        data["pending"] = [Delivery(**d) for d in data["pending"]]
        return cls(**data)

    def dumps(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @property
    def done(self) -> bool:
        return self.completed and not self.pending


def public_address(address: str) -> bool:
    return ipaddress.ip_address(address).is_global


def resolve(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to (an address: itself)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def checked_target(url: str, allow_private: bool) -> tuple[str, str]:
    """(the URL with its host replaced by the address to connect to, the host name) after the
    checks; a URL that is not http(s), does not resolve, or resolves to a non-public address
    (unless allowed) raises InvalidInputError naming `webhook`."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or len(url) > MAX_URL_LENGTH:
        raise InvalidInputError(
            f"webhook {url[:80]!r}: an http:// or https:// URL with a host name, up to "
            f"{MAX_URL_LENGTH} characters",
            "webhook",
        )
    if parts.username or parts.password:
        raise InvalidInputError("webhook: no user or password in the URL", "webhook")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = resolve(parts.hostname, port)
    except (OSError, UnicodeError):
        raise InvalidInputError(
            f"webhook: the host {parts.hostname[:80]!r} does not resolve", "webhook"
        ) from None
    refused = [a for a in addresses if not public_address(a)]
    if refused and not allow_private:
        raise InvalidInputError(
            f"webhook: {parts.hostname[:80]!r} resolves to {refused[0]}, a loopback, private "
            "or link-local address; only public targets are called "
            "(ADAIN_WEBHOOK_ALLOW_PRIVATE=true allows these)",
            "webhook",
        )
    address = addresses[0]
    netloc = f"[{address}]" if ":" in address else address
    pinned = urlunsplit(parts._replace(netloc=f"{netloc}:{port}"))
    return pinned, parts.hostname


def parse_events(values: list[str] | None) -> list[str]:
    """`webhook_events`: repeated fields or comma-separated; default `completed`."""
    names = [n.strip() for v in values or [] for n in v.split(",") if n.strip()]
    known = [e.value for e in WebhookEvent]
    for name in names:
        if name not in known:
            raise InvalidInputError(
                f"webhook_events: {name[:40]!r} is not one of {', '.join(known)}",
                "webhook_events",
            )
    return list(dict.fromkeys(names)) or [WebhookEvent.completed.value]


class WebhookSender:
    """Reads and delivers the webhooks of the jobs under one store."""

    def __init__(
        self,
        store: JobStore,
        secret: str,
        allow_private: bool,
        retry_s: float,
        retry_for_s: float,
    ) -> None:
        self.store = store
        self.signer = Webhook(secret)
        self.allow_private = allow_private
        self.retry_s = retry_s
        self.retry_for_s = retry_for_s
        self.client = httpx.Client(timeout=DELIVERY_TIMEOUT_S, follow_redirects=False)

    def attach(self, job_id: str, url: str, events: list[str]) -> None:
        """The job's webhook, before the job is queued."""
        self.store.records.write(job_id, WEBHOOK, WebhookState(url, events).dumps())

    def close(self) -> None:
        self.client.close()

    def tick(self, now: float | None = None) -> None:
        """One pass over the jobs with a webhook: new events queued, due deliveries sent."""
        records = self.store.records
        for job_id in records.ids(WEBHOOK):
            with records.lock(job_id, WEBHOOK) as held:  # one replica at a time
                if held:
                    self._job(job_id, now or time.time())

    def _job(self, job_id: str, now: float) -> None:
        raw = self.store.records.read(job_id, WEBHOOK)
        if raw is None:  # the job was deleted meanwhile
            return
        state = WebhookState.loads(raw)
        if state.done:
            return
        record = self.store.get(job_id)
        if record is not None:
            self._new_events(state, record, now)
        # In order: a job's later event waits while an earlier one is retried.
        while state.pending and state.pending[0].next_at <= now:
            if not self._deliver(state, state.pending[0], now):
                break
        # Not brought back if the job was deleted meanwhile.
        self.store.records.change(job_id, WEBHOOK, lambda current: state.dumps())

    def _new_events(self, state: WebhookState, record: JobRecord, now: float) -> None:
        def add(event: WebhookEvent) -> None:
            if event.value in state.events:
                payload = {
                    "type": f"job.{event.value}",
                    "timestamp": iso_time(now),
                    "data": {**record.public(), **kind_fields(record)},
                }
                state.pending.append(
                    Delivery(f"msg_{secrets.token_hex(16)}", event, payload, now, now)
                )

        ran = record.status is JobStatus.running or record.frames_done > 0
        if not state.started and ran:
            state.started = True
            add(WebhookEvent.start)
        if (
            record.status is JobStatus.running
            and record.progress > state.progress
            and now - state.progress_at >= PROGRESS_EVERY_S
        ):
            state.progress, state.progress_at = record.progress, now
            # A newer progress event replaces one not yet delivered: only the latest matters.
            state.pending = [
                d for d in state.pending if d.type != WebhookEvent.progress or d.attempts
            ]
            add(WebhookEvent.progress)
        if record.status.finished and not state.completed:
            state.completed = True
            add(WebhookEvent.completed)

    def _deliver(self, state: WebhookState, delivery: Delivery, now: float) -> bool:
        """Whether the delivery is over (accepted, or given up); else its retry is set."""
        delivery.attempts += 1
        body = json.dumps(delivery.payload, separators=(",", ":"))
        outcome = "refused"
        try:
            url, host = checked_target(state.url, self.allow_private)
            stamp = datetime.fromtimestamp(now, UTC)
            headers = {
                "host": urlsplit(state.url).netloc,
                "content-type": "application/json",
                "webhook-id": delivery.id,
                "webhook-timestamp": str(int(now)),
                "webhook-signature": self.signer.sign(delivery.id, stamp, body),
            }
            answer = self.client.post(
                url, content=body, headers=headers, extensions={"sni_hostname": host}
            )
            if answer.is_success:
                state.pending.remove(delivery)
                return True
            outcome = f"HTTP {answer.status_code}"
        except InvalidInputError as exc:
            outcome = exc.args[0] if exc.args else "refused"
        except httpx.HTTPError as exc:
            outcome = type(exc).__name__
        if now - delivery.first_at >= self.retry_for_s:
            state.pending.remove(delivery)
            log.warning(
                "webhook given up",
                extra={"webhook_id": delivery.id, "attempts": delivery.attempts, "error": outcome},
            )
            return True
        delay = min(self.retry_s * 2 ** (delivery.attempts - 1), MAX_RETRY_DELAY_S)
        delivery.next_at = now + delay
        log.info(
            "webhook delivery failed; retried",
            extra={"webhook_id": delivery.id, "error": outcome, "retry_in_s": delay},
        )
        return False

    async def run(self, poll_s: float = 1.0) -> None:
        while True:
            try:
                await asyncio.to_thread(self.tick)
            except Exception:  # one bad pass must not stop the deliveries
                log.exception("webhook pass failed")
            await asyncio.sleep(poll_s)
