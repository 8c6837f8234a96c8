"""``ObjectStorage`` against moto's S3 server on loopback: naming containers, signing URLs that
work without credentials, prefix listing, and configuration from prefect-aws blocks or settings."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import pytest

from prefect_batch.providers.storage import ObjectStorage, StagingError
from prefect_batch.settings import BatchSettings
from prefect_batch.testing.storage import S3Endpoint, moto_s3_server

BUCKET = "store-tests"


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Endpoint]:
    with moto_s3_server(buckets=(BUCKET,)) as endpoint:
        c = endpoint.client()
        for i in range(3):
            c.put_object(Bucket=BUCKET, Key=f"p/{i}.txt", Body=f"{i}".encode())
        c.put_object(Bucket=BUCKET, Key="p/", Body=b"")  # a "directory" marker
        yield endpoint


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        data: bytes = response.read()
        return data


def test_container_urls_of_every_form(s3: S3Endpoint) -> None:
    storage = s3.storage()
    assert storage.container_of("s3://b-1/x/y") == ("b-1", "x/y")
    assert storage.container_of(f"{s3.url}/b-2/pre") == ("b-2", "pre")
    assert storage.container_of("https://b-3.s3.eu-west-1.amazonaws.com/k") == ("b-3", "k")
    assert storage.container_of("https://elsewhere.example/b/k") is None
    assert storage.container_of(f"{s3.url}/b/k?X-Amz-Signature=1") is None  # a signed URL


def test_downloads_are_presigned_urls_that_need_no_credentials(s3: S3Endpoint) -> None:
    entries = s3.storage().downloads(
        [{"storageContainerUrl": f"s3://{BUCKET}/p/", "filePath": "in", "fileMode": "0600"}]
    )
    assert sorted(e["path"] for e in entries) == ["in/p/0.txt", "in/p/1.txt", "in/p/2.txt"]
    assert {e["mode"] for e in entries} == {0o600}
    assert all("X-Amz-Signature" in e["url"] for e in entries)
    assert sorted(_fetch(e["url"]) for e in entries) == [b"0", b"1", b"2"]


def test_listing_errors_carry_azure_codes(s3: S3Endpoint) -> None:
    storage = s3.storage()
    with pytest.raises(StagingError) as info:
        storage.downloads([{"storageContainerUrl": "s3://no-such-bucket-x"}])
    assert (info.value.code, info.value.category) == ("ContainerNotFound", "usererror")
    with pytest.raises(StagingError) as info:
        storage.downloads([{"storageContainerUrl": f"s3://{BUCKET}", "blobPrefix": "zzz"}])
    assert info.value.code == "BlobNotFound"
    assert info.value.values == {"ContainerUrl": f"s3://{BUCKET}", "BlobPrefix": "zzz"}
    # Nothing listens on port 9: a server error, not the user's.
    unreachable = ObjectStorage(
        endpoint_url="http://127.0.0.1:9",
        access_key_id="a",
        secret_access_key="b",
        client_config={"retries": {"max_attempts": 1}, "connect_timeout": 1},
    )
    with pytest.raises(StagingError) as info:
        unreachable.downloads([{"autoStorageContainerName": BUCKET}])
    assert (info.value.code, info.value.category) == ("BlobDownloadMiscError", "servererror")


def test_upload_targets_are_policies_limited_to_their_keys(s3: S3Endpoint) -> None:
    storage = s3.storage()
    (single, tree) = storage.uploads(
        [
            {
                "filePattern": "out/r.txt",
                "destination": {"container": {"containerUrl": f"s3://{BUCKET}/res"}},
                "uploadOptions": {"uploadCondition": "taskSuccess"},
            },
            {
                "filePattern": "out/**/*.csv",
                "destination": {"container": {"containerUrl": f"s3://{BUCKET}/res", "path": "t"}},
                "uploadOptions": {"uploadCondition": "taskcompletion"},
            },
        ]
    )
    assert (single["single"], single["name"], single["condition"]) == (True, "r.txt", "tasksuccess")
    assert single["target"]["method"] == "POST" and single["target"]["key_prefix"] == "res"
    assert (tree["single"], tree["name"], tree["base"]) == (False, "t", "out")
    with pytest.raises(StagingError) as info:
        storage.uploads(
            [
                {
                    "filePattern": "x",
                    "destination": {
                        "container": {
                            "containerUrl": f"s3://{BUCKET}",
                            "uploadHeaders": [{"name": "x-amz-acl", "value": "public-read"}],
                        }
                    },
                    "uploadOptions": {"uploadCondition": "taskcompletion"},
                }
            ]
        )
    assert info.value.code == "UnsupportedUploadHeader"


def test_storage_from_a_prefect_aws_block(s3: S3Endpoint) -> None:
    from prefect_aws import AwsCredentials, S3Bucket

    creds = AwsCredentials(
        aws_access_key_id=s3.access_key_id,
        aws_secret_access_key=s3.secret_access_key,
        region_name=s3.region,
        aws_client_parameters={"endpoint_url": s3.url},
    )
    storage = ObjectStorage.from_block(S3Bucket(bucket_name=BUCKET, credentials=creds))
    assert storage.endpoint_url == s3.url
    assert _fetch(storage.presign_get(BUCKET, "p/1.txt")) == b"1"
    assert s3.secret_access_key not in repr(storage)


def test_storage_from_settings_and_the_aws_environment(
    s3: S3Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.secret_access_key)
    monkeypatch.setenv("PREFECT_BATCH_STORAGE_ENDPOINT_URL", s3.url)
    monkeypatch.setenv("PREFECT_BATCH_STORAGE_REGION", s3.region)
    storage = ObjectStorage.from_settings(BatchSettings())
    assert storage.endpoint_url == s3.url and storage.region == s3.region
    assert _fetch(storage.presign_get(BUCKET, "p/2.txt")) == b"2"
    assert s3.secret_access_key not in repr(storage)
