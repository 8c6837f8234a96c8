"""Identifiers of pools, jobs, tasks and schedules: what is legal and how they compare.

Azure Batch ids are 1 to 64 characters of ASCII letters, digits, hyphens and underscores. Case is
preserved wherever an id is shown, but uniqueness is case-insensitive: ``MyJob`` and ``myjob`` are
the same job. :func:`id_key` is the one key every store and lookup compares on.

A job id also names a directory on every node (``<root>/<JOB_ID>/<TASK_ID>/wd``), next to the
node's own ``shared``, ``startup``, ``fsmounts``, ``workitems`` and ``applications`` directories,
so those names are refused as job ids.

This module only validates and normalises strings. It does not check that an id is unique or
exists; that needs the store.
"""

from __future__ import annotations

import re

from prefect_batch.exceptions import invalid_property

__all__ = [
    "MAX_ID_LENGTH",
    "RESERVED_JOB_IDS",
    "id_key",
    "validate_id",
    "validate_job_id",
]

MAX_ID_LENGTH = 64
"""Longest legal id, in characters."""

RESERVED_JOB_IDS: frozenset[str] = frozenset(
    {"shared", "startup", "fsmounts", "workitems", "applications"}
)
"""Job ids (compared case-insensitively) that would collide with a node's own directories."""

# ASCII only: ``\w`` would also accept non-ASCII letters and digits.
_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]+")


def validate_id(value: str, prop: str = "id") -> str:
    """Check that ``value`` is a legal Azure Batch id and return it unchanged.

    Args:
        value: The id as the user gave it.
        prop: The property name to report in the error (e.g. ``"id"``, ``"poolInfo.poolId"``).

    Returns:
        ``value``, with its case preserved.

    Raises:
        BatchInvalidRequestError: ``InvalidPropertyValue`` naming ``prop`` when the id is not a
            string, is empty, is longer than 64 characters or has other characters than ASCII
            letters, digits, ``-`` and ``_``.
    """
    if not isinstance(value, str):
        raise invalid_property(prop, value, "an id must be a string")
    if not value:
        raise invalid_property(prop, value, "an id must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise invalid_property(
            prop, value, f"an id may have at most {MAX_ID_LENGTH} characters, not {len(value)}"
        )
    if _ID_PATTERN.fullmatch(value) is None:
        raise invalid_property(
            prop,
            value,
            "an id may contain only ASCII letters, digits, hyphens (-) and underscores (_)",
        )
    return value


def id_key(value: str) -> str:
    """Return the key two ids are compared on: ids that differ only in case are the same id.

    Args:
        value: A (valid) id.

    Returns:
        The case-folded id. Store it next to the id as given; show the id, compare the key.
    """
    return value.casefold()


def validate_job_id(value: str, prop: str = "id") -> str:
    """Check that ``value`` is a legal job id and return it unchanged.

    A job id follows :func:`validate_id` and, because it names a directory on each node, is none
    of :data:`RESERVED_JOB_IDS` in any case.

    Args:
        value: The job id as the user gave it.
        prop: The property name to report in the error.

    Returns:
        ``value``, with its case preserved.

    Raises:
        BatchInvalidRequestError: ``InvalidPropertyValue`` naming ``prop``.
    """
    validate_id(value, prop)
    if id_key(value) in RESERVED_JOB_IDS:
        raise invalid_property(
            prop,
            value,
            f"the job id {value!r} is reserved: it would collide with the node directory "
            f"{id_key(value)!r} (reserved job ids: {', '.join(sorted(RESERVED_JOB_IDS))})",
        )
    return value
