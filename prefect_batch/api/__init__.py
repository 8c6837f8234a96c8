"""The Azure Batch REST surface (api-version 2025-06-01) with SharedKey authentication.

``create_app(store, engine=None)`` builds the FastAPI application that ``prefect-batch server
start`` serves; the official ``azure-batch`` SDK talks to it unchanged. Modules:

* ``auth`` — verifying requests (the SharedKey scheme itself is ``prefect_batch.core.sharedkey``,
  which the HTTP client in ``prefect_batch.remote`` signs with too) and keeping accounts apart;
* ``errors`` — the one mapping of errors to Azure's OData error body and HTTP status;
* ``odata`` — ``$filter``, ``$select``, ``maxresults`` paging with ``odata.nextLink``;
* ``context`` — what a route gets per request: the account's service, conditions, responses;
* ``routes/`` — pools, nodes, jobs, tasks, files, and the rest of the paths;
* ``app`` — the application factory.

This package holds no Batch rules: every operation is a ``BatchService`` call.
FastAPI is imported only when ``create_app`` is used, so the HTTP client stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prefect_batch.api.app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from prefect_batch.api.app import create_app

        return create_app
    raise AttributeError(name)
