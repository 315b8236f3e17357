"""The jobs' storage (service/jobs/blobs.py, records.py, store.py), each interface against both
of its implementations, all real: a folder and SeaweedFS (an S3-compatible store) for the files,
a folder and redis-server for the records. Faults: the object store killed and started again
under a caller that waits (`patiently`) and one that does not (503 at the edge); a lock holder
killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from devkit import REPO
from devkit.server import ObjectStore, running_object_store, running_redis
from service.jobs import records as records_module
from service.jobs.blobs import BlobStore, FolderBlobs, JobFilesUnavailableError, S3Blobs
from service.jobs.patience import patiently
from service.jobs.records import FolderRecords, Records, RedisRecords
from service.jobs.store import JobStatus, JobStore

JOB = "0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def object_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObjectStore]:
    with running_object_store(tmp_path_factory.mktemp("seaweedfs")) as store:
        saved = {key: os.environ.get(key) for key in store.env}
        os.environ.update(store.env)  # boto3 reads AWS_* as a deployment sets them
        try:
            yield store
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


@pytest.fixture(params=["folder", "s3"])
def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "folder":
        return FolderBlobs(tmp_path / "blobs")
    request.getfixturevalue("object_store")
    return S3Blobs("adain-tests", f"blobs/{tmp_path.name}")


@pytest.fixture(params=["folder", "redis"])
def records(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Records]:
    if request.param == "folder":
        yield FolderRecords(tmp_path / "records")
        return
    with running_redis() as url:
        yield RedisRecords(redis.Redis.from_url(url))


def test_files_go_in_and_come_back(blobs: BlobStore, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)  # several chunks
    source = tmp_path / "video"
    source.write_bytes(data)
    blobs.put_file(f"{JOB}/inputs/video", source)
    assert source.read_bytes() == data, "the caller keeps its file"
    blobs.put_bytes(f"{JOB}/work/checkpoint.pt", b"state")

    assert blobs.fetch(f"{JOB}/inputs/video", tmp_path / "copy" / "video")
    assert (tmp_path / "copy" / "video").read_bytes() == data
    assert not blobs.fetch(f"{JOB}/inputs/none", tmp_path / "none")
    assert blobs.read_bytes(f"{JOB}/work/checkpoint.pt") == b"state"
    assert blobs.read_bytes(f"{JOB}/work/none") is None

    blob = blobs.open(f"{JOB}/inputs/video")
    assert blob is not None and blob.size == len(data) and blob.etag
    try:
        assert b"".join(blob.read(1000, 2_500_000)) == data[1000:2_500_000]
    finally:
        blob.close()
    assert blobs.open(f"{JOB}/result.mp4") is None

    listed = {info.key: info.size for info in blobs.list(f"{JOB}/")}
    assert listed == {f"{JOB}/inputs/video": len(data), f"{JOB}/work/checkpoint.pt": 5}
    assert blobs.exists(f"{JOB}/work/") and not blobs.exists(f"{JOB}/result")
    blobs.delete_prefix(f"{JOB}/work/")
    assert not blobs.exists(f"{JOB}/work/") and blobs.exists(f"{JOB}/inputs/")
    blobs.delete_prefix(f"{JOB}/")
    assert blobs.list(f"{JOB}/") == []


def test_an_opened_result_survives_its_deletion_or_fails_before_the_answer(
    blobs: BlobStore,
) -> None:
    """A folder's open file stays readable; a store's read is made when asked, so a file
    deleted in between fails there (None before the answer starts), never half-way."""
    blobs.put_bytes(f"{JOB}/result.mp4", b"x" * 5000)
    blob = blobs.open(f"{JOB}/result.mp4")
    assert blob is not None
    chunks = blob.read(0, 5000)
    blobs.delete_prefix(f"{JOB}/")
    try:
        assert b"".join(chunks) == b"x" * 5000
    finally:
        blob.close()


def test_a_presigned_url_serves_the_result_without_the_service(object_store: ObjectStore) -> None:
    blobs = S3Blobs("adain-tests", "presigned")
    blobs.put_bytes(f"{JOB}/result.mp4", b"movie")
    url = blobs.presigned_url(f"{JOB}/result.mp4", "stylized.mp4", "video/mp4")
    assert url is not None
    answer = httpx.get(url, timeout=10)
    assert answer.status_code == 200 and answer.content == b"movie"
    assert answer.headers["content-type"] == "video/mp4"
    assert 'filename="stylized.mp4"' in answer.headers["content-disposition"]
    assert httpx.get(url.split("?")[0], timeout=10).status_code == 403, "not without signature"
    assert FolderBlobs(Path("/nonexistent-never-made")).presigned_url("k", "f", "m") is None


def test_records_change_atomically_across_threads(records: Records) -> None:
    records.write(JOB, "counter", b"0")

    def increment() -> None:
        for _ in range(40):
            records.change(JOB, "counter", lambda raw: str(int(raw) + 1).encode())

    threads = [threading.Thread(target=increment) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert records.read(JOB, "counter") == b"120"
    assert records.ids("counter") == [JOB] and records.ids("other") == []
    other = "f" * 32
    assert records.change(other, "counter", lambda raw: b"1") is None, "not made by a change"
    assert records.read(other, "counter") is None
    records.remove(JOB)
    assert records.read(JOB, "counter") is None and records.ids("counter") == []


def test_a_lock_is_one_holder_s(records: Records) -> None:
    records.write(JOB, "job", b"{}")
    with records.lock(JOB, "run") as first:
        assert first
        with records.lock(JOB, "run") as second:
            assert not second
        with records.lock(JOB, "webhook") as other:
            assert other, "locks of other names are independent"
    with records.lock(JOB, "run") as again:
        assert again, "released at the end of the block"


HOLD_LOCK = """
import sys, time, redis
from service.jobs import records
records.LOCK_TTL_S = 1.0
held = records.RedisRecords(redis.Redis.from_url(sys.argv[1])).lock(sys.argv[2], "run")
assert held.__enter__()
print("held", flush=True)
time.sleep(600)
"""


def test_a_killed_holder_s_redis_lock_expires_and_a_live_one_s_is_renewed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(records_module, "LOCK_TTL_S", 1.0)
    with running_redis() as url:
        records = RedisRecords(redis.Redis.from_url(url))
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLD_LOCK, url, JOB], cwd=REPO, stdout=subprocess.PIPE
        )
        try:
            assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
            time.sleep(2.5)  # more than its expiry: the holder renews it
            with records.lock(JOB, "run") as taken:
                assert not taken, "a live holder's lock was lost"
            holder.send_signal(signal.SIGKILL)
            holder.wait()
            time.sleep(1.5)
            with records.lock(JOB, "run") as taken:
                assert taken, "a killed holder's lock did not expire"
        finally:
            holder.kill()
            holder.wait()


def test_a_store_that_restarts_is_waited_for_by_a_job_and_refused_at_the_edge(
    object_store: ObjectStore, tmp_path: Path
) -> None:
    blobs = S3Blobs("adain-tests", "restart")
    blobs.put_bytes("a/kept", b"kept")
    object_store.kill()
    try:
        started = time.monotonic()
        with pytest.raises(JobFilesUnavailableError):
            blobs.read_bytes("a/kept")
        assert time.monotonic() - started < 30, "the edge waited too long"
        restart = threading.Timer(2.0, object_store.start)
        restart.start()
        assert patiently(lambda: blobs.read_bytes("a/kept"), 120, "test") == b"kept"
        restart.join()
    finally:
        if object_store.process is None:
            object_store.start()


def test_a_job_s_files_move_between_processes_through_the_store(
    object_store: ObjectStore, tmp_path: Path
) -> None:
    """What a second worker sees of a job the first one checkpointed: its inputs and segments
    come from the store into its own, empty, scratch folder."""
    with running_redis() as url:

        def store(folder: str) -> JobStore:
            return JobStore(
                tmp_path / folder,
                ttl_s=60,
                records=RedisRecords(redis.Redis.from_url(url)),
                blobs=S3Blobs("adain-tests", "moves"),
            )

        first, second = store("first"), store("second")
        job_id, inputs = first.new_upload()
        (inputs / "video").write_bytes(b"video bytes")
        first.create(job_id, "me", {}, 10)
        assert not first.scratch(job_id).exists(), "the upload's scratch copy is gone"
        assert second.get(job_id) is not None and second.get(job_id).status is JobStatus.queued

        fetched = first.fetch_inputs(job_id)
        assert (fetched / "video").read_bytes() == b"video bytes"
        first.work(job_id).mkdir(parents=True)
        (first.work(job_id) / "segment-0.mp4").write_bytes(b"frames 0-4")
        from service.jobs.store import Checkpoint

        first.save_checkpoint(
            job_id, Checkpoint(5, [{"file": "segment-0.mp4", "first_pts": 0, "frames": 5}], None)
        )
        resumed = second.load_checkpoint(job_id)
        assert resumed is not None and resumed.frames_done == 5
        assert (second.work(job_id) / "segment-0.mp4").read_bytes() == b"frames 0-4"
        assert (second.fetch_inputs(job_id) / "video").read_bytes() == b"video bytes"
        assert second.stored_bytes() >= len(b"video bytes") + len(b"frames 0-4")

        second.remove_work(job_id)
        assert not second.has_work(job_id) and not second.scratch(job_id).exists()
        second.delete(job_id)
        assert first.get(job_id) is None and first.blobs.list(f"{job_id}/") == []


def test_the_region_is_read_as_the_other_sdks_name_it(
    object_store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AWS_REGION (boto3 itself reads only AWS_DEFAULT_REGION): requests are signed for it."""
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    blobs = S3Blobs("adain-tests", "region")
    assert blobs.client.meta.region_name == "eu-west-3"
    blobs.put_bytes("a/b", b"signed")
    assert blobs.read_bytes("a/b") == b"signed"


def test_expiry_removes_a_job_s_objects_and_its_record(
    object_store: ObjectStore, tmp_path: Path
) -> None:
    with running_redis() as url:
        store = JobStore(
            tmp_path,
            ttl_s=60,
            records=RedisRecords(redis.Redis.from_url(url)),
            blobs=S3Blobs("adain-tests", "expiry"),
        )
        job_id, inputs = store.new_upload()
        (inputs / "video").write_bytes(b"video")
        store.create(job_id, "me", {}, 1)
        (tmp_path / "result.mp4").write_bytes(b"result")
        store.save_result(job_id, tmp_path / "result.mp4")

        def succeed(record: object) -> None:
            record.status = JobStatus.succeeded  # type: ignore[attr-defined]

        expires = store.update(job_id, succeed).expires
        assert expires is not None
        orphan = "e" * 32  # files a crash left without a record
        store.blobs.put_bytes(f"{orphan}/inputs/video", b"left behind")
        assert store.cleanup(now=expires - 1, orphan_age_s=3600) == []
        assert sorted(store.cleanup(now=expires + 1, orphan_age_s=0)) == sorted([job_id, orphan])
        assert store.get(job_id) is None and store.jobs() == []
        assert store.blobs.list() == []
