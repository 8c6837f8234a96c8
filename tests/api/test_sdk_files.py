"""Resource and output files through the official SDK against a server whose storage settings
name moto's S3 server on loopback: the SDK's own ``ResourceFile``/``OutputFile`` models, the
server signing URLs with the credentials of its environment, errors in ``failureInfo``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from azure.batch import models

from prefect_batch.testing.storage import S3Endpoint, moto_s3_server
from tests.api.conftest import Server, running_server, wait_for

BUCKET = "sdk-files"
POOL = "pool-files"


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Endpoint]:
    with moto_s3_server(buckets=(BUCKET,)) as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def server(
    store_url: str, tmp_path_factory: pytest.TempPathFactory, s3: S3Endpoint
) -> Iterator[Server]:
    """A server configured like a deployment: endpoint in settings, keys in the environment."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ACCESS_KEY_ID", s3.access_key_id)
        env.setenv("AWS_SECRET_ACCESS_KEY", s3.secret_access_key)
        with running_server(
            store_url,
            tmp_path_factory.mktemp("home"),
            settings={"storage_endpoint_url": s3.url, "storage_region": s3.region},
        ) as running:
            yield running


@pytest.fixture(scope="module")
def sdk(server: Server) -> Iterator[object]:
    client = server.sdk()
    client.create_pool(
        models.BatchPoolCreateOptions(id=POOL, vm_size="local", target_dedicated_nodes=1)
    )
    yield client
    client.close()


def _wait_completed(sdk, job_id: str, task_id: str):
    return wait_for(
        lambda: (t := sdk.get_task(job_id, task_id)).state == "completed" and t, timeout=60
    )


def test_sdk_resource_and_output_files_round_trip(sdk, s3: S3Endpoint) -> None:
    s3.client().put_object(Bucket=BUCKET, Key="in/numbers.txt", Body=b"3\n1\n2\n")
    sdk.create_job(
        models.BatchJobCreateOptions(id="files", pool_info=models.BatchPoolInfo(pool_id=POOL))
    )
    sdk.create_task(
        "files",
        models.BatchTaskCreateOptions(
            id="sort",
            command_line="/bin/sh -c 'sort -n in/numbers.txt > sorted.txt'",
            resource_files=[
                models.ResourceFile(
                    storage_container_url=f"s3://{BUCKET}", blob_prefix="in/", file_mode="0644"
                )
            ],
            output_files=[
                models.OutputFile(
                    file_pattern="sorted.txt",
                    destination=models.OutputFileDestination(
                        container=models.OutputFileBlobContainerDestination(
                            container_url=f"{s3.url}/{BUCKET}/out"
                        )
                    ),
                    upload_options=models.OutputFileUploadConfiguration(
                        upload_condition=models.OutputFileUploadCondition.TASK_SUCCESS
                    ),
                )
            ],
        ),
    )
    task = _wait_completed(sdk, "files", "sort")
    assert task.execution_info.exit_code == 0
    assert task.resource_files[0].blob_prefix == "in/"
    assert task.output_files[0].upload_options.upload_condition == "tasksuccess"
    body = s3.client().get_object(Bucket=BUCKET, Key="out/sorted.txt")["Body"].read()
    assert body == b"1\n2\n3\n"


def test_sdk_sees_a_missing_object_as_blob_not_found(sdk) -> None:
    sdk.create_job(
        models.BatchJobCreateOptions(id="missing", pool_info=models.BatchPoolInfo(pool_id=POOL))
    )
    sdk.create_task(
        "missing",
        models.BatchTaskCreateOptions(
            id="t",
            command_line="true",
            resource_files=[
                models.ResourceFile(storage_container_url=f"s3://{BUCKET}", blob_prefix="nope/")
            ],
        ),
    )
    info = _wait_completed(sdk, "missing", "t").execution_info
    assert info.result == "failure"
    assert (info.failure_info.category, info.failure_info.code) == ("usererror", "BlobNotFound")
