"""Rules for resource files and output files: what a request may ask for.

A task (and a start, job manager, preparation or release task) names ``resourceFiles`` to
download before its command runs and ``outputFiles`` to upload after it exits. This module checks
those lists when the request arrives, so that a bad one is refused with the offending field
named and nothing is created:

* a resource file has exactly one source — ``httpUrl`` (http or https), ``storageContainerUrl``
  (``s3://bucket[/prefix]`` or an ``http(s)://`` endpoint URL of a bucket) or
  ``autoStorageContainerName`` (a bucket of the account's linked storage); ``blobPrefix`` only
  with a container; ``filePath`` required with ``httpUrl``;
* ``filePath`` is relative, without ``..`` components: it can never leave the working directory;
* ``fileMode`` is three or four octal digits without the setuid, setgid or sticky bits;
* an output file's ``filePattern`` is a glob relative to the working directory that may climb to
  the task directory (``../stdout.txt``, Azure's way to upload a task's output) but never above
  it, and is never absolute; its destination is a container URL of the same forms.

Symlinks are the node's business: the agent refuses any path that resolves outside the task
directory. This module does no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from prefect_batch.exceptions import BatchInvalidRequestError, invalid_property

__all__ = [
    "DEFAULT_FILE_MODE",
    "MAX_RESOURCE_FILES",
    "check_relative_path",
    "glob_base",
    "has_magic",
    "parse_file_mode",
    "validate_output_files",
    "validate_resource_files",
]

DEFAULT_FILE_MODE = 0o770
"""Azure's default mode of a downloaded file on Linux."""
MAX_RESOURCE_FILES = 10_000
"""Most resource files one task may name (Azure bounds the request size instead)."""
MAX_OUTPUT_FILES = 100
"""Most output file entries one task may name."""

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_MODE_RE = re.compile(r"^[0-7]{3,4}$")
_MAGIC = re.compile(r"[*?[]")
_UPLOAD_CONDITIONS = ("tasksuccess", "taskfailure", "taskcompletion")
_URL_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)")


def _scheme_host(value: str) -> tuple[str, str]:
    """``("https", "host:port")`` of a URL; empty strings when it is not one."""
    match = _URL_RE.match(value)
    return (match.group(1).lower(), match.group(2)) if match else ("", "")


def has_magic(part: str) -> bool:
    """Whether a path component is a glob (``*``, ``?``, ``[``)."""
    return _MAGIC.search(part) is not None


def glob_base(pattern: str) -> str:
    """The leading components of ``pattern`` without glob characters (``a/b`` of ``a/b/*.txt``).

    Uploaded files are named by their path relative to this base, under the destination path.
    """
    parts = pattern.split("/")
    base: list[str] = []
    for part in parts[:-1]:
        if has_magic(part):
            break
        base.append(part)
    return "/".join(base)


def check_relative_path(value: str, field: str, *, allow_up: int = 0) -> str:
    """Refuse an absolute path or one that climbs out; return it without empty/``.`` parts.

    Args:
        value: The path as given.
        field: The wire name of the field, for the error.
        allow_up: How many levels above the start the path may go (1 lets an output file pattern
            reach the task directory from the working directory).
    """
    if not isinstance(value, str) or not value or "\x00" in value:
        raise invalid_property(field, value, "must be a non-empty path without NUL characters")
    if value.startswith("/") or value.startswith("\\") or re.match(r"^[A-Za-z]:", value):
        raise invalid_property(field, value, "must be relative to the task's working directory")
    parts = [p for p in value.replace("\\", "/").split("/") if p not in ("", ".")]
    depth = 0
    seen_magic = False
    for part in parts:
        if part == "..":
            # Only a leading climb to the task directory is allowed (``../stdout.txt``).
            if seen_magic or depth > 0 or depth - 1 < -allow_up:
                raise invalid_property(field, value, "must not leave the task directory ('..')")
            depth -= 1
        else:
            seen_magic = seen_magic or has_magic(part)
            depth += 1
    if not parts or depth < 0 or (depth == 0 and parts[-1] == ".."):
        raise invalid_property(field, value, "must name a path inside the task directory")
    return "/".join(parts)


def parse_file_mode(value: str | None, field: str) -> int | None:
    """``"0770"`` -> ``0o770``; ``None`` stays ``None`` (the default applies)."""
    if value is None:
        return None
    if not isinstance(value, str) or not _MODE_RE.match(value):
        raise invalid_property(field, value, "must be an octal file mode such as '0644'")
    mode = int(value, 8)
    if mode & ~0o777:
        raise invalid_property(field, value, "setuid, setgid and sticky bits are not allowed")
    return mode


def _check_container_url(value: Any, field: str) -> None:
    if not isinstance(value, str) or not value:
        raise invalid_property(field, value, "must be an s3:// or http(s):// URL")
    scheme, host = _scheme_host(value)
    if scheme == "s3":
        if not _BUCKET_RE.match(host):
            raise invalid_property(field, value, "names no valid bucket (s3://bucket/prefix)")
        return
    if scheme not in ("http", "https") or not host:
        raise invalid_property(field, value, "must be an s3:// or http(s):// URL")


def _check_http_url(value: Any, field: str) -> None:
    scheme, host = _scheme_host(value) if isinstance(value, str) else ("", "")
    if scheme not in ("http", "https") or not host:
        raise invalid_property(field, value, "must be an http:// or https:// URL")


def _check_count(items: Sequence[Any], most: int, where: str) -> None:
    if len(items) > most:
        raise BatchInvalidRequestError(
            "RequestEntityTooLarge",
            f"{where} has {len(items)} entries; at most {most} are allowed",
            {"PropertyName": where},
        )


def validate_resource_files(items: Sequence[Mapping[str, Any]] | None, where: str) -> None:
    """Check a ``resourceFiles`` list in wire form; ``where`` prefixes the field names.

    Raises:
        BatchInvalidRequestError: ``InvalidPropertyValue``/``MissingRequiredProperty`` naming
            the field, e.g. ``resourceFiles[2].filePath``.
    """
    if not items:
        return
    _check_count(items, MAX_RESOURCE_FILES, where)
    for i, item in enumerate(items):
        at = f"{where}[{i}]"
        sources = [
            name
            for name in ("httpUrl", "storageContainerUrl", "autoStorageContainerName")
            if item.get(name)
        ]
        if len(sources) != 1:
            raise BatchInvalidRequestError(
                "InvalidPropertyValue",
                f"{at} must name exactly one of httpUrl, storageContainerUrl and "
                f"autoStorageContainerName (it names {len(sources)})",
                {"PropertyName": at, "Reason": "exactly one source"},
            )
        source = sources[0]
        if source == "httpUrl":
            _check_http_url(item["httpUrl"], f"{at}.httpUrl")
            if item.get("blobPrefix"):
                raise invalid_property(
                    f"{at}.blobPrefix", item["blobPrefix"], "applies to containers only"
                )
            if not item.get("filePath"):
                raise BatchInvalidRequestError(
                    "MissingRequiredProperty",
                    f"{at}.filePath is required with httpUrl",
                    {"PropertyName": f"{at}.filePath"},
                )
        elif source == "storageContainerUrl":
            _check_container_url(item["storageContainerUrl"], f"{at}.storageContainerUrl")
        elif not _BUCKET_RE.match(item["autoStorageContainerName"]):
            raise invalid_property(
                f"{at}.autoStorageContainerName",
                item["autoStorageContainerName"],
                "is not a valid bucket name",
            )
        if item.get("filePath"):
            check_relative_path(item["filePath"], f"{at}.filePath")
        parse_file_mode(item.get("fileMode"), f"{at}.fileMode")
        if item.get("identityReference"):
            raise BatchInvalidRequestError(
                "UnsupportedProperty",
                f"{at}.identityReference is not supported: the service signs URLs for the node",
                {"PropertyName": f"{at}.identityReference"},
            )


def validate_output_files(items: Sequence[Mapping[str, Any]] | None, where: str) -> None:
    """Check an ``outputFiles`` list in wire form; ``where`` prefixes the field names."""
    if not items:
        return
    _check_count(items, MAX_OUTPUT_FILES, where)
    for i, item in enumerate(items):
        at = f"{where}[{i}]"
        check_relative_path(item.get("filePattern", ""), f"{at}.filePattern", allow_up=1)
        container = (item.get("destination") or {}).get("container")
        if not container:
            raise BatchInvalidRequestError(
                "MissingRequiredProperty",
                f"{at}.destination.container is required",
                {"PropertyName": f"{at}.destination.container"},
            )
        _check_container_url(
            container.get("containerUrl"), f"{at}.destination.container.containerUrl"
        )
        path = container.get("path")
        if path:
            check_relative_path(path, f"{at}.destination.container.path")
        if container.get("identityReference"):
            raise BatchInvalidRequestError(
                "UnsupportedProperty",
                f"{at}.destination.container.identityReference is not supported",
                {"PropertyName": f"{at}.destination.container.identityReference"},
            )
        condition = ((item.get("uploadOptions") or {}).get("uploadCondition") or "").lower()
        if condition not in _UPLOAD_CONDITIONS:
            raise invalid_property(
                f"{at}.uploadOptions.uploadCondition",
                condition,
                "must be tasksuccess, taskfailure or taskcompletion",
            )
