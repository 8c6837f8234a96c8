"""Import boundaries: ``import prefect_batch`` stays light; the Prefect modules export what they
say they do."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import prefect_batch.blocks
import prefect_batch.flows


def test_importing_prefect_batch_does_not_import_prefect() -> None:
    code = "import sys, prefect_batch; sys.exit(1 if 'prefect' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_the_public_modules_export_what_they_list() -> None:
    for module in (prefect_batch.blocks, prefect_batch.flows):
        for name in module.__all__:
            assert getattr(module, name) is not None, f"{module.__name__}.{name}"


def test_block_registration_finds_exactly_our_block_types() -> None:
    import inspect

    from prefect.blocks.core import Block

    registrable = {
        value.get_block_type_slug()
        for value in vars(prefect_batch.blocks).values()
        if inspect.isclass(value) and Block.is_block_class(value) and not inspect.isabstract(value)
    }
    assert registrable == {
        "batch-account",
        "batch-pool",
        "batch-local-node-source",
        "batch-ssh-host-group",
        "batch-ec2-template",
    }


def test_outside_a_flow_nothing_starts_a_prefect_server(tmp_path: Path) -> None:
    """ensure() and drive_job() from a plain script follow the job and send nothing to Prefect
    (an event or artifact there would start Prefect's ephemeral server, ~10 s)."""
    code = f"""
import os, sys
os.environ.pop("PREFECT_API_URL", None)
from prefect_batch.blocks import BatchPool
from prefect_batch.flows import drive_job
from prefect_batch.testing import embedded_client
with embedded_client({str(tmp_path)!r}) as client:
    BatchPool(pool_id="plain", target_dedicated_nodes=1).ensure(client)
    result = drive_job(client, ["/bin/true"], pool_id="plain", job_id="plain-job")
    assert result.succeeded, result
from prefect.server.api.server import SubprocessASGIServer
sys.exit(len(SubprocessASGIServer._instances))
"""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
