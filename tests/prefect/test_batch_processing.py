"""The batch-processing scenario from S3 to S3: a flow lists the input prefix with a prefect-aws
``S3Bucket`` block, each batch task gets its input as a resource file and returns its output as
an output file, all against moto's S3 server on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from prefect_batch.blocks import BatchPool
from prefect_batch.flows import batch_processing, using_client
from prefect_batch.testing import embedded_client
from prefect_batch.testing.storage import S3Endpoint, moto_s3_server

BUCKET = "scenario-data"


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Endpoint]:
    with moto_s3_server(buckets=(BUCKET,)) as endpoint:
        yield endpoint


def test_batch_processing_reads_s3_inputs_and_writes_s3_outputs(
    prefect_api: None, s3: S3Endpoint, tmp_path: Path
) -> None:
    from prefect_aws import AwsCredentials, S3Bucket

    c = s3.client()
    docs = {"doc0.txt": "one two", "doc1.txt": "three four five", "sub dir/doc 2.txt": "six"}
    for name, text in docs.items():
        c.put_object(Bucket=BUCKET, Key=f"inbox/{name}", Body=text.encode())
    c.put_object(Bucket=BUCKET, Key="inbox/skip.csv", Body=b"not matched")
    bucket_block = S3Bucket(
        bucket_name=BUCKET,
        credentials=AwsCredentials(
            aws_access_key_id=s3.access_key_id,
            aws_secret_access_key=s3.secret_access_key,
            region_name=s3.region,
            aws_client_parameters={"endpoint_url": s3.url},
        ),
    )
    with embedded_client(tmp_path / "home", storage=s3.storage()) as client:
        with using_client(client):
            pool = BatchPool(pool_id="processing", target_dedicated_nodes=2)
            pool.ensure(client)
            result = batch_processing(
                pool=pool,
                inputs=f"s3://{BUCKET}/inbox/",
                outputs=f"s3://{BUCKET}/outbox",
                pattern="*.txt",
                storage=bucket_block,
            )
    assert len(result.tasks) == 3
    listed = c.list_objects_v2(Bucket=BUCKET, Prefix="outbox/")["Contents"]
    outputs = {
        o["Key"]: c.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read().split()[0]
        for o in listed
    }
    assert outputs == {
        "outbox/doc0.txt.out": b"2",
        "outbox/doc1.txt.out": b"3",
        "outbox/doc 2.txt.out": b"1",
    }
