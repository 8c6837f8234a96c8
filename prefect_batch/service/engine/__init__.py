"""The engine: one loop per store that runs nodes and tasks (:class:`Engine`), and its parts.

:mod:`.nodes` (node runtime: starts, losses, provider events), :mod:`.dispatcher` (queued tasks
to free slots), :mod:`.jobtasks` (job manager, preparation and release tasks), :mod:`.autoscale`
(formula evaluations), :mod:`.schedules` (jobs from job schedules), :mod:`.starts` (agent
starts and releases on worker threads) and :mod:`.confinement` (how a task is confined on its
node). The engine may use the operations and the row helpers; nothing below imports it.
"""

from prefect_batch.service.engine.loop import Engine

__all__ = ["Engine"]
