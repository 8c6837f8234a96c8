"""Object storage for resource and output files: S3 and anything that speaks its API.

The service, not the node, holds the storage credentials. When a task is sent to a node,
:meth:`ObjectStorage.downloads` turns its ``resourceFiles`` into plain URLs the node agent can
fetch (presigned GETs for S3 objects, the URL itself for ``httpUrl``) and
:meth:`ObjectStorage.uploads` turns its ``outputFiles`` into upload targets (a presigned POST
policy limited to the destination's key prefix for S3, or an HTTP PUT URL). A URL is valid for
``url_expiry_seconds``; a task that waits longer than that before it runs gets fresh ones,
because URLs are made when the task is dispatched, not when it is added.

A container is named as ``s3://bucket/prefix``, as a URL of the configured endpoint
(``http://127.0.0.1:9000/bucket/prefix``, path style), as a virtual-hosted AWS URL
(``https://bucket.s3.us-east-1.amazonaws.com/prefix``), or by bucket name alone
(``autoStorageContainerName``: a bucket of the storage linked to the account). Any other http(s)
``containerUrl`` of an output file is an upload URL used as given (a presigned PUT of one object)
or as a base that each file's name is appended to.

Credentials and endpoint come from a prefect-aws ``S3Bucket`` or ``AwsCredentials`` block, or
from settings (``PREFECT_BATCH_STORAGE_ENDPOINT_URL``, ``PREFECT_BATCH_STORAGE_REGION``) and
boto3's usual chain (``AWS_ACCESS_KEY_ID``..., profiles, instance roles).

Failures become :class:`StagingError` with Azure's codes (``BlobNotFound``,
``BlobAccessDenied``, ``ContainerNotFound``...): the service completes the task with that
error instead of running it. This module does not download or upload anything itself.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from prefect_batch.core.staging import glob_base, has_magic, parse_file_mode
from prefect_batch.exceptions import PrefectBatchError

__all__ = ["ObjectStorage", "StagingError"]

DEFAULT_URL_EXPIRY_SECONDS = 6 * 3600
LIST_CACHE_SECONDS = 5.0
"""How long a bucket listing is reused: many tasks that read one prefix list it once."""
MAX_LISTED_OBJECTS = 100_000


class StagingError(PrefectBatchError):
    """A resource or output file that cannot be resolved; it ends the task on its node.

    Attributes:
        code: Azure's error code, e.g. ``BlobNotFound``.
        category: ``usererror`` or ``servererror``.
        values: Details for ``failureInfo.details`` (the file or container named).
    """

    def __init__(self, code: str, message: str, category: str = "usererror", **values: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.category = category
        self.values = values

    def to_wire(self) -> dict[str, Any]:
        """The form a run request carries to the agent (``stage_error``)."""
        return {
            "code": self.code,
            "message": self.message,
            "category": self.category,
            "values": self.values,
        }


_ERROR_CODES = {
    "NoSuchKey": ("BlobNotFound", "usererror"),
    "404": ("BlobNotFound", "usererror"),
    "NoSuchBucket": ("ContainerNotFound", "usererror"),
    "AccessDenied": ("BlobAccessDenied", "usererror"),
    "403": ("BlobAccessDenied", "usererror"),
    "InvalidAccessKeyId": ("BlobAccessDenied", "usererror"),
    "SignatureDoesNotMatch": ("BlobAccessDenied", "usererror"),
}


@dataclass
class ObjectStorage:
    """The S3 (or S3-compatible) storage the service signs URLs for.

    Args:
        endpoint_url: An S3-compatible endpoint (MinIO, Ceph, moto); ``None`` for AWS.
        region: The region to sign for.
        access_key_id: Explicit credentials; ``None`` uses boto3's chain.
        secret_access_key: The secret of ``access_key_id``.
        session_token: A session token for temporary credentials.
        url_expiry_seconds: How long a presigned URL is valid.
        session: A ready boto3 session (from a prefect-aws block); overrides the keys above.
        client_config: Extra ``botocore.config.Config`` arguments.
    """

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    url_expiry_seconds: int = DEFAULT_URL_EXPIRY_SECONDS
    session: Any = field(default=None, repr=False)
    client_config: Mapping[str, Any] = field(default_factory=dict)
    _client: Any = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _listings: dict[tuple[str, str], tuple[float, list[str]]] = field(
        default_factory=dict, init=False, repr=False
    )

    # -- construction ----------------------------------------------------------------------

    @classmethod
    def from_settings(cls, settings: Any) -> ObjectStorage:
        """The storage the settings describe (endpoint, region; credentials from boto3's chain)."""
        return cls(
            endpoint_url=getattr(settings, "storage_endpoint_url", None),
            region=getattr(settings, "storage_region", None),
            url_expiry_seconds=int(
                getattr(settings, "storage_url_expiry_seconds", DEFAULT_URL_EXPIRY_SECONDS)
            ),
        )

    @classmethod
    def from_block(cls, block: Any, **overrides: Any) -> ObjectStorage:
        """Storage from a prefect-aws ``S3Bucket`` or ``AwsCredentials`` (or MinIO) block."""
        creds = getattr(block, "credentials", block)
        params: dict[str, Any] = {}
        client_parameters = getattr(creds, "aws_client_parameters", None)  # AWS and MinIO alike
        if client_parameters is not None:
            params = client_parameters.get_params_override()
        session = creds.get_boto3_session() if hasattr(creds, "get_boto3_session") else None
        config = params.get("config")
        return cls(
            endpoint_url=params.get("endpoint_url") or overrides.pop("endpoint_url", None),
            region=getattr(creds, "region_name", None) or overrides.pop("region", None),
            session=session,
            client_config=dict(getattr(config, "_user_provided_options", None) or {}),
            **overrides,
        )

    @property
    def client(self) -> Any:
        """The boto3 S3 client (SigV4; path-style addressing for a custom endpoint)."""
        with self._lock:
            if self._client is None:
                import boto3
                from botocore.config import Config

                options: dict[str, Any] = {
                    "signature_version": "s3v4",
                    "connect_timeout": 10,
                    "read_timeout": 30,
                    "retries": {"max_attempts": 3, "mode": "standard"},
                }
                if self.endpoint_url:
                    options["s3"] = {"addressing_style": "path"}
                options.update(self.client_config)
                session = self.session or boto3.session.Session(
                    aws_access_key_id=self.access_key_id,
                    aws_secret_access_key=self.secret_access_key,
                    aws_session_token=self.session_token,
                )
                self._client = session.client(
                    "s3",
                    endpoint_url=self.endpoint_url,
                    region_name=self.region or session.region_name or "us-east-1",
                    config=Config(**options),
                )
            return self._client

    # -- naming ----------------------------------------------------------------------------

    def container_of(self, url: str) -> tuple[str, str] | None:
        """``(bucket, prefix)`` of a container URL this storage serves, else ``None``."""
        parts = urlsplit(url)
        if parts.scheme == "s3":
            return parts.netloc, parts.path.lstrip("/")
        if parts.scheme not in ("http", "https") or parts.query:
            return None
        if self.endpoint_url:
            endpoint = urlsplit(self.endpoint_url)
            if (parts.scheme, parts.netloc) == (endpoint.scheme, endpoint.netloc):
                path = parts.path[len(endpoint.path.rstrip("/")) :].lstrip("/")
                bucket, _, prefix = path.partition("/")
                return (bucket, prefix) if bucket else None
        host = parts.hostname or ""
        if ".s3." in host and host.endswith(".amazonaws.com"):
            return host.split(".s3.", 1)[0], parts.path.lstrip("/")
        return None

    # -- resource files --------------------------------------------------------------------

    def downloads(
        self, resource_files: Sequence[Mapping[str, Any]], *, configured: bool = True
    ) -> list[dict[str, Any]]:
        """Agent download entries ``{"url", "path", "mode", "name"}`` for ``resourceFiles``.

        ``path`` is relative to the working directory; ``name`` is what an error names.

        Raises:
            StagingError: A container that cannot be listed or is empty for its prefix.
        """
        out: list[dict[str, Any]] = []
        for item in resource_files:
            mode = parse_file_mode(item.get("fileMode"), "fileMode")
            if item.get("httpUrl"):
                out.append(
                    {
                        "url": item["httpUrl"],
                        "path": item["filePath"],
                        "mode": mode,
                        "name": item["filePath"],
                    }
                )
                continue
            if item.get("autoStorageContainerName"):
                bucket, prefix = item["autoStorageContainerName"], ""
                label = item["autoStorageContainerName"]
            else:
                label = item["storageContainerUrl"]
                found = self.container_of(label)
                if found is None:
                    raise StagingError(
                        "InvalidStorageContainerUrl",
                        f"{label} is not a bucket of the configured storage "
                        f"({self.endpoint_url or 'AWS S3'})",
                        ContainerUrl=label,
                    )
                bucket, prefix = found
            prefix = prefix + (item.get("blobPrefix") or "")
            keys = self._list(bucket, prefix, label)
            if not keys:
                raise StagingError(
                    "BlobNotFound",
                    f"No object in {label} begins with {prefix!r}",
                    ContainerUrl=label,
                    BlobPrefix=prefix,
                )
            # Files keep their full key below filePath (Azure keeps the blob name).
            base = (item.get("filePath") or "").rstrip("/")
            for key in keys:
                if key.endswith("/"):
                    continue  # a "directory" marker object
                out.append(
                    {
                        "url": self.presign_get(bucket, key),
                        "path": f"{base}/{key}" if base else key,
                        "mode": mode,
                        "name": key,
                    }
                )
        return out

    def presign_get(self, bucket: str, key: str) -> str:
        """A URL that reads one object for ``url_expiry_seconds``."""
        url: str = self.client.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=self.url_expiry_seconds
        )
        return url

    def _list(self, bucket: str, prefix: str, label: str) -> list[str]:
        now = time.monotonic()
        hit = self._listings.get((bucket, prefix))
        if hit is not None and now - hit[0] < LIST_CACHE_SECONDS:
            return hit[1]
        from botocore.exceptions import BotoCoreError, ClientError

        keys: list[str] = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=prefix
            )
            for page in pages:
                keys.extend(o["Key"] for o in page.get("Contents", ()))
                if len(keys) > MAX_LISTED_OBJECTS:
                    raise StagingError(
                        "ResourceFileListTooLarge",
                        f"{label} holds more than {MAX_LISTED_OBJECTS} objects under {prefix!r}",
                        ContainerUrl=label,
                    )
        except ClientError as exc:
            raise _client_error(exc, label, ContainerUrl=label) from exc
        except BotoCoreError as exc:
            raise StagingError(
                "BlobDownloadMiscError",
                f"Could not list {label}: {exc}",
                "servererror",
                ContainerUrl=label,
            ) from exc
        if len(self._listings) > 256:
            self._listings.clear()
        self._listings[(bucket, prefix)] = (now, keys)
        return keys

    # -- output files ----------------------------------------------------------------------

    def uploads(self, output_files: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Agent upload entries for ``outputFiles``.

        Each entry: ``pattern``, ``condition``, ``single`` (no wildcard: ``name`` is the exact
        object name), ``base`` (the pattern's fixed leading directories), ``name`` (the object
        name or directory below the destination) and ``target``: ``{"method": "POST", "url",
        "fields", "key_prefix"}`` for S3 (a policy that allows exactly the file's key, or any key
        under the destination directory; a file's key is ``key_prefix/name``), or ``{"method":
        "PUT", "url", "headers", "exact"}`` (``exact``: the URL is the one object's; otherwise
        ``/name`` is appended to its path).
        """
        out: list[dict[str, Any]] = []
        for item in output_files:
            pattern = item["filePattern"]
            container = item["destination"]["container"]
            path = (container.get("path") or "").strip("/")
            single = not any(has_magic(p) for p in pattern.split("/"))
            headers = {
                h["name"]: h.get("value") or "" for h in container.get("uploadHeaders") or []
            }
            # One file: ``path`` is its object name (its own file name when omitted). A glob:
            # ``path`` is a directory that each file's path below the glob's base is put under.
            name = (path or pattern.rsplit("/", 1)[-1]) if single else path
            entry: dict[str, Any] = {
                "pattern": pattern,
                "condition": item["uploadOptions"]["uploadCondition"].lower(),
                "single": single,
                "base": glob_base(pattern),
                "name": name,
            }
            url = container["containerUrl"]
            found = self.container_of(url)
            if found is None:
                parts = urlsplit(url)
                exact = "X-Amz-Signature" in parts.query or "Signature=" in parts.query
                entry["target"] = {"method": "PUT", "url": url, "headers": headers, "exact": exact}
            else:
                bucket, prefix = found
                prefix = prefix.strip("/")
                entry["target"] = self._post_target(bucket, prefix, name, single, headers, url)
            out.append(entry)
        return out

    def _post_target(
        self,
        bucket: str,
        prefix: str,
        name: str,
        single: bool,
        headers: Mapping[str, str],
        label: str,
    ) -> dict[str, Any]:
        unsupported = [h for h in headers if h.lower() != "content-type"]
        if unsupported:
            raise StagingError(
                "UnsupportedUploadHeader",
                f"Only Content-Type can be set for uploads to S3, not {', '.join(unsupported)}",
                ContainerUrl=label,
            )
        fields: dict[str, str] = {}
        below = "/".join(p for p in (prefix, name) if p)
        conditions: list[Any]
        if single:  # exactly this key
            key = below
            conditions = [{"key": key}]
        else:  # any key under the destination directory
            key = below + "/${filename}" if below else "${filename}"
            conditions = [["starts-with", "$key", below + "/" if below else ""]]
        for value in headers.values():  # Content-Type only (checked above)
            fields["Content-Type"] = value
            conditions.append({"Content-Type": value})
        post = self.client.generate_presigned_post(
            bucket,
            key,
            Fields=fields or None,
            Conditions=conditions,
            ExpiresIn=self.url_expiry_seconds,
        )
        return {
            "method": "POST",
            "url": post["url"],
            "fields": post["fields"],
            "key_prefix": prefix,
        }


def _client_error(exc: Any, label: str, **values: str) -> StagingError:
    error = exc.response.get("Error", {}) if hasattr(exc, "response") else {}
    status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
    code, category = _ERROR_CODES.get(error.get("Code", ""), _ERROR_CODES.get(status, ("", "")))
    if not code:
        code, category = "BlobDownloadMiscError", "servererror"
    return StagingError(code, f"{label}: {error.get('Message') or exc}", category, **values)
