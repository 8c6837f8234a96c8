"""The pure rules for resource and output file specs (``core.staging``)."""

from __future__ import annotations

import pytest

from prefect_batch.core.staging import (
    check_relative_path,
    glob_base,
    parse_file_mode,
    validate_output_files,
    validate_resource_files,
)
from prefect_batch.exceptions import BatchInvalidRequestError


@pytest.mark.parametrize(
    ("path", "allow_up", "expected"),
    [
        ("a/b.txt", 0, "a/b.txt"),
        ("./a//b.txt", 0, "a/b.txt"),
        ("../stdout.txt", 1, "../stdout.txt"),
        ("../*.txt", 1, "../*.txt"),
        ("out/**/*.csv", 1, "out/**/*.csv"),
    ],
)
def test_relative_paths_inside_are_accepted(path: str, allow_up: int, expected: str) -> None:
    assert check_relative_path(path, "f", allow_up=allow_up) == expected


@pytest.mark.parametrize(
    ("path", "allow_up"),
    [
        ("/etc/passwd", 0),
        ("\\\\server\\share", 0),
        ("C:/x", 0),
        ("..", 0),
        ("../x", 0),
        ("a/../../x", 0),
        ("a/../b", 0),
        ("x/../../stdout.txt", 1),
        ("../../x", 1),
        ("*/../../x", 1),
        ("*/../x", 1),  # ".." after a glob could climb anywhere the glob matched
        ("..", 1),
        ("", 0),
        ("a\x00b", 0),
    ],
)
def test_paths_that_leave_are_refused(path: str, allow_up: int) -> None:
    with pytest.raises(BatchInvalidRequestError) as info:
        check_relative_path(path, "where", allow_up=allow_up)
    assert info.value.values["PropertyName"] == "where"


def test_file_modes() -> None:
    assert parse_file_mode(None, "m") is None
    assert parse_file_mode("0644", "m") == 0o644
    assert parse_file_mode("755", "m") == 0o755
    for bad in ("4755", "1777", "0999", "rw", "12", "07777"):
        with pytest.raises(BatchInvalidRequestError):
            parse_file_mode(bad, "m")


def test_glob_base() -> None:
    assert glob_base("out/a/*.txt") == "out/a"
    assert glob_base("out/**/x.csv") == "out"
    assert glob_base("*.txt") == ""
    assert glob_base("../std*.txt") == ".."


def test_resource_files_need_exactly_one_source_and_a_path_for_urls() -> None:
    ok = [
        {"httpUrl": "https://example.invalid/x", "filePath": "x"},
        {"storageContainerUrl": "s3://bucket/prefix", "blobPrefix": "a/"},
        {"storageContainerUrl": "http://127.0.0.1:9000/bucket"},
        {"autoStorageContainerName": "my-bucket", "filePath": "dir", "fileMode": "0600"},
    ]
    validate_resource_files(ok, "resourceFiles")
    cases = [
        ({"httpUrl": "https://h/x", "storageContainerUrl": "s3://abc", "filePath": "x"}, "rf[0]"),
        ({"httpUrl": "https://h/x"}, "rf[0].filePath"),
        ({"httpUrl": "https://h/x", "filePath": "x", "blobPrefix": "p"}, "rf[0].blobPrefix"),
        ({"storageContainerUrl": "s3://UPPER"}, "rf[0].storageContainerUrl"),
        ({"autoStorageContainerName": "a"}, "rf[0].autoStorageContainerName"),
        ({"httpUrl": "gopher://h/x", "filePath": "x"}, "rf[0].httpUrl"),
        (
            {"httpUrl": "https://h/x", "filePath": "x", "identityReference": {"resourceId": "r"}},
            "rf[0].identityReference",
        ),
    ]
    for item, field in cases:
        with pytest.raises(BatchInvalidRequestError) as info:
            validate_resource_files([item], "rf")
        assert info.value.values["PropertyName"] == field, item


def test_output_files_need_a_destination_and_a_known_condition() -> None:
    good = {
        "filePattern": "../stdout.txt",
        "destination": {"container": {"containerUrl": "s3://bucket/logs", "path": "a/b"}},
        "uploadOptions": {"uploadCondition": "taskCompletion"},
    }
    validate_output_files([good], "of")
    cases = [
        ({**good, "destination": {}}, "of[0].destination.container"),
        (
            {**good, "uploadOptions": {"uploadCondition": "always"}},
            "of[0].uploadOptions.uploadCondition",
        ),
        (
            {**good, "destination": {"container": {"containerUrl": "s3://bucket", "path": "../x"}}},
            "of[0].destination.container.path",
        ),
    ]
    for item, field in cases:
        with pytest.raises(BatchInvalidRequestError) as info:
            validate_output_files([item], "of")
        assert info.value.values["PropertyName"] == field
