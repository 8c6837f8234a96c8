"""The Prefect side of prefect-batch; import it through :mod:`prefect_batch.blocks` and
:mod:`prefect_batch.flows`.

* ``node_sources`` — node-source blocks (local, SSH host group, EC2 template).
* ``blocks`` — ``BatchAccount`` and ``BatchPool`` (with ``ensure()``).
* ``events`` — Prefect events about pools, nodes, jobs and tasks.
* ``results`` — what the flows return (no Prefect imports).
* ``clients`` — which client a flow uses; ``using_client`` to lend one.
* ``follower`` — reporting a job to Prefect: task runs, artifacts, events.
* ``job`` — ``BatchJobHandle``: create/resume a job, add tasks idempotently, wait, end.
* ``driver`` — the ``run_batch_job`` flow; ``manager`` — ``@batch_job_manager``;
  ``scenarios`` — the deployable scenario flows.

The package's name shadows nothing: every module here imports ``prefect`` absolutely.
"""
