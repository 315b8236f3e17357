"""A queued job's place in the queue, for GET /jobs/{id}, GET /jobs and the events.

Both modes start jobs in the order they were submitted: the in-process runner's queue is
first in, first out (`service.jobs.local`), and so is the workers' Dramatiq queue on Redis
(`service.jobs.queue`; a retried message goes to the back). A job's position is therefore the
number of queued jobs, of every caller, submitted before it: 0 means it starts next.
"""

from __future__ import annotations

from collections.abc import Iterable

from service.jobs.store import JobRecord, JobStatus


def queue_positions(records: Iterable[JobRecord]) -> dict[str, int]:
    """Each queued job's id -> how many queued jobs are ahead of it (0: next to start)."""
    queued = sorted(
        (r for r in records if r.status is JobStatus.queued), key=lambda r: (r.created, r.id)
    )
    return {record.id: place for place, record in enumerate(queued)}
