"""``$filter``, ``$select`` and paging, as pure functions (no server)."""

from __future__ import annotations

import pytest

from prefect_batch.api.odata import (
    decode_token,
    encode_token,
    page,
    parse_filter,
    parse_max_results,
    parse_select,
    select,
)
from prefect_batch.exceptions import BatchInvalidRequestError

TASK = {
    "id": "frame-007",
    "state": "completed",
    "priority": 10,
    "creationTime": "2026-01-02T03:04:05Z",
    "executionInfo": {"exitCode": 3, "result": "failure"},
}

CASES = [
    ("state eq 'completed'", True),
    ("state eq 'active'", False),
    ("state ne 'active'", True),
    ("State eq 'completed'", False),  # property names are case-sensitive wire names
    ("executionInfo/result eq 'failure'", True),
    ("executionInfo/exitCode gt 2 and executionInfo/exitCode le 3", True),
    ("executionInfo/missing eq null", True),
    ("startswith(id, 'frame-')", True),
    ("startswith(id,'job')", False),
    ("endswith(id,'007')", True),
    ("not startswith(id, 'frame-')", False),
    ("state eq 'active' or state eq 'completed'", True),
    ("(state eq 'active' or state eq 'running') and priority ge 0", False),
    ("priority lt 10.5", True),
    ("creationTime gt datetime'2026-01-01T00:00:00Z'", True),
    ("creationTime lt datetime'2026-01-01T00:00:00Z'", False),
    ("id eq 'it''s'", False),
    ("'completed' eq state", True),
    ("priority gt 'x'", False),  # incomparable: false, not an error
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_filter_evaluates(text: str, expected: bool) -> None:
    flt = parse_filter(text)
    assert flt is not None
    assert flt(TASK) is expected


@pytest.mark.parametrize(
    "text",
    [
        "state eq",
        "state equals 'x'",
        "(state eq 'a'",
        "state eq 'a' and",
        "startswith(id)",
        "state eq 'unterminated",
        "datetime'nope' eq creationTime",
        "state eq 'a' extra",
    ],
)
def test_bad_filters_name_the_parameter(text: str) -> None:
    with pytest.raises(BatchInvalidRequestError) as info:
        parse_filter(text)
    assert info.value.code == "InvalidQueryParameterValue"
    assert info.value.values["QueryParameterName"] == "$filter"


@pytest.mark.parametrize(
    ("text", "states"),
    [
        ("state eq 'active'", {"active"}),
        ("state eq 'active' or state eq 'running'", {"active", "running"}),
        ("state eq 'active' and startswith(id,'x')", {"active"}),
        ("(state eq 'a' or state eq 'b') and state eq 'b'", {"b"}),
        ("state eq 'active' or startswith(id,'x')", None),
        ("startswith(id,'x')", None),
        ("state ne 'active'", None),
        ("not state eq 'active'", None),
        ("state eq 5", set()),
    ],
)
def test_filter_tells_which_states_it_allows(text: str, states: set[str] | None) -> None:
    flt = parse_filter(text)
    assert flt is not None
    assert flt.states == (None if states is None else frozenset(states))


def test_filters_too_long_or_too_deep_are_refused() -> None:
    for text in ("(" * 1500 + "state eq 'a'" + ")" * 1500, "id eq 'x'" + " or id eq 'x'" * 400):
        with pytest.raises(BatchInvalidRequestError) as info:
            parse_filter(text)
        assert info.value.code == "InvalidQueryParameterValue"


def test_no_filter() -> None:
    assert parse_filter(None) is None
    assert parse_filter("  ") is None


def test_select() -> None:
    names = parse_select("id, state")
    assert select(TASK, names) == {"id": "frame-007", "state": "completed"}
    assert select(TASK, parse_select(None)) is TASK
    with pytest.raises(BatchInvalidRequestError):
        parse_select("id,,state")


def test_max_results() -> None:
    assert parse_max_results(None) == 1000
    assert parse_max_results(1) == 1
    for bad in (0, 1001, -5):
        with pytest.raises(BatchInvalidRequestError):
            parse_max_results(bad)


def test_paging_walks_every_item_once_even_when_items_change() -> None:
    items = [{"id": f"p{i:02d}", "creationTime": f"2026-01-01T00:00:{i:02d}Z"} for i in range(10)]

    def key(item: dict) -> tuple[str, str]:
        return item["creationTime"], item["id"]

    first, marker = page(items, key, None, 4)
    assert [i["id"] for i in first] == ["p00", "p01", "p02", "p03"]
    token = encode_token(marker)
    # p03 (the marker) and p05 go away between the pages: nothing is skipped or repeated.
    remaining = [i for i in items if i["id"] not in ("p03", "p05")]
    second, marker = page(remaining, key, decode_token(token), 4)
    assert [i["id"] for i in second] == ["p04", "p06", "p07", "p08"]
    last, marker = page(remaining, key, marker, 4)
    assert [i["id"] for i in last] == ["p09"] and marker is None


def test_tokens_are_opaque_and_checked() -> None:
    assert decode_token(encode_token([1, "a"])) == [1, "a"]
    assert decode_token(None) is None
    with pytest.raises(BatchInvalidRequestError):
        decode_token("***")
    with pytest.raises(BatchInvalidRequestError):
        page([{"id": "a"}], lambda i: (i["id"],), [1], 10)
