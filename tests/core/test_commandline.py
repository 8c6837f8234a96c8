"""Command-line splitting (POSIX words, no shell) and environment setting checks."""

from __future__ import annotations

import pytest

from prefect_batch.core.commandline import split_command_line, validate_environment
from prefect_batch.exceptions import BatchInvalidRequestError


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("echo hello", ["echo", "hello"]),
        ("  echo   spaced\tout  ", ["echo", "spaced", "out"]),
        ("/bin/sh -c 'echo $HOME | wc -c'", ["/bin/sh", "-c", "echo $HOME | wc -c"]),
        ('python -c "print(1)"', ["python", "-c", "print(1)"]),
        ("echo '' x", ["echo", "", "x"]),
        (r"echo a\ b", ["echo", "a b"]),
        (r'echo "say \"hi\""', ["echo", 'say "hi"']),
        ("echo 'it''s'", ["echo", "its"]),
        ("echo #not-a-comment", ["echo", "#not-a-comment"]),
        ("echo a#b # c", ["echo", "a#b", "#", "c"]),
        ("echo $HOME *.txt", ["echo", "$HOME", "*.txt"]),  # no expansion, no globbing
        ("cmd >out 2>&1 | tee", ["cmd", ">out", "2>&1", "|", "tee"]),  # no redirection
        ("a;b", ["a;b"]),
        ("printf 'line1\nline2'", ["printf", "line1\nline2"]),
    ],
)
def test_split(line: str, words: list[str]) -> None:
    assert split_command_line(line) == words


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("", "empty"),
        ("   \t\n", "empty"),
        ("echo 'unbalanced", "unbalanced quote"),
        ('echo "unbalanced', "unbalanced quote"),
        ("echo trailing\\", "backslash"),
        ("echo a\x00b", "NUL"),
        ("'' arg", "names no program"),
    ],
)
def test_split_rejects(line: str, reason: str) -> None:
    with pytest.raises(BatchInvalidRequestError, match=reason) as info:
        split_command_line(line, "jobManagerTask.commandLine")
    assert info.value.code == "InvalidPropertyValue"
    assert info.value.values["PropertyName"] == "jobManagerTask.commandLine"


def test_split_default_property_name() -> None:
    with pytest.raises(BatchInvalidRequestError) as info:
        split_command_line("")
    assert info.value.values["PropertyName"] == "commandLine"


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ([], {}),
        ([("A", "1"), ("B", None)], {"A": "1", "B": ""}),
        ([("A", "1"), ("A", "2")], {"A": "2"}),  # last wins
        ([("PATH", "/x:/y"), ("az_batch_lower", "ok")], {"PATH": "/x:/y", "az_batch_lower": "ok"}),
        ([("X", "a=b")], {"X": "a=b"}),  # "=" is fine in a value
        ([("AZ_BATCHY", "1")], {"AZ_BATCHY": "1"}),  # not the reserved prefix
    ],
)
def test_environment_accepts(
    settings: list[tuple[str, str | None]], expected: dict[str, str]
) -> None:
    assert validate_environment(settings) == expected


@pytest.mark.parametrize(
    ("settings", "reason"),
    [
        ([("", "x")], "must not be empty"),
        ([("A=B", "x")], "must not contain '='"),
        ([("A\x00", "x")], "NUL"),
        ([("A", "x\x00y")], "NUL"),
        ([("AZ_BATCH_NODE_ID", "fake")], "AZ_BATCH_NODE_ID is reserved"),
        ([("OK", "1"), ("AZ_BATCH_TASK_WORKING_DIR", "/tmp")], "AZ_BATCH_TASK_WORKING_DIR"),
    ],
)
def test_environment_rejects(settings: list[tuple[str, str | None]], reason: str) -> None:
    with pytest.raises(BatchInvalidRequestError, match=reason) as info:
        validate_environment(settings, "commonEnvironmentSettings")
    assert info.value.values["PropertyName"] == "commonEnvironmentSettings"
