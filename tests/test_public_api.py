"""The public API: a curated ``__all__`` that is complete and importable."""

from __future__ import annotations

import inspect

import prefect_batch
from prefect_batch import BatchClient

EXPECTED = {
    "BatchAuthenticationError",
    "BatchClient",
    "BatchConflictError",
    "BatchInvalidRequestError",
    "BatchJob",
    "BatchJobCreateOptions",
    "BatchNode",
    "BatchNotFoundError",
    "BatchPool",
    "BatchPoolCreateOptions",
    "BatchServiceError",
    "BatchTask",
    "BatchTaskCreateOptions",
    "PrefectBatchError",
    "__version__",
}


def test_all_is_exactly_the_curated_set() -> None:
    assert set(prefect_batch.__all__) == EXPECTED
    assert len(prefect_batch.__all__) == len(set(prefect_batch.__all__))


def test_every_name_in_all_resolves() -> None:
    for name in prefect_batch.__all__:
        assert getattr(prefect_batch, name) is not None, name


def test_every_public_class_defined_here_is_exported() -> None:
    exported = set(prefect_batch.__all__)
    for name, value in vars(prefect_batch).items():
        if name.startswith("_") or not inspect.isclass(value):
            continue
        assert name in exported, f"{name} is public in prefect_batch but not in __all__"


def test_client_methods_are_verb_noun_like_the_azure_sdk() -> None:
    sdk_names = {
        "create_pool",
        "get_pool",
        "list_pools",
        "delete_pool",
        "resize_pool",
        "create_job",
        "get_job",
        "list_jobs",
        "update_job",
        "terminate_job",
        "disable_job",
        "enable_job",
        "delete_job",
        "create_task",
        "create_task_collection",
        "create_tasks",
        "get_task",
        "list_tasks",
        "terminate_task",
        "reactivate_task",
        "delete_task",
        "get_job_task_counts",
        "list_task_files",
        "download_task_file",
        "list_node_files",
        "download_node_file",
        "list_nodes",
        "get_node",
        "list_supported_images",
        "pool_exists",
        "replace_job",
        "replace_task",
        "stop_pool_resize",
        "update_pool",
    }
    public = {n for n, v in vars(BatchClient).items() if callable(v) and not n.startswith("_")}
    assert sdk_names <= public, sorted(sdk_names - public)
    for name in public:
        assert "_" in name or name == "close", f"{name} is not verb_noun"
