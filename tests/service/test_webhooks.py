"""Job webhooks (service/webhooks.py) against a real server and a real HTTP receiver on
127.0.0.1 that refuses the first deliveries: every event arrives once the receiver accepts,
with the same `webhook-id` on each retry, and every delivery's Standard Webhooks signature
verifies. Non-public targets are refused unless allowed."""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from devkit.images import encode, random_image
from devkit.server import RunningServer, running_server
from devkit.videos import make_video
from models.errors import InvalidInputError
from service.jobs.store import JobRecord, JobStatus, JobStore
from service.webhooks import WebhookSender, checked_target

SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
STYLE = encode(random_image(40, 40, seed=3401))
REFUSED_FIRST = 3  # deliveries the receiver answers 503 before it recovers


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    accepted: bool


@dataclass
class Receiver:
    """A webhook receiver on 127.0.0.1 that answers 503 to its first `refuse` requests."""

    refuse: int
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def accepted(self) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.accepted]


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    state = Receiver(REFUSED_FIRST)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            with state.lock:
                accepted = len(state.received) >= state.refuse
                state.received.append(Received(dict(self.headers), body, accepted))
            self.send_response(204 if accepted else 503)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}/hooks/adain"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def webhook_server(
    server_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    env = {
        **server_env,
        "ADAIN_JOBS_DIR": str(tmp_path_factory.mktemp("webhook-jobs")),
        "ADAIN_WEBHOOK_SECRET": SECRET,
        "ADAIN_WEBHOOK_ALLOW_PRIVATE": "true",
        "ADAIN_WEBHOOK_RETRY_S": "0.3",
        "ADAIN_MAX_OUTPUT_PIXELS": "65536",
        "ADAIN_VIDEO_PRESET": "veryfast",
        "ADAIN_WARMUP": "false",
    }
    with running_server(env) as running:
        yield running


def submit(server: RunningServer, **fields: str) -> httpx.Response:
    return httpx.post(
        f"{server.url}/jobs",
        files=[
            ("video", ("clip.mp4", make_video(frames=6, width=64, height=48, audio=False))),
            ("style", ("s.png", STYLE)),
        ],
        data={"style_size": "32", "content_size": "0", "stabilize": "false", **fields},
        timeout=60,
    )


def test_a_receiver_down_at_first_gets_every_event_signed(
    webhook_server: RunningServer, receiver: tuple[Receiver, str]
) -> None:
    state, url = receiver
    answer = submit(webhook_server, webhook=url, webhook_events="start,completed")
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["id"]
    deadline = time.monotonic() + 120
    while not any(json.loads(r.body)["type"] == "job.completed" for r in state.accepted()):
        assert time.monotonic() < deadline, [r.body for r in state.received]
        time.sleep(0.2)

    signer = Webhook(SECRET)
    for request in state.received:  # every delivery, refused or not, is signed
        signer.verify(request.body, request.headers)
    accepted = state.accepted()
    kinds = [json.loads(r.body)["type"] for r in accepted]
    assert kinds == ["job.start", "job.completed"]  # each once, in order
    completed = json.loads(accepted[-1].body)
    assert completed["data"]["id"] == job_id and completed["data"]["status"] == "succeeded"
    # Retries keep the event's id: the refused ones were the same events again.
    ids = {r.headers["webhook-id"] for r in accepted}
    assert {r.headers["webhook-id"] for r in state.received} == ids
    assert len(state.received) == len(accepted) + REFUSED_FIRST
    # A body changed in transit fails the signature.
    with pytest.raises(Exception):  # noqa: B017 (the package's WebhookVerificationError)
        signer.verify(accepted[-1].body.replace(b"succeeded", b"failed"), accepted[-1].headers)


def test_bad_webhook_fields_are_refused(
    webhook_server: RunningServer, receiver: tuple[Receiver, str]
) -> None:
    _, url = receiver
    cases = [
        ({"webhook": "ftp://127.0.0.1/x"}, "webhook"),
        ({"webhook": "http://user:pw@127.0.0.1/x"}, "webhook"),
        ({"webhook": "http://no-such-host.invalid/x"}, "webhook"),
        ({"webhook": url, "webhook_events": "start,finished"}, "webhook_events"),
        ({"webhook_events": "start"}, "webhook_events"),
    ]
    for fields, field_name in cases:
        answer = submit(webhook_server, **fields)
        assert answer.status_code == 422, (fields, answer.text)
        assert answer.json()["field"] == field_name


def test_without_a_secret_the_server_sends_no_webhooks(base_url: str) -> None:
    answer = httpx.post(
        f"{base_url}/jobs",
        files=[("video", ("clip.mp4", make_video(frames=2))), ("style", ("s.png", STYLE))],
        data={"webhook": "https://example.com/hook"},
        timeout=60,
    )
    assert answer.status_code == 422 and answer.json()["field"] == "webhook"
    assert "ADAIN_WEBHOOK_SECRET" in answer.json()["detail"]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/hook",
        "http://localhost/hook",
        "http://[::1]/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.10/hook",
        "http://169.254.169.254/latest/meta-data/",  # a cloud's metadata service
        "http://0.0.0.0/hook",
        "http://[fd00::1]/hook",
    ],
)
def test_non_public_targets_are_refused_unless_allowed(url: str) -> None:
    with pytest.raises(InvalidInputError) as refused:
        checked_target(url, allow_private=False)
    assert refused.value.field == "webhook"
    pinned, _ = checked_target(url, allow_private=True)
    assert pinned.startswith("http://")


def test_a_public_target_is_called_at_the_address_checked() -> None:
    pinned, host = checked_target("https://93.184.215.14:8443/path?q=1", allow_private=False)
    assert (pinned, host) == ("https://93.184.215.14:8443/path?q=1", "93.184.215.14")


def test_progress_is_throttled_and_a_delivery_is_given_up_after_its_time(
    tmp_path: Path, receiver: tuple[Receiver, str]
) -> None:
    """The sender on a real job folder and receiver, at chosen clock times."""
    state, url = receiver
    state.refuse = 0
    store = JobStore(tmp_path, ttl_s=3600)
    job_id, _ = store.new_upload()
    store.create(job_id, "caller", {}, 100)
    sender = WebhookSender(store, SECRET, allow_private=True, retry_s=1.0, retry_for_s=3600)
    sender.attach(job_id, url, ["progress", "completed"])

    def report(progress: float, status: JobStatus = JobStatus.running) -> None:
        def change(record: JobRecord) -> None:
            record.status, record.progress = status, progress

        store.update(job_id, change)

    start = time.time()
    for offset, progress in [(0, 0.1), (2, 0.2), (4, 0.3), (6, 0.4)]:
        report(progress)
        sender.tick(start + offset)
    sent = [json.loads(r.body)["data"]["progress"] for r in state.received]
    assert sent == [0.1, 0.4]  # at most one every PROGRESS_EVERY_S (5 s)

    state.refuse = 10**6  # down for good from now on
    report(1.0, JobStatus.succeeded)
    sender.tick(start + 10)
    assert len(state.received) == 3 and not state.received[-1].accepted
    sender.tick(start + 10.5)  # not due yet (1 s): not sent
    assert len(state.received) == 3
    sender.tick(start + 11)
    assert len(state.received) == 4
    sender.tick(start + 10 + 3600)  # its last try, an hour after the first
    sender.tick(start + 10 + 7200)
    assert len(state.received) == 5  # given up: no more tries
    sender.close()
