"""Batch image jobs: POST /jobs with several `content` images (or one ZIP of them) and the style
fields of /stylize; one job whose result is a ZIP of the stylized images and a manifest.

Each image goes through /stylize's steps (`stylize_image`: `media.imaging`'s decoding and
encoding, the styles' statistics and the stylization on the job's `FrameBackend`, which in the
service is the engine /stylize uses), so an item equals /stylize's answer for that image, or
fails with the error /stylize would answer, recorded in the manifest; the others go on.

A job's inputs hold the items' bytes (`items/<index>`), the styles decoded once at submission
(`styles.pt`, as video jobs) and the raw masks (`mask-<index>`); its work folder one file per
item done (`items/<index>.json`, its outcome, and `items/<index>`, its image), so a job taken up
again after a restart (in the service or on a worker) skips the items already done.

    manifest.json  {"items": [{"index", "name", "bytes", "output", "output_bytes", "width",
                                "height", "error"}], "succeeded", "failed"}
    0000-<name>.png ...  the stylized images, stored uncompressed: one is read without the rest
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Literal, Protocol

from pydantic import BaseModel, Field
from torch import Tensor

from media.clip import ClipSettings, ClipStyles, FrameBackend, load_styles, save_styles
from media.controls import StyleControls, check_controls
from media.imaging import (
    ImageLimits,
    OutputFormat,
    StyleInput,
    encode_image,
    open_image,
    prepare_content,
    prepare_masks,
    prepare_style,
)
from models.errors import DomainError, InvalidInputError, error_body
from service.files import write_atomically
from service.jobs.signals import JobInterrupted
from service.jobs.store import RESULT, STYLES_FILE, JobRecord, JobStore

BATCH_KIND = "batch"
ITEMS_FOLDER = "items"
MANIFEST_NAME = "manifest.json"
BATCH_RESULT = "result.zip"
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a local file header; an empty archive's end record
ZIP_END_RECORD = struct.Struct("<4s4H2LH")  # APPNOTE 4.3.16, the end of central directory
ZIP_END_SIGNATURE = b"PK\x05\x06"
ZIP64_COUNT = 0xFFFF  # an end record saying "the count is in the ZIP64 record": 65535+ entries
MAX_ENTRY_NAME = 1024  # bytes of one entry's path (with its folders)
MAX_ENTRY_DEPTH = 8  # folders above an entry
# An entry's fixed part of the directory, and room for its extra fields and comment: what the
# directory may hold per entry it declares (zipfile reads it all, whatever the count says).
ZIP_DIRECTORY_BYTES_PER_ENTRY = 46 + MAX_ENTRY_NAME + 1024
SKIPPED_ENTRIES = ("__MACOSX/",)  # macOS's resource forks, not pictures
MAX_STEM = 80  # characters of an item's name kept in its output's name


class BatchTooLargeError(DomainError):
    """A batch over ADAIN_MAX_BATCH_ITEMS images, or a ZIP whose entries would unpack to more
    than ADAIN_MAX_BATCH_BYTES (413; refused from the ZIP's directory, before unpacking)."""


class BatchItemNotFoundError(DomainError):
    """No item with that index or name in the batch job, or the item failed (its error is in
    the manifest), or the job is a video job (404)."""


@dataclass(frozen=True)
class BatchLimits:
    max_items: int  # ADAIN_MAX_BATCH_ITEMS
    max_bytes: int  # ADAIN_MAX_BATCH_BYTES: a ZIP's entries, uncompressed
    max_item_bytes: int  # ADAIN_MAX_UPLOAD_BYTES, what /stylize takes: a larger item fails alone


@dataclass(frozen=True)
class BatchParams:
    """A batch job's parameters as its record stores them (`record`), read back checked
    (`from_record`: a record is an entry point too)."""

    controls: StyleControls
    style_fields: list[str]
    output_format: OutputFormat
    quality: int
    items: list[dict[str, Any]]  # {"name", "bytes", "error"}: error set at submission, or None
    max_item_bytes: int

    def record(self) -> dict[str, Any]:
        return {
            "kind": BATCH_KIND,
            "controls": self.controls.model_dump(),
            "model": self.controls.model,
            "style_fields": self.style_fields,
            "format": self.output_format.value,
            "quality": self.quality,
            "items": self.items,
            "max_item_bytes": self.max_item_bytes,
            "items_failed": 0,
        }

    @classmethod
    def from_record(cls, params: dict[str, Any], models: Sequence[str]) -> BatchParams:
        controls = check_controls(
            styles=len(params["style_fields"]), models=models, **params["controls"]
        )
        return cls(
            controls,
            list(params["style_fields"]),
            OutputFormat(params["format"]),
            int(params["quality"]),
            list(params["items"]),
            int(params["max_item_bytes"]),
        )


def is_batch(record: JobRecord) -> bool:
    return record.params.get("kind") == BATCH_KIND


def kind_fields(record: JobRecord) -> dict[str, Any]:
    """What a job's JSON says of its kind: a batch job's items done (failed among them) of its
    total; null for a video job."""
    if not is_batch(record):
        return {"kind": "video", "items_done": None, "items_failed": None, "items_total": None}
    return {
        "kind": BATCH_KIND,
        "items_done": record.frames_done,
        "items_failed": int(record.params.get("items_failed", 0)),
        "items_total": record.frames_total,
    }


# --- submission --------------------------------------------------------------------------------


def is_zip(path: Path) -> bool:
    with path.open("rb") as file:
        return file.read(4) in ZIP_MAGIC


def check_zip_directory(file: BinaryIO, limits: BatchLimits) -> None:
    """The entry count and the directory's size from the ZIP's end record, before `zipfile`
    reads the directory into objects (hundreds of bytes each): a small upload may declare
    millions of entries."""
    file.seek(0, 2)
    size = file.tell()
    tail_size = min(size, ZIP_END_RECORD.size + 0xFFFF)  # the record, then a comment
    file.seek(size - tail_size)
    tail = file.read(tail_size)
    start = tail.rfind(ZIP_END_SIGNATURE)
    if start < 0 or len(tail) - start < ZIP_END_RECORD.size:
        raise InvalidInputError("content: not a readable ZIP archive (no end record)", "content")
    _, _, _, _, entries, directory_bytes, _, _ = ZIP_END_RECORD.unpack_from(tail, start)
    if entries == ZIP64_COUNT or entries > limits.max_items * 2:  # folders count as entries
        raise BatchTooLargeError(
            f"content: the ZIP has {entries if entries != ZIP64_COUNT else 'over 65535'} "
            f"entries; the limit is {limits.max_items} images (ADAIN_MAX_BATCH_ITEMS)",
            "content",
        )
    if directory_bytes > entries * ZIP_DIRECTORY_BYTES_PER_ENTRY:
        raise InvalidInputError(
            f"content: the ZIP's directory has {directory_bytes} bytes for {entries} entries: "
            "more than this server reads",
            "content",
        )


def checked_entry_name(name: str) -> bool:
    """Whether the entry is a file to stylize (not a folder, nor macOS's metadata); refuses a
    path that would leave the archive (absolute, `..`, a drive) or nests too deep."""
    if name.endswith("/") or name.startswith(SKIPPED_ENTRIES):
        return False
    parts = PurePosixPath(name.replace("\\", "/")).parts
    unsafe = name.startswith(("/", "\\")) or ".." in parts or re.match(r"^[A-Za-z]:", name)
    if unsafe or len(name.encode()) > MAX_ENTRY_NAME or len(parts) > MAX_ENTRY_DEPTH + 1:
        raise InvalidInputError(
            f"content: the ZIP entry {name[:80]!r} has a path this server does not unpack "
            f"(absolute, with '..', longer than {MAX_ENTRY_NAME} bytes or nested deeper than "
            f"{MAX_ENTRY_DEPTH} folders)",
            "content",
        )
    return not PurePosixPath(parts[-1]).name.startswith(".")


def unpack_zip(archive: Path, folder: Path, limits: BatchLimits) -> list[dict[str, Any]]:
    """The ZIP's files, in its order, unpacked into `folder` as `<index>`: its directory
    checked first (counts, names, the sizes it declares, which `zipfile` then holds each
    entry to). An entry over the item limit, encrypted or unreadable becomes a failed item."""
    with archive.open("rb") as file:
        check_zip_directory(file, limits)
        try:
            archive_file = zipfile.ZipFile(file)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            raise InvalidInputError(
                f"content: not a readable ZIP archive ({exc})", "content"
            ) from None
        with archive_file:
            entries = [e for e in archive_file.infolist() if checked_entry_name(e.filename)]
            if not entries:
                raise InvalidInputError("content: the ZIP holds no files", "content")
            check_item_count(len(entries), limits)
            declared = sum(entry.file_size for entry in entries)
            if declared > limits.max_bytes:
                raise BatchTooLargeError(
                    f"content: the ZIP's files would unpack to {declared} bytes; the limit is "
                    f"{limits.max_bytes} (ADAIN_MAX_BATCH_BYTES)",
                    "content",
                )
            return [
                unpack_entry(archive_file, entry, folder / str(index), limits)
                for index, entry in enumerate(entries)
            ]


def unpack_entry(
    archive: zipfile.ZipFile, entry: zipfile.ZipInfo, target: Path, limits: BatchLimits
) -> dict[str, Any]:
    item: dict[str, Any] = {"name": entry.filename, "bytes": entry.file_size, "error": None}
    if entry.file_size > limits.max_item_bytes:
        return item  # fails when the job runs, as an upload over the limit does
    try:
        with archive.open(entry) as source, target.open("wb") as output:
            shutil.copyfileobj(source, output)
    except (zipfile.BadZipFile, RuntimeError, NotImplementedError, zlib.error, EOFError) as exc:
        target.unlink(missing_ok=True)
        item["error"] = error_body(f"content: the ZIP entry could not be read ({exc})", "content")
    return item


def check_item_count(count: int, limits: BatchLimits) -> None:
    if count > limits.max_items:
        raise BatchTooLargeError(
            f"content: {count} images; the limit is {limits.max_items} per batch job "
            "(ADAIN_MAX_BATCH_ITEMS)",
            "content",
        )


def create_batch_job(
    store: JobStore,
    job_id: str,
    owner: str,
    uploads: Sequence[tuple[str, Path]],
    styles: Sequence[StyleInput],
    masks: Sequence[bytes],
    controls: StyleControls,
    output_format: OutputFormat,
    quality: int,
    batch_limits: BatchLimits,
    limits: ImageLimits,
) -> JobRecord:
    """The job whose `content` uploads (name, saved file) are in its inputs folder already,
    queued: one ZIP unpacked, or each upload an item; the styles decoded (as video jobs keep
    them) and the masks checked readable. On any refusal its folder is removed."""
    inputs = store.inputs(job_id)
    items_folder = inputs / ITEMS_FOLDER
    try:
        items_folder.mkdir()
        check_item_count(len(uploads), batch_limits)
        if len(uploads) == 1 and is_zip(uploads[0][1]):
            items = unpack_zip(uploads[0][1], items_folder, batch_limits)
            uploads[0][1].unlink()
        else:
            items = []
            for index, (name, path) in enumerate(uploads):
                items.append({"name": name, "bytes": path.stat().st_size, "error": None})
                path.rename(items_folder / str(index))
        decoded = [prepare_style(s, controls.style_size, controls.crop, limits) for s in styles]
        save_styles(ClipStyles(decoded, None), inputs / STYLES_FILE)
        for index, mask in enumerate(masks):
            open_image(mask, f"mask[{index}]", limits).close()  # each image's size: when it runs
            (inputs / f"mask-{index}").write_bytes(mask)
        params = BatchParams(
            controls,
            [style.field for style in styles],
            output_format,
            quality,
            items,
            batch_limits.max_item_bytes,
        )
        return store.create(job_id, owner, params.record(), len(items))
    except BaseException:
        store.discard_upload(job_id)
        raise


# --- the run -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class StillImage:
    encoded: bytes
    width: int
    height: int


def stylize_image(
    content: bytes,
    styles: Sequence[Tensor],
    masks: tuple[bytes, ...],
    controls: StyleControls,
    output_format: OutputFormat,
    quality: int,
    backend: FrameBackend,
    limits: ImageLimits,
    fixed_statistics: Callable[[], list[tuple[Tensor, Tensor]]],
) -> StillImage:
    """One image as POST /stylize makes it (`service.stylizer.Stylizer.stylize`: the same
    decoding, masks, statistics, mix and encoding) on `backend`. `fixed_statistics`: the
    styles' statistics without colour preservation (computed once for the whole batch)."""
    model = controls.model
    tensor, upright = prepare_content(
        content, controls.content_size, controls.crop, output_format, limits
    )
    grid = (tensor.shape[-2], tensor.shape[-1])
    mask_tensors = prepare_masks(masks, len(styles), upright, grid, limits) if masks else None
    if controls.preserve_color:
        stats = [backend.style_statistics(style, tensor, model) for style in styles]
    else:
        stats = fixed_statistics()
    stylized = backend.stylize(tensor, controls.mix(stats, mask_tensors), model)
    return StillImage(encode_image(stylized, output_format, quality), grid[1], grid[0])


class ProgressReport(Protocol):
    """`service.jobs.run`'s progress: reports items done, raises `JobCanceled` when the job
    was canceled meanwhile."""

    def report(self, frames_done: int, force: bool = False) -> None: ...


def output_name(index: int, name: str, output_format: OutputFormat) -> str:
    """The item's file in the result: its index first (unique, in order), then its name's stem
    with only letters, digits, '.', '-' and '_'."""
    stem = PurePosixPath(name.replace("\\", "/")).stem
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._")[:MAX_STEM]
    return f"{index:04d}-{stem or 'image'}.{output_format.value}"


def stylize_batch(
    record: JobRecord,
    store: JobStore,
    backend: FrameBackend,
    settings: ClipSettings,
    should_stop: Callable[[], bool],
    progress: ProgressReport,
) -> int:
    """Stylizes the items not done yet (`service.jobs.run`'s job function for batch jobs), packs
    the result and stores it; returns the number of items. Every item failed: the job fails
    with the first one's error."""
    job_id, params = record.id, BatchParams.from_record(record.params, backend.models)
    inputs, done_folder = store.fetch_inputs(job_id), store.work(job_id) / ITEMS_FOLDER
    done_folder.mkdir(parents=True, exist_ok=True)
    for info in store.blobs.list(f"{job_id}/work/{ITEMS_FOLDER}/"):  # done by an earlier start
        local = done_folder / info.key.rsplit("/", 1)[1]
        if not local.is_file():
            store.blobs.fetch(info.key, local)
    styles = load_styles(inputs / STYLES_FILE).styles
    masks = tuple((inputs / f"mask-{index}").read_bytes() for index in range(params.controls.masks))
    statistics: list[tuple[Tensor, Tensor]] = []

    def fixed_statistics() -> list[tuple[Tensor, Tensor]]:
        if not statistics:
            model = params.controls.model
            statistics.extend(backend.style_statistics(s, None, model) for s in styles)
        return statistics

    outcomes = [read_outcome(done_folder, index) for index in range(len(params.items))]
    failed = sum(1 for o in outcomes if o is not None and o["error"] is not None)
    for index, item in enumerate(params.items):
        if outcomes[index] is not None:
            continue
        done = sum(1 for o in outcomes if o is not None)
        progress.report(done)
        if should_stop():
            progress.report(done, force=True)
            raise JobInterrupted
        outcome = run_item(
            index,
            item,
            inputs,
            done_folder,
            params,
            styles,
            masks,
            backend,
            settings,
            fixed_statistics,
        )
        outcomes[index] = outcome
        keep_item(store, job_id, done_folder, index, outcome)
        if outcome["error"] is not None:
            failed += 1
            count_failed(store, job_id, failed)
    progress.report(len(outcomes), force=True)
    finished = [o for o in outcomes if o is not None]
    if failed == len(finished):
        first = finished[0]
        raise DomainError(
            f"none of the {len(finished)} images could be stylized; the first, "
            f"{first['name'][:80]!r}: {first['error']['detail']}",
            first["error"]["field"],
        )
    produced = store.work(job_id) / BATCH_RESULT
    manifest = pack_result(finished, done_folder, produced)
    for outcome in finished:  # each image on its own too (GET /jobs/{id}/items/{n})
        if outcome["output"] is not None:
            key = f"{job_id}/{ITEMS_FOLDER}/{outcome['output']}"
            store.blobs.put_file(key, done_folder / str(outcome["index"]))
    store.blobs.put_bytes(f"{job_id}/{MANIFEST_NAME}", manifest)
    store.save_result(job_id, produced, BATCH_RESULT)
    return len(finished)


def keep_item(
    store: JobStore, job_id: str, done_folder: Path, index: int, outcome: dict[str, Any]
) -> None:
    """A finished item stored (its image, then its outcome): a later start, on any host, skips
    it."""
    prefix = f"{job_id}/work/{ITEMS_FOLDER}/"
    if outcome["output"] is not None:
        store.blobs.put_file(f"{prefix}{index}", done_folder / str(index))
    store.blobs.put_file(f"{prefix}{index}.json", done_folder / f"{index}.json")


def run_item(
    index: int,
    item: dict[str, Any],
    inputs: Path,
    done_folder: Path,
    params: BatchParams,
    styles: Sequence[Tensor],
    masks: tuple[bytes, ...],
    backend: FrameBackend,
    settings: ClipSettings,
    fixed_statistics: Callable[[], list[tuple[Tensor, Tensor]]],
) -> dict[str, Any]:
    """Item `index` stylized, or its error; its image then its outcome written to
    `done_folder` (the outcome last: a kill in between redoes the item)."""
    outcome = {**item, "index": index, "output": None, "output_bytes": None}
    outcome.update(width=None, height=None)
    try:
        if item["error"] is not None:
            raise DomainError(item["error"]["detail"], item["error"]["field"])
        if item["bytes"] > params.max_item_bytes:
            raise BatchTooLargeError(
                f"content: {item['bytes']} bytes; the limit is {params.max_item_bytes} per "
                "image (ADAIN_MAX_UPLOAD_BYTES, as for /stylize)",
                "content",
            )
        image = stylize_image(
            (inputs / ITEMS_FOLDER / str(index)).read_bytes(),
            styles,
            masks,
            params.controls,
            params.output_format,
            params.quality,
            backend,
            settings.limits,
            fixed_statistics,
        )
    except JobInterrupted:
        raise
    except DomainError as exc:
        outcome["error"] = error_body(exc.detail, exc.field)
    else:
        name = output_name(index, item["name"], params.output_format)
        write_atomically(done_folder / str(index), image.encoded)
        outcome.update(
            output=name, output_bytes=len(image.encoded), width=image.width, height=image.height
        )
    write_atomically(done_folder / f"{index}.json", json.dumps(outcome).encode())
    return outcome


def read_outcome(done_folder: Path, index: int) -> dict[str, Any] | None:
    try:
        return json.loads((done_folder / f"{index}.json").read_bytes())
    except FileNotFoundError:
        return None


def count_failed(store: JobStore, job_id: str, failed: int) -> None:
    def change(record: JobRecord) -> None:
        record.params["items_failed"] = failed

    store.update(job_id, change)


def pack_result(outcomes: Sequence[dict[str, Any]], done_folder: Path, produced: Path) -> bytes:
    """The result ZIP: the manifest first, then each image stored as it is (PNG, JPEG and WebP
    are compressed already; a stored member is read on its own without inflating others).
    Returns the manifest."""
    succeeded = sum(1 for o in outcomes if o["error"] is None)
    manifest = {
        "items": list(outcomes),
        "succeeded": succeeded,
        "failed": len(outcomes) - succeeded,
    }
    serialized = json.dumps(manifest, indent=1).encode()
    with zipfile.ZipFile(produced, "w") as archive:
        archive.writestr(MANIFEST_NAME, serialized, zipfile.ZIP_DEFLATED)
        for outcome in outcomes:
            if outcome["output"] is not None:
                archive.write(done_folder / str(outcome["index"]), outcome["output"])
    return serialized


# --- reading the result ----------------------------------------------------------------------


class ItemOutcome(BaseModel):
    index: int = Field(ge=0, description="The item's place in the batch, from 0.")
    name: str = Field(description="As sent: the upload's file name, or the ZIP entry's path.")
    bytes: int = Field(ge=0, description="The item's size as sent.")
    output: str | None = Field(
        description="Its image's name in the result ZIP (`GET /jobs/{id}/items/{output}`); "
        "null if it failed."
    )
    output_bytes: int | None = Field(description="The stylized image's size; null if it failed.")
    width: int | None = Field(description="Of the stylized image; null if it failed.")
    height: int | None = Field(description="Of the stylized image; null if it failed.")
    error: dict[str, str | None] | None = Field(
        description="Why it failed (`detail`, `field`), as /stylize would answer; null if not."
    )


class BatchManifest(BaseModel):
    """The result ZIP's `manifest.json`: every item, in the order sent."""

    items: list[ItemOutcome]
    succeeded: int = Field(ge=0)
    failed: int = Field(ge=0)


def read_manifest(store: JobStore, job_id: str) -> BatchManifest | None:
    raw = store.blobs.read_bytes(f"{job_id}/{MANIFEST_NAME}")
    return None if raw is None else BatchManifest.model_validate_json(raw)


def find_item(manifest: BatchManifest, reference: str) -> ItemOutcome:
    """The item by its index (`3`) or its output's name (`0003-photo.png`)."""
    for outcome in manifest.items:
        if reference in (str(outcome.index), outcome.output):
            if outcome.output is None:
                detail = (outcome.error or {}).get("detail")
                raise BatchItemNotFoundError(
                    f"item: item {outcome.index} ({outcome.name[:80]!r}) failed: {detail}", "item"
                )
            return outcome
    raise BatchItemNotFoundError(
        f"item: no item {reference[:80]!r}: an index from 0 to {len(manifest.items) - 1} or an "
        "output name of the manifest (GET /jobs/{id}/items)",
        "item",
    )


def read_item(store: JobStore, job_id: str, output: str) -> bytes | None:
    """An item's image by its output name (`find_item`)."""
    return store.blobs.read_bytes(f"{job_id}/{ITEMS_FOLDER}/{output}")


def media_type_of(name: str) -> str:
    return OutputFormat(PurePosixPath(name).suffix.lstrip(".")).media_type


JobKind = Literal["video", "batch"]


def result_name(record: JobRecord) -> tuple[str, str]:
    """(the stored result's name, its media type) of a job of either kind."""
    return (BATCH_RESULT, "application/zip") if is_batch(record) else (RESULT, "video/mp4")
