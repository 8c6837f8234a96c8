"""A rich progress bar that follows a job until all its tasks are complete.

Used by ``prefect-batch job wait`` and the quickstart. It only reads task counts; the engine that
makes the tasks progress must run somewhere (in this process for both users).
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from prefect_batch.client import BatchClient
from prefect_batch.models import BatchTaskCountsResult

__all__ = ["follow_job"]


def follow_job(
    client: BatchClient,
    job_id: str,
    *,
    console: Console,
    timeout: float | None = None,
    poll_seconds: float = 0.2,
) -> BatchTaskCountsResult:
    """Show completed/total with succeeded, failed and running columns until the job is done.

    Returns:
        The final task counts.

    Raises:
        TimeoutError: ``timeout`` seconds passed first.
    """
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("[green]{task.fields[succeeded]} succeeded"),
        TextColumn("[red]{task.fields[failed]} failed"),
        TextColumn("[cyan]{task.fields[running]} running"),
        TimeElapsedColumn(),
        console=console,
    )
    with progress:
        bar = progress.add_task(job_id, total=None, succeeded=0, failed=0, running=0)

        def update(counts: BatchTaskCountsResult) -> None:
            c = counts.task_counts
            progress.update(
                bar,
                total=c.active + c.running + c.completed,
                completed=c.completed,
                succeeded=c.succeeded,
                failed=c.failed,
                running=c.running,
            )

        return client.wait_for_job(
            job_id, timeout=timeout, poll_seconds=poll_seconds, progress=update
        )
