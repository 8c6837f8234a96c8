"""The local file operations' time bound: a file operation that hangs answers 503, the pool of
file workers is its own, and other work goes on."""

from __future__ import annotations

import threading

import pytest

from prefect_batch.exceptions import BatchServiceError
from prefect_batch.service.rows.localfiles import bounded


def test_a_hanging_file_operation_answers_server_busy() -> None:
    release = threading.Event()
    try:
        with pytest.raises(BatchServiceError) as info:
            bounded(lambda: release.wait(60), timeout=0.2)
        assert (info.value.code, info.value.status_code) == ("ServerBusy", 503)
        # The next operation still runs on another worker.
        assert bounded(lambda: 42) == 42
    finally:
        release.set()
