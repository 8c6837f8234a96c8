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


def _random_lines(count: int) -> list[str]:
    # Lines over the characters that matter to the split, so quotes, escapes and whitespace
    # meet in every combination; seeded, so a failure repeats.
    import random

    rng = random.Random(22)
    alphabet = ["a", "b", " ", "\t", "\n", "'", '"', "\\", "#", "$", "é"]
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 14))) for _ in range(count)]


def _shlex_words(line: str) -> list[str] | str:
    import shlex

    lexer = shlex.shlex(line, posix=True)
    lexer.whitespace_split = True
    lexer.commenters = ""
    try:
        return list(lexer)
    except ValueError as exc:
        return "unbalanced quote" if "quotation" in str(exc) else "backslash"


def test_split_matches_shlex() -> None:
    """The linear splitter gives shlex's words (POSIX mode) and refuses what shlex refuses."""
    checked = 0
    for line in _random_lines(20_000):
        expected = _shlex_words(line)
        if isinstance(expected, list) and (not expected or not expected[0]):
            continue  # empty, or no program: refused by another rule
        if isinstance(expected, str):
            with pytest.raises(BatchInvalidRequestError, match=expected):
                split_command_line(line)
        else:
            assert split_command_line(line) == expected, repr(line)
        checked += 1
    assert checked > 10_000


def test_split_long_word_and_limit() -> None:
    from prefect_batch.core.commandline import MAX_COMMAND_LINE_LENGTH

    word = "x" * (MAX_COMMAND_LINE_LENGTH - 5)
    assert split_command_line(f"echo {word}") == ["echo", word]
    assert split_command_line(f'echo "{word[:-3]}"') == ["echo", word[:-3]]
    with pytest.raises(BatchInvalidRequestError, match="longer than") as info:
        split_command_line("x" * (1024 * 1024), "startTask.commandLine")
    assert info.value.values["PropertyName"] == "startTask.commandLine"
    assert len(info.value.values["PropertyValue"]) < 200  # the error does not echo 1 MiB


def test_split_long_unclosed_quote_is_refused() -> None:
    from prefect_batch.core.commandline import MAX_COMMAND_LINE_LENGTH

    with pytest.raises(BatchInvalidRequestError, match="unbalanced quote"):
        split_command_line('echo "' + "y" * (MAX_COMMAND_LINE_LENGTH - 10))


def test_environment_limits() -> None:
    from prefect_batch.core.commandline import (
        MAX_ENVIRONMENT_NAME_LENGTH,
        MAX_ENVIRONMENT_VALUE_LENGTH,
    )

    ok = validate_environment([("V", "v" * MAX_ENVIRONMENT_VALUE_LENGTH)])
    assert len(ok["V"]) == MAX_ENVIRONMENT_VALUE_LENGTH
    with pytest.raises(BatchInvalidRequestError, match="value of the environment variable V") as e:
        validate_environment([("V", "v" * (MAX_ENVIRONMENT_VALUE_LENGTH + 1))], "x.env")
    assert e.value.values["PropertyName"] == "x.env"
    with pytest.raises(BatchInvalidRequestError, match="name is longer"):
        validate_environment([("N" * (MAX_ENVIRONMENT_NAME_LENGTH + 1), "v")])
