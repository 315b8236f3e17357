"""How a running job is told to stop, between two frames or items (`service.jobs.run`)."""


class JobCanceled(Exception):  # noqa: N818 (a signal, not a failure)
    """The store says the job was canceled, or ended elsewhere (a part failed): stop, remove
    the partial output."""


class JobInterrupted(Exception):  # noqa: N818
    """The process is stopping: checkpoint and leave the job for the next start."""
