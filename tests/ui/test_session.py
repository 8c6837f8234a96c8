"""Sessions of the web page: who gets a cookie, when it stops working, and the CSRF token."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from prefect_batch.api.auth import KeyRing
from prefect_batch.service.ops.accounts import Account, AccountOperations
from prefect_batch.store import Store
from prefect_batch.ui.session import Sessions


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(f"sqlite:///{tmp_path / 'batch.db'}")
    yield store
    store.dispose()


@pytest.fixture
def account(store: Store) -> Account:
    return AccountOperations(store).create("acct")


def sessions(store: Store, clock: Clock, **options: object) -> Sessions:
    # No key cache: each check reads the store, so a rotation shows at once.
    return Sessions(KeyRing(store, ttl_seconds=0.0), clock=clock, **options)  # type: ignore[arg-type]


def test_either_key_signs_in_and_a_wrong_one_or_an_unknown_account_does_not(
    store: Store, account: Account
) -> None:
    s = sessions(store, Clock())
    other = AccountOperations(store).create("other")
    for key in (account.primary, account.secondary):
        session = s.check(s.sign_in("acct", key))
        assert session is not None and session.account == "acct"
    assert s.sign_in("acct", other.primary) is None
    assert s.sign_in("nobody", account.primary) is None
    assert s.sign_in("acct", "not base64 !") is None
    assert s.sign_in("acct", "") is None
    assert s.sign_in("", account.primary) is None


def test_the_cookie_holds_no_key_and_a_changed_byte_makes_it_worthless(
    store: Store, account: Account
) -> None:
    s = sessions(store, Clock())
    cookie = s.sign_in("acct", account.primary)
    assert cookie is not None
    body, _, mac = cookie.partition(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    assert account.primary not in cookie and set(payload) == {"a", "e", "s", "k"}
    # Claim another account with the same signature: refused.
    forged = dict(payload, a="other")
    forged_body = base64.urlsafe_b64encode(json.dumps(forged).encode()).rstrip(b"=").decode()
    assert s.check(f"{forged_body}.{mac}") is None
    assert s.check(cookie[:-2] + ("AA" if cookie[-2:] != "AA" else "BB")) is None
    assert s.check("garbage") is None and s.check(None) is None and s.check("a.b") is None
    # Another app's secret does not accept this app's cookies.
    assert sessions(store, Clock()).check(cookie) is None


def test_a_session_expires(store: Store, account: Account) -> None:
    clock = Clock()
    s = sessions(store, clock, max_age=3600)
    cookie = s.sign_in("acct", account.primary)
    clock.now += 3599
    assert s.check(cookie) is not None
    clock.now += 2
    assert s.check(cookie) is None


def test_rotating_the_key_ends_its_sessions_only(store: Store, account: Account) -> None:
    s = sessions(store, Clock())
    with_primary = s.sign_in("acct", account.primary)
    with_secondary = s.sign_in("acct", account.secondary)
    AccountOperations(store).rotate("acct", "primary")
    assert s.check(with_primary) is None
    assert s.check(with_secondary) is not None
    AccountOperations(store).delete("acct")
    assert s.check(with_secondary) is None


def test_the_csrf_token_belongs_to_one_session(store: Store, account: Account) -> None:
    s = sessions(store, Clock())
    one = s.check(s.sign_in("acct", account.primary))
    two = s.check(s.sign_in("acct", account.primary))
    assert one is not None and two is not None
    token = s.csrf_token(one)
    assert s.csrf_ok(one, token)
    assert not s.csrf_ok(two, token)
    assert not s.csrf_ok(one, None) and not s.csrf_ok(one, "") and not s.csrf_ok(one, token[:-1])
