"""The pure core of prefect-batch: decisions from data, with the time passed in.

Modules, one concept each:

* :mod:`~prefect_batch.core.states` — resource states and their legal transitions.
* :mod:`~prefect_batch.core.ids` — legal ids and the case-insensitive key they compare on.
* :mod:`~prefect_batch.core.commandline` — command-line splitting and environment checks.
* :mod:`~prefect_batch.core.completion` — retry or complete after a task attempt ends.
* :mod:`~prefect_batch.core.dependencies` — task dependencies: checks and resolution.
* :mod:`~prefect_batch.core.scheduler` — placing queued tasks on free node slots.
* :mod:`~prefect_batch.core.sharedkey` — SharedKey signing, account keys and job keys.

Nothing here does I/O, reads a clock, starts a thread or imports a service library
(``tests/test_architecture.py`` enforces it). The I/O shell (``store/``, ``service/``, ``api/``,
``providers/``, ``agent/``) feeds these functions snapshots and carries out what they decide.
"""
