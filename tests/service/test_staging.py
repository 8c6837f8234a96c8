"""Resource files in and output files out, through a real S3 endpoint (moto's server on
127.0.0.1) and a real HTTP server, with local nodes.

The service signs S3 URLs; the node agent downloads before the command and uploads after it.
A download that fails completes the task without running the command (a pre-processing error,
never retried); an upload that fails shows as ``FileUploadFailed``. Paths can never leave the
task directory.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from prefect_batch import BatchClient, BatchServiceError
from prefect_batch.testing import embedded_client, wait_for_nodes, wait_for_task
from prefect_batch.testing.storage import (
    HttpFileServer,
    S3Endpoint,
    http_file_server,
    moto_s3_server,
)

POOL = "staging"
BUCKET = "batch-data"


def _sh(script: str) -> str:
    return "/bin/sh -c " + shlex.quote(script)


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Endpoint]:
    with moto_s3_server(buckets=(BUCKET,)) as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpFileServer]:
    directory = tmp_path_factory.mktemp("web")
    (directory / "hello.txt").write_text("hello over http\n")
    with http_file_server(directory, slow_seconds=4.0) as server:
        yield server


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, s3: S3Endpoint) -> Iterator[BatchClient]:
    """The module's service signs for the moto endpoint; transfers time out after 1 s."""
    with embedded_client(
        tmp_path_factory.mktemp("home"), storage=s3.storage(), transfer_timeout_seconds=1.0
    ) as c:
        c.create_pool(
            {"id": POOL, "vmSize": "local", "targetDedicatedNodes": 2, "taskSlotsPerNode": 4}
        )
        wait_for_nodes(c, POOL, 2)
        yield c


def _objects(s3: S3Endpoint, prefix: str) -> dict[str, bytes]:
    c = s3.client()
    listed = c.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return {o["Key"]: c.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read() for o in listed}


def _failure(task: Any) -> tuple[str, str, dict[str, str]]:
    info = task.execution_info.failure_info
    details = {d.name: d.value for d in info.details or []}
    category = getattr(info.category, "value", info.category)
    return category, info.code, details


# -- data through a job ---------------------------------------------------------------------


def test_each_task_reads_its_input_object_and_writes_its_output_object(
    client: BatchClient, make_job: Callable[..., str], s3: S3Endpoint
) -> None:
    c = s3.client()
    for i in range(6):
        c.put_object(Bucket=BUCKET, Key=f"job1/in/part-{i}.txt", Body=f"line {i}\n".encode())
    job = make_job(POOL)
    client.create_tasks(
        job,
        [
            {
                "id": f"t{i}",
                "commandLine": _sh(f"tr a-z A-Z < input/job1/in/part-{i}.txt > result.txt"),
                "resourceFiles": [
                    {
                        "storageContainerUrl": f"s3://{BUCKET}",
                        "blobPrefix": f"job1/in/part-{i}.txt",
                        "filePath": "input",
                    }
                ],
                "outputFiles": [
                    {
                        "filePattern": "result.txt",
                        "destination": {
                            "container": {
                                "containerUrl": f"s3://{BUCKET}/job1/out",
                                "path": f"result-{i}.txt",
                            }
                        },
                        "uploadOptions": {"uploadCondition": "tasksuccess"},
                    }
                ],
            }
            for i in range(6)
        ],
    )
    for i in range(6):
        task = wait_for_task(client, job, f"t{i}")
        assert task.execution_info.exit_code == 0, task.execution_info
    assert _objects(s3, "job1/out/") == {
        f"job1/out/result-{i}.txt": f"LINE {i}\n".encode() for i in range(6)
    }
    log = client.get_task_file(job, "t0", "fileuploadout.txt").decode()
    assert "result-0.txt" in log


def test_a_prefix_of_100_objects_arrives_whole_with_its_mode(
    client: BatchClient, make_job: Callable[..., str], s3: S3Endpoint
) -> None:
    c = s3.client()
    for i in range(100):
        c.put_object(Bucket=BUCKET, Key=f"many/f{i:03d}.dat", Body=str(i).encode() * 10)
    c.put_object(Bucket=BUCKET, Key="manyother/not-me.dat", Body=b"x")
    job = make_job(POOL)
    script = "ls data/many | wc -l; cat data/many/f042.dat; echo; stat -c %a data/many/f007.dat"
    client.create_task(
        job,
        {
            "id": "prefix",
            "commandLine": _sh(script),
            "resourceFiles": [
                {
                    "storageContainerUrl": f"{s3.url}/{BUCKET}",  # the endpoint URL form
                    "blobPrefix": "many/",
                    "filePath": "data",
                    "fileMode": "0640",
                }
            ],
        },
    )
    task = wait_for_task(client, job, "prefix")
    assert task.execution_info.exit_code == 0
    out = client.get_task_file(job, "prefix", "stdout.txt").decode().split()
    assert out == ["100", "42" * 10, "640"]


def test_odd_object_keys_and_http_urls_arrive(
    client: BatchClient, make_job: Callable[..., str], s3: S3Endpoint, web: HttpFileServer
) -> None:
    odd = "odd/données a+b#%?.txt"
    s3.client().put_object(Bucket=BUCKET, Key=odd, Body=b"odd content")
    presigned = s3.storage().presign_get(BUCKET, odd)
    job = make_job(POOL)
    client.create_task(
        job,
        {
            "id": "odd",
            "commandLine": _sh(
                'cat "x/odd/données a+b#%?.txt" signed.txt plain.txt; stat -c %a plain.txt'
            ),
            "resourceFiles": [
                {"autoStorageContainerName": BUCKET, "blobPrefix": "odd/", "filePath": "x"},
                {"httpUrl": presigned, "filePath": "signed.txt"},
                {"httpUrl": web.url("hello.txt"), "filePath": "plain.txt"},
            ],
        },
    )
    task = wait_for_task(client, job, "odd")
    assert task.execution_info.exit_code == 0, task.execution_info
    out = client.get_task_file(job, "odd", "stdout.txt").decode()
    assert out == "odd contentodd contenthello over http\n770\n"


# -- download failures ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "category", "code", "detail"),
    [
        (
            {"httpUrl": "{web}/missing.txt", "filePath": "a.txt"},
            "usererror",
            "BlobNotFound",
            "a.txt",
        ),
        (
            {"httpUrl": "{web}/denied/x.txt", "filePath": "b.txt"},
            "usererror",
            "BlobAccessDenied",
            "b.txt",
        ),
        (
            {"httpUrl": "{web}/slow/hello.txt", "filePath": "c.txt"},
            "servererror",
            "BlobDownloadTimedOut",
            "c.txt",
        ),
        (
            {"storageContainerUrl": "s3://no-such-bucket-here"},
            "usererror",
            "ContainerNotFound",
            "s3://no-such-bucket-here",
        ),
        (
            {"storageContainerUrl": f"s3://{BUCKET}/nothing-under-this/"},
            "usererror",
            "BlobNotFound",
            f"s3://{BUCKET}/nothing-under-this/",
        ),
    ],
    ids=["not-found", "access-denied", "timed-out", "no-bucket", "empty-prefix"],
)
def test_a_failed_download_completes_the_task_without_running_it(
    client: BatchClient,
    make_job: Callable[..., str],
    web: HttpFileServer,
    tmp_path: Path,
    source: dict[str, str],
    category: str,
    code: str,
    detail: str,
) -> None:
    marker = tmp_path / "ran"
    resource = {k: v.replace("{web}", web.base_url) for k, v in source.items()}
    job = make_job(POOL)
    client.create_task(
        job,
        {
            "id": "t",
            "commandLine": f"touch {marker}",
            "resourceFiles": [resource],
            "constraints": {"maxTaskRetryCount": 3},
        },
    )
    task = wait_for_task(client, job, "t", timeout=30)
    got_category, got_code, details = _failure(task)
    assert (got_category, got_code) == (category, code)
    assert detail in details.values()
    assert getattr(task.execution_info.result, "value", task.execution_info.result) == "failure"
    assert task.execution_info.retry_count == 0  # pre-processing errors are never retried
    assert not marker.exists()


def test_pre_processing_error_exit_options_end_the_job(
    client: BatchClient, make_job: Callable[..., str], web: HttpFileServer
) -> None:
    job = make_job(POOL, onTaskFailure="performexitoptionsjobaction")
    client.create_task(
        job,
        {
            "id": "t",
            "commandLine": "true",
            "resourceFiles": [{"httpUrl": web.url("missing"), "filePath": "m"}],
            "exitConditions": {"preProcessingError": {"jobAction": "terminate"}},
        },
    )
    wait_for_task(client, job, "t")
    job_state = client.get_job(job).state
    assert getattr(job_state, "value", job_state) in ("terminating", "completed")


# -- uploads --------------------------------------------------------------------------------


def _outputs(prefix: str) -> list[dict[str, Any]]:
    return [
        {
            "filePattern": f"{cond}.txt",
            "destination": {"container": {"containerUrl": f"s3://{BUCKET}/{prefix}"}},
            "uploadOptions": {"uploadCondition": cond},
        }
        for cond in ("tasksuccess", "taskfailure", "taskcompletion")
    ]


@pytest.mark.parametrize(
    ("exit_code", "uploaded"),
    [(0, {"tasksuccess", "taskcompletion"}), (3, {"taskfailure", "taskcompletion"})],
)
def test_upload_conditions(
    client: BatchClient,
    make_job: Callable[..., str],
    s3: S3Endpoint,
    exit_code: int,
    uploaded: set[str],
) -> None:
    prefix = f"cond-{exit_code}"
    job = make_job(POOL)
    script = "for c in tasksuccess taskfailure taskcompletion; do echo $c > $c.txt; done; "
    script += f"exit {exit_code}"
    client.create_task(
        job, {"id": "t", "commandLine": _sh(script), "outputFiles": _outputs(prefix)}
    )
    task = wait_for_task(client, job, "t")
    assert task.execution_info.exit_code == exit_code
    assert set(_objects(s3, prefix + "/")) == {f"{prefix}/{c}.txt" for c in uploaded}


def test_globs_upload_a_tree_and_the_task_output_but_no_link_out(
    client: BatchClient, make_job: Callable[..., str], s3: S3Endpoint
) -> None:
    job = make_job(POOL)
    script = (
        "mkdir -p out/a/b && echo 1 > out/a/one.csv && echo 2 > out/a/b/two.csv && "
        "echo skip > out/a/b/two.txt && echo hidden > out/.dot.csv && "
        "ln -s /etc/hostname out/leak.csv && echo printed"
    )
    client.create_task(
        job,
        {
            "id": "t",
            "commandLine": _sh(script),
            "outputFiles": [
                {
                    "filePattern": "out/**/*.csv",
                    "destination": {
                        "container": {"containerUrl": f"s3://{BUCKET}/tree", "path": "csv"}
                    },
                    "uploadOptions": {"uploadCondition": "taskcompletion"},
                },
                {
                    "filePattern": "../std*.txt",
                    "destination": {
                        "container": {"containerUrl": f"s3://{BUCKET}/tree", "path": "logs"}
                    },
                    "uploadOptions": {"uploadCondition": "taskcompletion"},
                },
            ],
        },
    )
    task = wait_for_task(client, job, "t")
    assert task.execution_info.exit_code == 0
    objects = _objects(s3, "tree/")
    assert set(objects) == {
        "tree/csv/a/one.csv",
        "tree/csv/a/b/two.csv",
        "tree/logs/stdout.txt",
        "tree/logs/stderr.txt",
    }
    assert objects["tree/logs/stdout.txt"] == b"printed\n"


def test_upload_to_an_http_put_url(
    client: BatchClient, make_job: Callable[..., str], s3: S3Endpoint, web: HttpFileServer
) -> None:
    signed = s3.client().generate_presigned_url(
        "put_object", Params={"Bucket": BUCKET, "Key": "signed/report.txt"}
    )
    job = make_job(POOL)
    client.create_task(
        job,
        {
            "id": "t",
            "commandLine": _sh("echo report > report.txt; echo a > a.log; echo b > b.log"),
            "outputFiles": [
                {
                    "filePattern": "report.txt",
                    "destination": {"container": {"containerUrl": signed}},
                    "uploadOptions": {"uploadCondition": "tasksuccess"},
                },
                {
                    "filePattern": "*.log",
                    "destination": {"container": {"containerUrl": web.url("up"), "path": "logs"}},
                    "uploadOptions": {"uploadCondition": "tasksuccess"},
                },
            ],
        },
    )
    task = wait_for_task(client, job, "t")
    assert task.execution_info.failure_info is None, task.execution_info.failure_info
    assert _objects(s3, "signed/") == {"signed/report.txt": b"report\n"}
    assert (web.directory / "put/up/logs/a.log").read_text() == "a\n"
    assert (web.directory / "put/up/logs/b.log").read_text() == "b\n"


def test_a_failed_upload_is_a_file_upload_error(
    client: BatchClient, make_job: Callable[..., str], web: HttpFileServer
) -> None:
    job = make_job(POOL, onTaskFailure="performexitoptionsjobaction")
    client.create_task(
        job,
        {
            "id": "t",
            "commandLine": _sh("echo x > r.txt"),
            "outputFiles": [
                {
                    "filePattern": "r.txt",
                    "destination": {"container": {"containerUrl": "s3://no-such-bucket-out"}},
                    "uploadOptions": {"uploadCondition": "taskcompletion"},
                },
                {
                    "filePattern": "r.txt",
                    "destination": {"container": {"containerUrl": web.url("denied")}},
                    "uploadOptions": {"uploadCondition": "taskcompletion"},
                },
            ],
            "exitConditions": {"fileUploadError": {"jobAction": "terminate"}},
        },
    )
    task = wait_for_task(client, job, "t")
    category, code, details = _failure(task)
    assert code == "FileUploadFailed"
    assert details.get("FilePattern") == "r.txt"
    assert task.execution_info.exit_code == 0  # the command itself succeeded
    assert task.execution_info.retry_count == 0
    errors = client.get_task_file(job, "t", "fileuploaderr.txt").decode()
    assert len(errors.splitlines()) == 2 and "HTTP 404" in errors and "HTTP 403" in errors
    job_state = client.get_job(job).state
    assert getattr(job_state, "value", job_state) in ("terminating", "completed")


# -- start task -----------------------------------------------------------------------------


def test_start_task_resource_files_and_their_failure(
    client: BatchClient, web: HttpFileServer, s3: S3Endpoint
) -> None:
    s3.client().put_object(
        Bucket=BUCKET, Key="tools/setup.sh", Body=b"echo set up > ../../shared/ready\n"
    )
    client.create_pool(
        {
            "id": "staging-start",
            "vmSize": "local",
            "targetDedicatedNodes": 1,
            "startTask": {
                "commandLine": "/bin/sh tools/setup.sh",
                "resourceFiles": [{"storageContainerUrl": f"s3://{BUCKET}/tools"}],
                "waitForSuccess": True,
            },
        }
    )
    client.create_pool(
        {
            "id": "staging-start-bad",
            "vmSize": "local",
            "targetDedicatedNodes": 1,
            "startTask": {
                "commandLine": "true",
                "resourceFiles": [{"httpUrl": web.url("missing.sh"), "filePath": "x.sh"}],
                "waitForSuccess": True,
            },
        }
    )
    try:
        (good,) = wait_for_nodes(client, "staging-start", 1, timeout=30)
        info = good.start_task_info
        assert info.exit_code == 0
        (bad,) = wait_for_nodes(
            client, "staging-start-bad", 1, states=("starttaskfailed",), timeout=30
        )
        failure = bad.start_task_info.failure_info
        assert failure.code == "BlobNotFound"
        assert {d.value for d in failure.details or []} == {"x.sh"}
    finally:
        client.delete_pool("staging-start")
        client.delete_pool("staging-start-bad")


# -- requests refused -----------------------------------------------------------------------


def _rf(**fields: str) -> dict[str, Any]:
    return {"resourceFiles": [fields]}


def _of(pattern: str, url: str = "s3://abc") -> dict[str, Any]:
    return {
        "outputFiles": [
            {
                "filePattern": pattern,
                "destination": {"container": {"containerUrl": url}},
                "uploadOptions": {"uploadCondition": "tasksuccess"},
            }
        ]
    }


_URL = "http://127.0.0.1/x"


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        (_rf(httpUrl=_URL, filePath="../x"), "resourceFiles[0].filePath"),
        (_rf(httpUrl=_URL, filePath="/etc/x"), "resourceFiles[0].filePath"),
        (_rf(httpUrl=_URL, filePath="a/../../x"), "resourceFiles[0].filePath"),
        (_rf(httpUrl=_URL), "resourceFiles[0].filePath"),
        (_rf(httpUrl="file:///etc/passwd", filePath="p"), "resourceFiles[0].httpUrl"),
        (_rf(httpUrl=_URL, filePath="x", fileMode="4755"), "resourceFiles[0].fileMode"),
        (_rf(httpUrl=_URL, filePath="x", fileMode="rwx"), "resourceFiles[0].fileMode"),
        (_rf(httpUrl=_URL, autoStorageContainerName="abc", filePath="x"), "resourceFiles[0]"),
        (_rf(filePath="x"), "resourceFiles[0]"),
        (_of("../../etc/*"), "outputFiles[0].filePattern"),
        (_of("/etc/passwd"), "outputFiles[0].filePattern"),
        (_of("*/../../x"), "outputFiles[0].filePattern"),
        (_of("x", "ftp://h/x"), "outputFiles[0].destination.container.containerUrl"),
    ],
)
def test_bad_file_specs_are_refused_and_nothing_is_added(
    client: BatchClient, make_job: Callable[..., str], extra: dict[str, Any], field: str
) -> None:
    job = make_job(POOL)
    with pytest.raises(BatchServiceError) as info:
        client.create_task(job, {"id": "bad", "commandLine": "true", **extra})
    assert info.value.values.get("PropertyName") == field, info.value
    assert [t.id for t in client.list_tasks(job)] == []


def test_bad_start_task_files_are_refused(client: BatchClient) -> None:
    with pytest.raises(BatchServiceError) as info:
        client.create_pool(
            {
                "id": "staging-refused",
                "vmSize": "local",
                "targetDedicatedNodes": 1,
                "startTask": {
                    "commandLine": "true",
                    "resourceFiles": [{"httpUrl": "http://127.0.0.1/x", "filePath": "../../x"}],
                },
            }
        )
    assert info.value.values.get("PropertyName") == "startTask.resourceFiles[0].filePath"
    assert "staging-refused" not in {p.id for p in client.list_pools()}


def test_preparation_task_files_are_there_for_the_job_s_tasks(
    client: BatchClient, make_job: Callable[..., str], s3: S3Endpoint
) -> None:
    s3.client().put_object(Bucket=BUCKET, Key="common/model.bin", Body=b"weights")
    job = make_job(
        POOL,
        jobPreparationTask={
            "commandLine": "true",
            "resourceFiles": [{"storageContainerUrl": f"s3://{BUCKET}/common"}],
        },
    )
    client.create_task(
        job,
        {"id": "t", "commandLine": _sh('cat "$AZ_BATCH_JOB_PREP_WORKING_DIR/common/model.bin"')},
    )
    task = wait_for_task(client, job, "t")
    assert task.execution_info.exit_code == 0
    assert client.get_task_file(job, "t", "stdout.txt") == b"weights"


def test_an_account_uses_only_the_buckets_it_is_given(
    tmp_path: Path, s3: S3Endpoint, web: HttpFileServer
) -> None:
    s3.client().create_bucket(Bucket="other-account-data")
    s3.client().put_object(Bucket="other-account-data", Key="secret.txt", Body=b"not yours")
    s3.client().put_object(Bucket=BUCKET, Key="mine/ok.txt", Body=b"yours")
    with embedded_client(
        tmp_path / "home",
        storage=s3.storage(),
        storage_bucket_access={"local": [BUCKET, "shared-*"]},
    ) as c:
        c.create_pool({"id": "p", "vmSize": "local", "targetDedicatedNodes": 1})
        c.create_job({"id": "j", "poolInfo": {"poolId": "p"}})
        out = {
            "filePattern": "x.txt",
            "destination": {"container": {"containerUrl": "s3://other-account-data/in"}},
            "uploadOptions": {"uploadCondition": "taskcompletion"},
        }
        c.create_tasks(
            "j",
            [
                {
                    "id": "read-other",
                    "commandLine": "true",
                    "resourceFiles": [{"storageContainerUrl": f"{s3.url}/other-account-data"}],
                },
                {"id": "write-other", "commandLine": "true", "outputFiles": [out]},
                {
                    "id": "own",
                    "commandLine": "cat mine/ok.txt",
                    "resourceFiles": [{"autoStorageContainerName": BUCKET, "blobPrefix": "mine/"}],
                },
                {  # plain URLs are the user's own business
                    "id": "http",
                    "commandLine": "true",
                    "resourceFiles": [{"httpUrl": web.url("hello.txt"), "filePath": "h.txt"}],
                },
            ],
        )
        for task_id in ("read-other", "write-other"):
            category, code, details = _failure(wait_for_task(c, "j", task_id, timeout=30))
            assert (category, code) == ("usererror", "BlobAccessDenied")
            assert "other-account-data" in details["ContainerUrl"]
        assert wait_for_task(c, "j", "own", timeout=30).execution_info.exit_code == 0
        assert c.get_task_file("j", "own", "stdout.txt") == b"yours"
        assert wait_for_task(c, "j", "http", timeout=30).execution_info.exit_code == 0
    assert "in/x.txt" not in {
        o["Key"]
        for o in s3.client().list_objects_v2(Bucket="other-account-data").get("Contents", [])
    }
