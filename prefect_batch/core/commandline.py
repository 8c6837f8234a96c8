"""Task command lines and environment settings, checked before a task is accepted.

Azure Batch runs a task's command line on Linux **without a shell**: the line is split into words
the way a POSIX shell would split it (quotes and backslashes group and escape), and the first word
is the program. Nothing else a shell does happens: no ``$VAR`` expansion, no globbing, no pipes or
redirections, no ``#`` comments. A user who wants a shell writes ``/bin/sh -c "..."``.
:func:`split_command_line` is that split, done once here so the service can reject a malformed
line when the task is added, and the node agent receives the words, not a string to re-parse.

:func:`validate_environment` checks a task's ``environmentSettings`` (or a job's
``commonEnvironmentSettings``). The ``AZ_BATCH_*`` variables belong to the node, which sets them
for every task; a task may not set or override one.

Both refuse values over a documented size (:data:`MAX_COMMAND_LINE_LENGTH`,
:data:`MAX_ENVIRONMENT_VALUE_LENGTH`) and run in time linear in their input (``shlex`` builds each
word one character at a time, quadratic in a long word: a 1 MiB word took seconds), so the
service checks a request in milliseconds, before it opens a write transaction.

This module does not look up programs, expand variables or build the environment a task finally
runs with (the node agent merges node, job and task variables); it only validates and splits.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from prefect_batch.exceptions import invalid_property

__all__ = [
    "MAX_COMMAND_LINE_LENGTH",
    "MAX_ENVIRONMENT_NAME_LENGTH",
    "MAX_ENVIRONMENT_VALUE_LENGTH",
    "RESERVED_ENV_PREFIX",
    "TERMINATE_GRACE_VARIABLE",
    "split_command_line",
    "validate_environment",
]

RESERVED_ENV_PREFIX = "AZ_BATCH_"
"""Variables with this prefix are set by the node; a task cannot set or override them."""

MAX_COMMAND_LINE_LENGTH = 65_536
"""Longest command line accepted, in characters (Linux refuses one argument over 128 KiB)."""
MAX_ENVIRONMENT_NAME_LENGTH = 1_024
"""Longest environment variable name accepted, in characters."""
MAX_ENVIRONMENT_VALUE_LENGTH = 65_536
"""Longest environment variable value accepted, in characters."""

# One piece of a word, as shlex (posix, whitespace_split, no commenters) reads it: plain
# characters, a single-quoted run, a double-quoted run (backslash escapes only " and \ there),
# a backslash-escaped character, or a run of the whitespace that separates words. The double
# quote pattern is the unrolled loop, so a long unclosed quote fails in linear time.
_PIECE = re.compile(
    r"""([^ \t\r\n'"\\]+)|'([^']*)'|"([^"\\]*(?:\\.[^"\\]*)*)"|\\(.)|([ \t\r\n]+)""",
    re.DOTALL,
)
_DQ_ESCAPE = re.compile(r'\\(["\\])')


def split_command_line(command_line: str, prop: str = "commandLine") -> list[str]:
    """Split a command line into program and arguments, as a POSIX shell splits words.

    Single quotes, double quotes and backslashes work as in ``sh``; ``#`` is an ordinary
    character; ``$``, ``*``, ``|``, ``>`` and friends are kept literally. ``''`` gives an empty
    argument.

    Args:
        command_line: The task's ``commandLine``.
        prop: The property name to report in the error.

    Returns:
        The words; the first is the program.

    Raises:
        BatchInvalidRequestError: ``InvalidPropertyValue`` naming ``prop`` when the line is not a
            string, is longer than :data:`MAX_COMMAND_LINE_LENGTH`, is empty or only whitespace,
            contains a NUL character, has an unbalanced quote or ends in a lone backslash, or its
            program (first word) is empty.
    """
    if not isinstance(command_line, str):
        raise invalid_property(prop, command_line, "the command line must be a string")
    if len(command_line) > MAX_COMMAND_LINE_LENGTH:
        raise invalid_property(
            prop,
            f"{command_line[:64]}... ({len(command_line)} characters)",
            f"the command line is longer than {MAX_COMMAND_LINE_LENGTH} characters",
        )
    if "\x00" in command_line:
        raise invalid_property(
            prop, command_line, "the command line must not contain a NUL character"
        )
    if not command_line.strip():
        raise invalid_property(prop, command_line, "the command line must not be empty")
    words = _split_words(command_line, prop)
    if not words or not words[0]:
        raise invalid_property(prop, command_line, "the command line names no program")
    return words


def _split_words(line: str, prop: str) -> list[str]:
    """The words of ``line``, exactly as ``shlex`` in POSIX mode splits them, in linear time."""
    words: list[str] = []
    parts: list[str] = []
    in_word = False  # a quoted empty string ('') still makes a word
    pos, end = 0, len(line)
    while pos < end:
        m = _PIECE.match(line, pos)
        if m is None:  # an unclosed quote, or a backslash at the very end
            rest = line[pos:]
            if rest == "\\" or (rest.startswith('"') and _ends_inside_escape(rest)):
                reason = "the command line ends with an unescaped backslash"
            else:
                reason = "the command line has an unbalanced quote"
            raise invalid_property(prop, line[:200], reason)
        plain, single, double, escaped, space = m.groups()
        pos = m.end()
        if space is not None:
            if in_word:
                words.append("".join(parts))
                parts, in_word = [], False
            continue
        in_word = True
        if plain is not None:
            parts.append(plain)
        elif single is not None:
            parts.append(single)
        elif double is not None:
            parts.append(_DQ_ESCAPE.sub(r"\1", double) if "\\" in double else double)
        else:
            parts.append(escaped)
    if in_word:
        words.append("".join(parts))
    return words


def _ends_inside_escape(rest: str) -> bool:
    """Whether an unclosed double-quoted ``rest`` ends in a backslash escaping nothing."""
    trailing = len(rest) - len(rest.rstrip("\\"))
    return trailing % 2 == 1


TERMINATE_GRACE_VARIABLE = "PREFECT_BATCH_TERMINATE_GRACE_SECONDS"
"""The task option: seconds between SIGTERM and SIGKILL when the task is terminated."""


def _is_seconds(text: str) -> bool:
    try:
        value = float(text)
    except ValueError:
        return False
    return 0 <= value <= 600


def validate_environment(
    settings: Sequence[tuple[str, str | None]], prop: str = "environmentSettings"
) -> dict[str, str]:
    """Check environment settings and return them as a mapping.

    Args:
        settings: ``(name, value)`` pairs in request order; a ``None`` value means empty.
        prop: The property name to report in the error.

    Returns:
        ``{name: value}``. When a name repeats, the last value wins (it keeps the position of
        its first occurrence).

    Raises:
        BatchInvalidRequestError: ``InvalidPropertyValue`` naming ``prop`` when a name is empty,
            contains ``=`` or NUL, starts with ``AZ_BATCH_`` (those are set by the node and
            cannot be overridden), a value contains NUL, or a name or value is longer than
            :data:`MAX_ENVIRONMENT_NAME_LENGTH` / :data:`MAX_ENVIRONMENT_VALUE_LENGTH`. Names
            are case-sensitive, as on Linux: ``az_batch_x`` is an ordinary variable.
    """
    env: dict[str, str] = {}
    for name, value in settings:
        if not isinstance(name, str) or not name:
            raise invalid_property(prop, name, "an environment variable name must not be empty")
        if "=" in name:
            raise invalid_property(
                prop, name, f"the environment variable name {name!r} must not contain '='"
            )
        if "\x00" in name:
            raise invalid_property(
                prop, name, f"the environment variable name {name!r} must not contain NUL"
            )
        if len(name) > MAX_ENVIRONMENT_NAME_LENGTH:
            raise invalid_property(
                prop,
                name[:64] + "...",
                f"an environment variable name is longer than {MAX_ENVIRONMENT_NAME_LENGTH} "
                "characters",
            )
        if name.startswith(RESERVED_ENV_PREFIX):
            raise invalid_property(
                prop,
                name,
                f"the environment variable {name} is reserved: variables starting with "
                f"{RESERVED_ENV_PREFIX} are set by the node and a task cannot set or override them",
            )
        text = "" if value is None else value
        if not isinstance(text, str):
            raise invalid_property(
                prop, text, f"the value of the environment variable {name} must be a string"
            )
        if "\x00" in text:
            raise invalid_property(
                prop, name, f"the value of the environment variable {name} must not contain NUL"
            )
        if len(text) > MAX_ENVIRONMENT_VALUE_LENGTH:
            raise invalid_property(
                prop,
                name,
                f"the value of the environment variable {name} is longer than "
                f"{MAX_ENVIRONMENT_VALUE_LENGTH} characters",
            )
        if name == TERMINATE_GRACE_VARIABLE and not _is_seconds(text):
            raise invalid_property(
                prop, name, f"{name} must be a number of seconds between 0 and 600"
            )
        env[name] = text
    return env
