"""The batch service of one account on a prefect-batch server, over HTTP (Azure Batch's REST API).

:class:`RemoteBatchService` has the method names, arguments, returns and errors of
:class:`~prefect_batch.service.BatchService`, so :class:`~prefect_batch.BatchClient` (and so the
CLI) works the same against a server as embedded. Every request is signed with SharedKey exactly
as the azure-batch SDK signs it (``core/sharedkey.py``); lists follow ``odata.nextLink``; error
answers become the same ``BatchServiceError`` subclasses the embedded service raises, with
Azure's code, message and values.

Requests are validated here with the same models first (so a bad argument fails the same way
in both modes); a collection of tasks is validated per task, and the tasks that fail locally get
their own error result, in order, as the server would give them. A request that never reached
the server (connection refused: the server restarting) is retried a few times. A request that
was sent and got no answer (the connection dropped, the read timed out) is retried too: a read
(GET, HEAD) changes nothing, and a write carries a ``client-request-id`` of its own, the same in
every attempt, so the server answers a retry of a write that landed with that write's answer
instead of doing it again (``api/idempotency.py``).

Nothing here logs the key or a signature.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from prefect_batch.core.sharedkey import authorization_header, decode_key, http_date
from prefect_batch.exceptions import (
    BatchAuthenticationError,
    BatchConflictError,
    BatchInvalidRequestError,
    BatchNotFoundError,
    BatchServiceError,
    PrefectBatchError,
)
from prefect_batch.models import (
    AutoScaleRun,
    BatchCertificate,
    BatchCertificateCreateOptions,
    BatchCreateTaskCollectionResult,
    BatchJob,
    BatchJobCreateOptions,
    BatchJobDisableOptions,
    BatchJobPreparationAndReleaseTaskStatus,
    BatchJobSchedule,
    BatchJobScheduleCreateOptions,
    BatchJobScheduleUpdateOptions,
    BatchJobTerminateOptions,
    BatchJobUpdateOptions,
    BatchNode,
    BatchNodeDisableSchedulingOptions,
    BatchNodeFile,
    BatchNodeRebootOptions,
    BatchNodeReimageOptions,
    BatchNodeRemoteLoginSettings,
    BatchNodeRemoveOptions,
    BatchNodeSource,
    BatchNodeUserCreateOptions,
    BatchNodeUserReplaceOptions,
    BatchPool,
    BatchPoolCreateOptions,
    BatchPoolEnableAutoScaleOptions,
    BatchPoolEvaluateAutoScaleOptions,
    BatchPoolNodeCounts,
    BatchPoolReplaceOptions,
    BatchPoolResizeOptions,
    BatchPoolUpdateOptions,
    BatchSubtask,
    BatchSupportedImage,
    BatchTask,
    BatchTaskConstraints,
    BatchTaskCountsResult,
    BatchTaskCreateOptions,
    BatchTaskCreateResult,
)
from prefect_batch.service.ops.base import parse_model
from prefect_batch.service.ops.tasks import MAX_TASKS_PER_COLLECTION

__all__ = ["API_VERSION", "RemoteBatchService"]

API_VERSION = "2025-06-01"
JSON_TYPE = "application/json; odata=minimalmetadata"
CONNECT_RETRY_DELAYS_SECONDS = (0.2, 0.5, 1.0, 2.0)
"""Waits between attempts when the server cannot be reached (about 4 s in all)."""

_STATUS_ERRORS: dict[int, type[BatchServiceError]] = {
    400: BatchInvalidRequestError,
    411: BatchInvalidRequestError,
    413: BatchInvalidRequestError,
    401: BatchAuthenticationError,
    403: BatchAuthenticationError,
    404: BatchNotFoundError,
    409: BatchConflictError,
}

parse = parse_model


def _q(segment: str) -> str:
    return quote(segment, safe="")


def _certificate_path(algorithm: str, thumbprint: str) -> str:
    return f"/certificates(thumbprintAlgorithm={_q(algorithm)},thumbprint={_q(thumbprint)})"


def _file(path: str) -> str:
    return quote(path.lstrip("/"), safe="/")


def _error(response: httpx.Response) -> BatchServiceError:
    """The exception for an error answer (Azure's body; a bare status when there is none)."""
    code, message, values = f"Http{response.status_code}", response.reason_phrase, {}
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("code"):
        code = str(body["code"])
        msg = body.get("message")
        message = str(msg.get("value", "") if isinstance(msg, dict) else msg or "")
        values = {
            str(v.get("key")): str(v.get("value"))
            for v in body.get("values") or []
            if isinstance(v, dict) and v.get("key")
        }
    cls = _STATUS_ERRORS.get(response.status_code, BatchServiceError)
    return cls(code, message, values, status_code=response.status_code)


class RemoteBatchService:
    """Every Azure Batch operation of one account, on a prefect-batch server.

    Args:
        url: The server's address, e.g. ``http://127.0.0.1:8765``.
        account: The account to act as.
        key: One of the account's keys (base64).
        timeout: Seconds to wait for an answer.
        transport: An httpx transport (tests).
    """

    def __init__(
        self,
        url: str,
        account: str,
        key: str,
        *,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        try:
            self._key = decode_key(key)
        except ValueError as exc:
            raise PrefectBatchError(f"the account key is not valid: {exc}") from exc
        self.base_url = url.rstrip("/")
        self.account = account
        self._http = httpx.Client(timeout=timeout, transport=transport)

    def __repr__(self) -> str:
        return f"RemoteBatchService({self.base_url!r}, account={self.account!r}, key=<hidden>)"

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def wake(self, *, pools: bool = False) -> None:
        """Nothing to wake here: the server's engine is woken by each request."""

    # -- HTTP --------------------------------------------------------------------------------

    def _send(
        self,
        method: str,
        url: str,
        *,
        params: dict[str, Any] | None = None,
        body: Any = None,
        headers: dict[str, str] | None = None,
        expect: Sequence[int] = (200,),
    ) -> httpx.Response:
        if not url.startswith(("http://", "https://")):
            url = self.base_url + url
        query = dict(params or {})
        if "api-version=" not in url:
            query.setdefault("api-version", API_VERSION)
        content = None
        hdrs = dict(headers or {})
        if body is not None:
            content = json.dumps(body, separators=(",", ":")).encode()
            hdrs["content-type"] = JSON_TYPE
        if method not in ("GET", "HEAD"):
            # One id for every attempt: a retry of a write that landed is answered, not redone.
            hdrs.setdefault("client-request-id", str(uuid.uuid4()))
        attempts = iter(CONNECT_RETRY_DELAYS_SECONDS)
        while True:
            request = self._http.build_request(
                method, url, params=query or None, content=content, headers=hdrs
            )
            self._sign(request)
            try:
                response = self._http.send(request)
            except httpx.TransportError as exc:
                delay = next(attempts, None)
                if delay is None:
                    raise PrefectBatchError(
                        f"cannot reach the batch server at {self.base_url}: {exc}"
                    ) from exc
                time.sleep(delay)
                continue
            if response.status_code in expect:
                return response
            raise _error(response)

    def _sign(self, request: httpx.Request) -> None:
        request.headers["ocp-date"] = http_date(datetime.now(timezone.utc))
        if request.method not in ("GET", "HEAD") and "content-length" not in request.headers:
            request.headers["content-length"] = "0"
        path, _, query = request.url.raw_path.decode("ascii").partition("?")
        request.headers["Authorization"] = authorization_header(
            request.method,
            path,
            query,
            list(request.headers.items()),
            self.account,
            self._key,
        )

    def _get(self, url: str, **params: Any) -> Any:
        return self._send("GET", url, params=params).json()

    def _list(self, url: str, model: type[BaseModel], **params: Any) -> list[Any]:
        out: list[Any] = []
        next_url: str | None = url
        query: dict[str, Any] | None = params
        while next_url:
            page = self._send("GET", next_url, params=query).json()
            out.extend(model.model_validate(item) for item in page.get("value") or [])
            next_url, query = page.get("odata.nextLink"), None
        return out

    # -- pools -------------------------------------------------------------------------------

    def create_pool(self, pool: Any) -> None:
        """Create a pool."""
        self._send(
            "POST", "/pools", body=parse(BatchPoolCreateOptions, pool).to_wire(), expect=(201,)
        )

    def get_pool(self, pool_id: str) -> BatchPool:
        """One pool."""
        return BatchPool.model_validate(self._get(f"/pools/{_q(pool_id)}"))

    def pool_exists(self, pool_id: str) -> bool:
        """Whether the pool exists."""
        try:
            self._send("HEAD", f"/pools/{_q(pool_id)}")
        except BatchNotFoundError:
            return False
        return True

    def list_pools(self) -> list[BatchPool]:
        """Every pool of the account."""
        return self._list("/pools", BatchPool)

    def update_pool(self, pool_id: str, update_options: Any) -> None:
        """PATCH a pool."""
        body = parse(BatchPoolUpdateOptions, update_options).to_wire()
        self._send("PATCH", f"/pools/{_q(pool_id)}", body=body)

    def replace_pool_properties(self, pool_id: str, pool: Any) -> None:
        """Replace a pool's start task and metadata (``updateproperties``)."""
        body = parse(BatchPoolReplaceOptions, pool).to_wire()
        self._send("POST", f"/pools/{_q(pool_id)}/updateproperties", body=body)

    def resize_pool(self, pool_id: str, resize: Any) -> None:
        """Ask for a new node count."""
        body = parse(BatchPoolResizeOptions, resize).to_wire()
        self._send("POST", f"/pools/{_q(pool_id)}/resize", body=body, expect=(202,))

    def stop_pool_resize(self, pool_id: str) -> None:
        """Stop a resize."""
        self._send("POST", f"/pools/{_q(pool_id)}/stopresize", expect=(202,))

    def enable_pool_auto_scale(self, pool_id: str, options: Any) -> None:
        """Size a pool by a formula, or change its formula or interval."""
        body = parse(BatchPoolEnableAutoScaleOptions, options).to_wire()
        self._send("POST", f"/pools/{_q(pool_id)}/enableautoscale", body=body)

    def disable_pool_auto_scale(self, pool_id: str) -> None:
        """Stop sizing a pool by formula."""
        self._send("POST", f"/pools/{_q(pool_id)}/disableautoscale")

    def evaluate_pool_auto_scale(self, pool_id: str, options: Any) -> AutoScaleRun:
        """Evaluate a formula on a pool without applying it."""
        body = parse(BatchPoolEvaluateAutoScaleOptions, options).to_wire()
        answer = self._send("POST", f"/pools/{_q(pool_id)}/evaluateautoscale", body=body)
        return AutoScaleRun.model_validate(answer.json())

    def delete_pool(self, pool_id: str) -> None:
        """Delete a pool."""
        self._send("DELETE", f"/pools/{_q(pool_id)}", expect=(202,))

    def list_supported_images(self) -> list[BatchSupportedImage]:
        """The node sources pools can use."""
        return self._list("/supportedimages", BatchSupportedImage)

    def list_pool_node_counts(self) -> list[BatchPoolNodeCounts]:
        """Nodes per state of every pool."""
        return self._list("/nodecounts", BatchPoolNodeCounts)

    def get_account_quotas(self) -> dict[str, int]:
        """The account's node quotas and the nodes it holds (a prefect-batch extension)."""
        answer = self._get("/quotas")
        return {k: v for k, v in answer.items() if not k.startswith("odata.")}

    # -- node sources (a prefect-batch extension) ---------------------------------------------

    def create_node_source(self, group: Any) -> None:
        """Register an SSH host group (validated here first; key material is refused)."""
        from prefect_batch.providers.kinds import registration_body

        self._send("POST", "/nodesources", body=registration_body(group), expect=(201,))

    def update_node_source(self, name: str, group: Any) -> None:
        """Replace a registered SSH host group."""
        from prefect_batch.providers.kinds import registration_body

        if isinstance(group, dict) and "name" not in group:
            group = {**group, "name": name}
        self._send("PUT", f"/nodesources/{_q(name)}", body=registration_body(group))

    def get_node_source(self, name: str) -> BatchNodeSource:
        """One registered SSH host group."""
        return BatchNodeSource.model_validate(self._get(f"/nodesources/{_q(name)}"))

    def list_node_sources(self) -> list[BatchNodeSource]:
        """The registered SSH host groups."""
        return self._list("/nodesources", BatchNodeSource)

    def delete_node_source(self, name: str) -> None:
        """Forget a registered SSH host group (refused while a pool names it)."""
        self._send("DELETE", f"/nodesources/{_q(name)}")

    # -- certificates (deprecated by Azure) -------------------------------------------------

    def create_certificate(self, certificate: Any) -> None:
        """Add a certificate (validated here first; see ``BatchClient.create_certificate``)."""
        body = parse(BatchCertificateCreateOptions, certificate).to_wire()
        self._send("POST", "/certificates", body=body, expect=(201,))

    def list_certificates(self) -> list[BatchCertificate]:
        """The account's certificates (public parts only)."""
        return self._list("/certificates", BatchCertificate)

    def get_certificate(self, thumbprint_algorithm: str, thumbprint: str) -> BatchCertificate:
        """One certificate (its public part)."""
        return BatchCertificate.model_validate(
            self._get(_certificate_path(thumbprint_algorithm, thumbprint))
        )

    def delete_certificate(self, thumbprint_algorithm: str, thumbprint: str) -> None:
        """Delete a certificate; while pools or nodes use it, it goes to ``deletefailed``."""
        self._send("DELETE", _certificate_path(thumbprint_algorithm, thumbprint), expect=(202,))

    def cancel_certificate_deletion(self, thumbprint_algorithm: str, thumbprint: str) -> None:
        """Return a certificate whose deletion failed to ``active``."""
        path = _certificate_path(thumbprint_algorithm, thumbprint) + "/canceldelete"
        self._send("POST", path, expect=(204,))

    # -- nodes -------------------------------------------------------------------------------

    def list_nodes(self, pool_id: str) -> list[BatchNode]:
        """The nodes of a pool."""
        return self._list(f"/pools/{_q(pool_id)}/nodes", BatchNode)

    def get_node(self, pool_id: str, node_id: str) -> BatchNode:
        """One node."""
        return BatchNode.model_validate(self._get(f"/pools/{_q(pool_id)}/nodes/{_q(node_id)}"))

    def get_node_metrics(self, pool_id: str, node_id: str) -> dict[str, Any]:
        """A node's liveness and latest resource readings."""
        return dict(self._get(f"/pools/{_q(pool_id)}/nodes/{_q(node_id)}/metrics"))

    def _node_action(self, pool_id: str, node_id: str, action: str, body: Any, expect: int) -> None:
        url = f"/pools/{_q(pool_id)}/nodes/{_q(node_id)}/{action}"
        self._send("POST", url, body=body or None, expect=(expect,))

    def reboot_node(self, pool_id: str, node_id: str, options: Any = None) -> None:
        """Reboot a node."""
        if isinstance(options, str):
            options = {"nodeRebootOption": options}
        body = parse(BatchNodeRebootOptions, options or {}).to_wire()
        self._node_action(pool_id, node_id, "reboot", body, 202)

    def reimage_node(self, pool_id: str, node_id: str, options: Any = None) -> None:
        """Reimage a node."""
        if isinstance(options, str):
            options = {"nodeReimageOption": options}
        body = parse(BatchNodeReimageOptions, options or {}).to_wire()
        self._node_action(pool_id, node_id, "reimage", body, 202)

    def remove_nodes(self, pool_id: str, options: Any) -> None:
        """Remove nodes from a pool."""
        body = parse(BatchNodeRemoveOptions, options).to_wire()
        self._send("POST", f"/pools/{_q(pool_id)}/removenodes", body=body, expect=(202,))

    def disable_node_scheduling(self, pool_id: str, node_id: str, options: Any = None) -> None:
        """Stop scheduling tasks on a node."""
        if isinstance(options, str):
            options = {"nodeDisableSchedulingOption": options}
        body = parse(BatchNodeDisableSchedulingOptions, options or {}).to_wire()
        self._node_action(pool_id, node_id, "disablescheduling", body, 200)

    def enable_node_scheduling(self, pool_id: str, node_id: str) -> None:
        """Schedule tasks on a node again."""
        self._node_action(pool_id, node_id, "enablescheduling", None, 200)

    def get_node_remote_login_settings(
        self, pool_id: str, node_id: str
    ) -> BatchNodeRemoteLoginSettings:
        """The SSH address and port of a node's machine."""
        url = f"/pools/{_q(pool_id)}/nodes/{_q(node_id)}/remoteloginsettings"
        return BatchNodeRemoteLoginSettings.model_validate(self._get(url))

    def create_node_user(self, pool_id: str, node_id: str, user: Any) -> None:
        """Add a login user to a node."""
        body = parse(BatchNodeUserCreateOptions, user).to_wire()
        url = f"/pools/{_q(pool_id)}/nodes/{_q(node_id)}/users"
        self._send("POST", url, body=body, expect=(201,))

    def replace_node_user(self, pool_id: str, node_id: str, user_name: str, options: Any) -> None:
        """Replace a node user's password, key and expiry."""
        body = parse(BatchNodeUserReplaceOptions, options or {}).to_wire()
        url = f"/pools/{_q(pool_id)}/nodes/{_q(node_id)}/users/{_q(user_name)}"
        self._send("PUT", url, body=body, expect=(200,))

    def delete_node_user(self, pool_id: str, node_id: str, user_name: str) -> None:
        """Remove a login user from a node."""
        url = f"/pools/{_q(pool_id)}/nodes/{_q(node_id)}/users/{_q(user_name)}"
        self._send("DELETE", url, expect=(200,))

    # -- jobs --------------------------------------------------------------------------------

    def create_job(self, job: Any) -> None:
        """Create a job."""
        self._send("POST", "/jobs", body=parse(BatchJobCreateOptions, job).to_wire(), expect=(201,))

    def get_job(self, job_id: str) -> BatchJob:
        """One job."""
        return BatchJob.model_validate(self._get(f"/jobs/{_q(job_id)}"))

    def list_jobs(self) -> list[BatchJob]:
        """Every job of the account."""
        return self._list("/jobs", BatchJob)

    def update_job(self, job_id: str, job: Any) -> None:
        """PATCH a job."""
        body = parse(BatchJobUpdateOptions, job).to_wire()
        self._send("PATCH", f"/jobs/{_q(job_id)}", body=body)

    def replace_job(self, job_id: str, job: Any) -> None:
        """PUT a job."""
        body = parse(BatchJobUpdateOptions, job).to_wire()
        self._send("PUT", f"/jobs/{_q(job_id)}", body=body)

    def disable_job(self, job_id: str, options: Any) -> None:
        """Disable a job."""
        if isinstance(options, str):
            options = {"disableTasks": options}
        body = parse(BatchJobDisableOptions, options).to_wire()
        self._send("POST", f"/jobs/{_q(job_id)}/disable", body=body, expect=(202,))

    def enable_job(self, job_id: str) -> None:
        """Enable a disabled job."""
        self._send("POST", f"/jobs/{_q(job_id)}/enable", expect=(202,))

    def terminate_job(self, job_id: str, options: Any = None) -> None:
        """Terminate a job."""
        if isinstance(options, str):
            options = {"terminateReason": options}
        body = parse(BatchJobTerminateOptions, options or {}).to_wire()
        self._send("POST", f"/jobs/{_q(job_id)}/terminate", body=body or None, expect=(202,))

    def delete_job(self, job_id: str) -> None:
        """Delete a job."""
        self._send("DELETE", f"/jobs/{_q(job_id)}", expect=(202,))

    def get_job_task_counts(self, job_id: str) -> BatchTaskCountsResult:
        """Task and slot counts of a job."""
        return BatchTaskCountsResult.model_validate(self._get(f"/jobs/{_q(job_id)}/taskcounts"))

    def list_job_preparation_and_release_task_status(
        self, job_id: str
    ) -> list[BatchJobPreparationAndReleaseTaskStatus]:
        """Job preparation and release task status per node."""
        return self._list(
            f"/jobs/{_q(job_id)}/jobpreparationandreleasetaskstatus",
            BatchJobPreparationAndReleaseTaskStatus,
        )

    # -- job schedules -----------------------------------------------------------------------

    def create_job_schedule(self, job_schedule: Any) -> None:
        """Create a job schedule."""
        body = parse(BatchJobScheduleCreateOptions, job_schedule).to_wire()
        self._send("POST", "/jobschedules", body=body, expect=(201,))

    def get_job_schedule(self, job_schedule_id: str) -> BatchJobSchedule:
        """One job schedule."""
        return BatchJobSchedule.model_validate(self._get(f"/jobschedules/{_q(job_schedule_id)}"))

    def job_schedule_exists(self, job_schedule_id: str) -> bool:
        """Whether the job schedule exists."""
        try:
            self._send("HEAD", f"/jobschedules/{_q(job_schedule_id)}")
        except BatchNotFoundError:
            return False
        return True

    def list_job_schedules(self) -> list[BatchJobSchedule]:
        """Every job schedule of the account."""
        return self._list("/jobschedules", BatchJobSchedule)

    def update_job_schedule(self, job_schedule_id: str, job_schedule: Any) -> None:
        """PATCH a job schedule."""
        body = parse(BatchJobScheduleUpdateOptions, job_schedule).to_wire()
        self._send("PATCH", f"/jobschedules/{_q(job_schedule_id)}", body=body)

    def replace_job_schedule(self, job_schedule_id: str, job_schedule: Any) -> None:
        """PUT a job schedule."""
        body = parse(BatchJobScheduleUpdateOptions, job_schedule).to_wire()
        self._send("PUT", f"/jobschedules/{_q(job_schedule_id)}", body=body)

    def disable_job_schedule(self, job_schedule_id: str) -> None:
        """Disable a job schedule."""
        self._send("POST", f"/jobschedules/{_q(job_schedule_id)}/disable", expect=(204,))

    def enable_job_schedule(self, job_schedule_id: str) -> None:
        """Enable a job schedule."""
        self._send("POST", f"/jobschedules/{_q(job_schedule_id)}/enable", expect=(204,))

    def terminate_job_schedule(self, job_schedule_id: str) -> None:
        """Terminate a job schedule."""
        self._send("POST", f"/jobschedules/{_q(job_schedule_id)}/terminate", expect=(202,))

    def delete_job_schedule(self, job_schedule_id: str) -> None:
        """Delete a job schedule and its jobs."""
        self._send("DELETE", f"/jobschedules/{_q(job_schedule_id)}", expect=(202,))

    def list_jobs_from_schedule(self, job_schedule_id: str) -> list[BatchJob]:
        """The jobs a schedule created."""
        return self._list(f"/jobschedules/{_q(job_schedule_id)}/jobs", BatchJob)

    # -- tasks -------------------------------------------------------------------------------

    def create_task(self, job_id: str, task: Any) -> None:
        """Add one task."""
        body = parse(BatchTaskCreateOptions, task).to_wire()
        self._send("POST", f"/jobs/{_q(job_id)}/tasks", body=body, expect=(201,))

    def create_task_collection(
        self, job_id: str, task_collection: Sequence[Any]
    ) -> BatchCreateTaskCollectionResult:
        """Add up to 100 tasks, with a result per task in input order."""
        items = list(task_collection)
        if len(items) > MAX_TASKS_PER_COLLECTION:
            raise BatchInvalidRequestError(
                "RequestBodyTooLarge",
                f"A task collection holds at most {MAX_TASKS_PER_COLLECTION} tasks",
                {"MaxTasks": MAX_TASKS_PER_COLLECTION},
                status_code=413,
            )
        results: list[BatchTaskCreateResult | None] = [None] * len(items)
        sent: list[tuple[int, dict[str, Any]]] = []
        for i, item in enumerate(items):
            try:
                sent.append((i, parse(BatchTaskCreateOptions, item).to_wire()))
            except BatchServiceError as err:
                results[i] = BatchTaskCreateResult.model_validate(
                    {"status": "clienterror", "taskId": _task_id(item), "error": err.to_body()}
                )
        if sent:
            answer = self._send(
                "POST",
                f"/jobs/{_q(job_id)}/addtaskcollection",
                body={"value": [wire for _, wire in sent]},
            ).json()
            remote = [BatchTaskCreateResult.model_validate(r) for r in answer.get("value") or []]
            # Results come in request order (the server keeps it); match by position.
            for (i, _), result in zip(sent, remote, strict=True):
                results[i] = result
        return BatchCreateTaskCollectionResult(result_values=[r for r in results if r])

    def create_tasks(
        self, job_id: str, task_collection: Sequence[Any]
    ) -> BatchCreateTaskCollectionResult:
        """Add any number of tasks (100 per request), with a result per task."""
        items = list(task_collection)
        results: list[BatchTaskCreateResult] = []
        for start in range(0, len(items), MAX_TASKS_PER_COLLECTION):
            chunk = items[start : start + MAX_TASKS_PER_COLLECTION]
            results.extend(self.create_task_collection(job_id, chunk).result_values or [])
        return BatchCreateTaskCollectionResult(result_values=results)

    def get_task(self, job_id: str, task_id: str) -> BatchTask:
        """One task."""
        return BatchTask.model_validate(self._get(f"/jobs/{_q(job_id)}/tasks/{_q(task_id)}"))

    def list_tasks(self, job_id: str, *, state: str | None = None) -> list[BatchTask]:
        """The tasks of a job in creation order, optionally only those in ``state``."""
        params: dict[str, Any] = {}
        if state is not None:
            params["$filter"] = "state eq '{}'".format(str(state).replace("'", "''"))
        return self._list(f"/jobs/{_q(job_id)}/tasks", BatchTask, **params)

    def list_subtasks(self, job_id: str, task_id: str) -> list[BatchSubtask]:
        """The subtasks of a multi-instance task (``subtasksinfo``)."""
        answer = self._get(f"/jobs/{_q(job_id)}/tasks/{_q(task_id)}/subtasksinfo")
        return [BatchSubtask.model_validate(v) for v in answer.get("value") or []]

    def list_task_attempts(self, job_id: str, task_id: str) -> list[dict[str, Any]]:
        """The node each attempt of a task was sent to."""
        answer = self._get(f"/jobs/{_q(job_id)}/tasks/{_q(task_id)}/attempts")
        return list(answer.get("value") or [])

    def update_task(self, job_id: str, task_id: str, constraints: Any) -> None:
        """Change a task's constraints (Azure's task update replaces them)."""
        if hasattr(constraints, "to_wire"):
            constraints = constraints.to_wire()
        if isinstance(constraints, dict) and "constraints" in constraints:
            constraints = constraints["constraints"] or {}
        body = {"constraints": parse(BatchTaskConstraints, constraints).to_wire()}
        self._send("PUT", f"/jobs/{_q(job_id)}/tasks/{_q(task_id)}", body=body)

    def terminate_task(self, job_id: str, task_id: str) -> None:
        """End a task."""
        url = f"/jobs/{_q(job_id)}/tasks/{_q(task_id)}/terminate"
        self._send("POST", url, expect=(204,))

    def reactivate_task(self, job_id: str, task_id: str) -> None:
        """Queue a failed task again."""
        url = f"/jobs/{_q(job_id)}/tasks/{_q(task_id)}/reactivate"
        self._send("POST", url, expect=(204,))

    def delete_task(self, job_id: str, task_id: str) -> None:
        """Delete a task and its files."""
        self._send("DELETE", f"/jobs/{_q(job_id)}/tasks/{_q(task_id)}")

    # -- files -------------------------------------------------------------------------------

    def _read(self, url: str, offset: int, length: int | None) -> bytes:
        if offset < 0 or (length is not None and length < 0):
            raise BatchConflictError("InvalidRange", "The byte range is invalid", status_code=416)
        headers = {}
        if length is not None:
            if length == 0:
                self._send("HEAD", url)  # the file must exist; nothing to read
                return b""
            headers["ocp-range"] = f"bytes={offset}-{offset + length - 1}"
        elif offset:
            headers["ocp-range"] = f"bytes={offset}-"
        try:
            return self._send("GET", url, headers=headers).content
        except BatchServiceError as err:
            if err.code == "InvalidRange" and offset > 0:
                return b""  # reading at or past the end: nothing, as a local read gives
            raise

    def _properties(self, url: str, name: str) -> BatchNodeFile:
        h = self._send("HEAD", url).headers
        return BatchNodeFile.model_validate(
            {
                "name": name,
                "url": h.get("ocp-batch-file-url"),
                "isDirectory": h.get("ocp-batch-file-isdirectory", "").lower() == "true",
                "properties": {
                    "creationTime": _iso(h.get("ocp-creation-time")),
                    "lastModified": _iso(h.get("last-modified")),
                    "contentLength": int(h.get("content-length") or 0),
                    "contentType": h.get("content-type"),
                    "fileMode": h.get("ocp-batch-file-mode"),
                },
            }
        )

    def _task_files(self, job_id: str, task_id: str) -> str:
        return f"/jobs/{_q(job_id)}/tasks/{_q(task_id)}/files"

    def list_task_files(
        self, job_id: str, task_id: str, *, recursive: bool = False
    ) -> list[BatchNodeFile]:
        """Files of a task on its node."""
        url = self._task_files(job_id, task_id)
        return self._list(url, BatchNodeFile, recursive=str(recursive).lower())

    def get_task_file(
        self,
        job_id: str,
        task_id: str,
        file_path: str,
        *,
        offset: int = 0,
        length: int | None = None,
    ) -> bytes:
        """Content of a task file, optionally a byte range."""
        return self._read(f"{self._task_files(job_id, task_id)}/{_file(file_path)}", offset, length)

    def get_task_file_properties(self, job_id: str, task_id: str, file_path: str) -> BatchNodeFile:
        """Size, times and mode of a task file."""
        url = f"{self._task_files(job_id, task_id)}/{_file(file_path)}"
        return self._properties(url, file_path)

    def delete_task_file(
        self, job_id: str, task_id: str, file_path: str, *, recursive: bool = False
    ) -> None:
        """Delete a task file or directory."""
        url = f"{self._task_files(job_id, task_id)}/{_file(file_path)}"
        self._send("DELETE", url, params={"recursive": str(recursive).lower()})

    def _node_files(self, pool_id: str, node_id: str) -> str:
        return f"/pools/{_q(pool_id)}/nodes/{_q(node_id)}/files"

    def list_node_files(
        self, pool_id: str, node_id: str, *, recursive: bool = False, path: str = ""
    ) -> list[BatchNodeFile]:
        """Files under a node's root directory (or ``path`` below it)."""
        url = self._node_files(pool_id, node_id)
        prefix = path.strip("/")
        if not prefix:
            return self._list(url, BatchNodeFile, recursive=str(recursive).lower())
        # Azure's list has no directory parameter: list the tree below the prefix and keep its
        # direct entries unless asked for all.
        found = self._list(
            url,
            BatchNodeFile,
            recursive="true",
            **{"$filter": "startswith(name,'{}/')".format(prefix.replace("'", "''"))},
        )
        if recursive:
            return found
        return [f for f in found if "/" not in (f.name or "")[len(prefix) + 1 :]]

    def get_node_file(
        self,
        pool_id: str,
        node_id: str,
        file_path: str,
        *,
        offset: int = 0,
        length: int | None = None,
    ) -> bytes:
        """Content of a node file, optionally a byte range."""
        return self._read(
            f"{self._node_files(pool_id, node_id)}/{_file(file_path)}", offset, length
        )

    def get_node_file_properties(self, pool_id: str, node_id: str, file_path: str) -> BatchNodeFile:
        """Size, times and mode of a node file."""
        url = f"{self._node_files(pool_id, node_id)}/{_file(file_path)}"
        return self._properties(url, file_path)

    def delete_node_file(
        self, pool_id: str, node_id: str, file_path: str, *, recursive: bool = False
    ) -> None:
        """Delete a node file or directory."""
        url = f"{self._node_files(pool_id, node_id)}/{_file(file_path)}"
        self._send("DELETE", url, params={"recursive": str(recursive).lower()})


def _task_id(item: Any) -> str:
    value = item.get("id", "") if isinstance(item, dict) else getattr(item, "id", "")
    return str(value or "")


def _iso(http_date_value: str | None) -> str | None:
    if not http_date_value:
        return None
    from email.utils import parsedate_to_datetime

    return parsedate_to_datetime(http_date_value).isoformat()
