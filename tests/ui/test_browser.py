"""The web page in a real browser: a server with local nodes, a job with a failing and a running
task, and everything checked from what Chromium renders.

One server and one browser for the module (the tests run in file order and share the sign-in):
account ``acct`` has pool ``p`` (2 local nodes, 1 slot each) running job ``j`` — ``bad`` fails
with exit 3 and prints an XSS payload to stderr, ``ok`` succeeds, ``slow`` keeps running and
printing — and pool ``broken`` whose start task fails; account ``other`` has pool ``secretpool``.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.common.alert import Alert
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from prefect_batch.service import BatchService
from prefect_batch.ui.views import NODE_COLOURS
from tests.api.conftest import Server, running_server, wait_for

pytestmark = pytest.mark.slow

XSS = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2">'
"""What the failing task prints to stderr: it must show as text and run nothing."""

SLOW = "i=0; while [ $i -lt 600 ]; do echo tick $i; i=$((i+1)); sleep 0.3; done"


def _rgb(hex_colour: str) -> str:
    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r}, {g}, {b}, 1)"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("home")
    url = f"sqlite:///{home / 'batch.db'}"
    with running_server(url, home, settings={"autoscale_sample_interval_seconds": 1.0}) as s:
        yield s


@pytest.fixture(scope="module")
def scene(server: Server) -> dict[str, Any]:
    """The pools, the job and its tasks, with ``bad``/``ok`` completed and ``slow`` running."""
    svc = BatchService(server.store, server.account.name, wake=server.engine.wake)
    svc.create_pool({"id": "p", "vmSize": "local", "targetDedicatedNodes": 2})
    svc.create_pool(
        {
            "id": "broken",
            "vmSize": "local",
            "targetDedicatedNodes": 1,
            "startTask": {"commandLine": "/bin/sh -c 'exit 1'", "waitForSuccess": True},
        }
    )
    svc.create_job({"id": "j", "poolInfo": {"poolId": "p"}, "priority": 250})
    bad = f"echo {shlex.quote(XSS)} >&2; echo about to fail; exit 3"
    svc.create_task("j", {"id": "bad", "commandLine": f"/bin/sh -c {shlex.quote(bad)}"})
    svc.create_task("j", {"id": "ok", "commandLine": "/bin/sh -c 'echo fine'"})
    svc.create_task("j", {"id": "slow", "commandLine": f"/bin/sh -c {shlex.quote(SLOW)}"})
    other = server.add_account("other")
    BatchService(server.store, other.name, wake=server.engine.wake).create_pool(
        {"id": "secretpool", "vmSize": "local", "targetDedicatedNodes": 0}
    )

    def settled() -> bool:
        counts = svc.get_job_task_counts("j").task_counts
        states = {n.state.value for n in svc.list_nodes("p") if n.state}
        broken = {n.state.value for n in svc.list_nodes("broken") if n.state}
        return (
            counts.completed == 2
            and counts.running == 1
            and states == {"running", "idle"}
            and broken == {"starttaskfailed"}
        )

    wait_for(settled, timeout=90)
    return {"svc": svc, "other": other}


@pytest.fixture
def signed_in(browser: webdriver.Chrome, server: Server, scene: dict[str, Any]) -> Any:
    """The browser with a session of ``acct`` (signs in when it has none)."""
    if browser.get_cookie("pb_session") is None:
        browser.get(f"{server.url}/ui/signin")
        browser.find_element(By.ID, "account-name").send_keys(server.account.name)
        browser.find_element(By.ID, "account-key").send_keys(server.account.primary)
        browser.find_element(By.ID, "signin-button").click()
        WebDriverWait(browser, 20).until(lambda d: "/ui/signin" not in d.current_url)
    return browser


def _confirm(browser: webdriver.Chrome) -> Alert:
    """The page's confirmation dialog, once it is open."""
    return WebDriverWait(browser, 10).until(expected_conditions.alert_is_present())


def _wait(browser: webdriver.Chrome, predicate: Any, timeout: float = 30) -> Any:
    return WebDriverWait(browser, timeout, poll_frequency=0.2).until(lambda d: predicate())


def test_sign_in_is_required_and_the_cookie_is_strict(
    browser: webdriver.Chrome, server: Server, scene: dict[str, Any]
) -> None:
    browser.delete_all_cookies()
    browser.get(f"{server.url}/ui/pools")
    assert "/ui/signin" in browser.current_url
    assert "secretpool" not in browser.page_source and 'id="pool-p"' not in browser.page_source

    browser.find_element(By.ID, "account-name").send_keys(server.account.name)
    browser.find_element(By.ID, "account-key").send_keys(scene["other"].primary)  # wrong key
    browser.find_element(By.ID, "signin-button").click()
    # The refusal is a new page: wait for it rather than reading the form it replaces.
    error = _wait(browser, lambda: browser.find_elements(By.ID, "signin-error"))[0]
    assert error.is_displayed()
    assert browser.get_cookie("pb_session") is None

    browser.find_element(By.ID, "account-name").send_keys(server.account.name)
    browser.find_element(By.ID, "account-key").send_keys(server.account.primary)
    browser.find_element(By.ID, "signin-button").click()
    _wait(browser, lambda: browser.current_url.endswith("/ui/pools"))
    cookie = browser.get_cookie("pb_session")
    assert cookie is not None
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/ui" and "expiry" in cookie
    assert browser.find_element(By.ID, "account").text == "acct"
    # The page's script cannot read the session cookie.
    assert "pb_session" not in browser.execute_script("return document.cookie")


def test_heatmap_tiles_are_coloured_by_node_state(
    signed_in: webdriver.Chrome, server: Server, scene: dict[str, Any], tmp_path: Path
) -> None:
    browser = signed_in
    browser.get(f"{server.url}/ui/pools")
    tiles = browser.find_elements(By.CSS_SELECTOR, "#pool-p .tile")
    nodes = {n.id: n.state.value for n in scene["svc"].list_nodes("p")}
    assert {t.get_attribute("data-node"): t.get_attribute("data-state") for t in tiles} == nodes
    for tile in tiles:
        state = tile.get_attribute("data-state")
        assert tile.value_of_css_property("background-color") == _rgb(NODE_COLOURS[state])
    running = [t for t in tiles if t.get_attribute("data-state") == "running"]
    assert len(running) == 1 and running[0].text == "1"  # one task on it
    broken = browser.find_elements(By.CSS_SELECTOR, "#pool-broken .tile")
    assert [t.get_attribute("data-state") for t in broken] == ["starttaskfailed"]
    assert broken[0].value_of_css_property("background-color") == _rgb(
        NODE_COLOURS["starttaskfailed"]
    )
    legend = browser.find_element(By.CSS_SELECTOR, "ul.legend").text
    for state in (
        "idle",
        "running",
        "starting",
        "waitingforstarttask",
        "starttaskfailed",
        "offline",
        "unusable",
        "preempted",
        "leavingpool",
    ):
        assert state in legend
    section = browser.find_element(By.ID, "pool-p").text
    assert "steady" in section and "Running tasks\n1" in section


def test_another_accounts_pool_is_absent(signed_in: webdriver.Chrome, server: Server) -> None:
    browser = signed_in
    browser.get(f"{server.url}/ui/pools")
    assert "secretpool" not in browser.page_source
    browser.get(f"{server.url}/ui/pools/secretpool")
    assert browser.find_element(By.ID, "error-code").text == "PoolNotFound"


def test_the_pool_page_charts_samples_and_a_resize_reaches_the_service(
    signed_in: webdriver.Chrome, server: Server, scene: dict[str, Any], tmp_path: Path
) -> None:
    browser = signed_in
    svc = scene["svc"]
    wait_for(lambda: len(svc.list_pool_samples("p")) >= 2, timeout=30)
    browser.get(f"{server.url}/ui/pools/p")
    lines = browser.find_elements(By.CSS_SELECTOR, "#pool-chart polyline")
    assert {line.get_attribute("data-series") for line in lines} >= {"nodes", "running tasks"}
    assert all(len(line.get_attribute("points").split()) >= 2 for line in lines)
    browser.save_screenshot(str(tmp_path / "ui-pool.png"))
    assert (tmp_path / "ui-pool.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    field = browser.find_element(By.ID, "resize-target")
    field.clear()
    field.send_keys("3")
    browser.find_element(By.ID, "resize-button").click()
    alert = _confirm(browser)
    assert "Resize pool p" in alert.text
    alert.dismiss()  # asked first: a cancelled confirmation changes nothing
    assert svc.get_pool("p").target_dedicated_nodes == 2

    browser.find_element(By.ID, "resize-button").click()
    _confirm(browser).accept()
    _wait(browser, lambda: svc.get_pool("p").target_dedicated_nodes == 3)
    # The heatmap follows the new node by polling.
    _wait(browser, lambda: len(browser.find_elements(By.CSS_SELECTOR, ".heatmap .tile")) == 3, 60)


def test_a_post_without_the_csrf_token_is_refused(
    signed_in: webdriver.Chrome, server: Server, scene: dict[str, Any]
) -> None:
    browser = signed_in
    browser.get(f"{server.url}/ui/pools/p")
    statuses = browser.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        const post = (body) => fetch("/ui/pools/p/resize", {method: "POST",
            headers: {"Content-Type": "application/x-www-form-urlencoded"}, body: body});
        Promise.all([post("targetDedicatedNodes=0"), post("targetDedicatedNodes=0&csrf=forged")])
            .then((answers) => done(answers.map((a) => a.status)));
        """
    )
    assert statuses == [403, 403]
    assert scene["svc"].get_pool("p").target_dedicated_nodes == 3
    # The session's own token, from another client that has no cookie, is refused too.
    token = browser.find_element(By.CSS_SELECTOR, "#resize-form input[name=csrf]")
    answer = httpx.post(
        f"{server.url}/ui/pools/p/resize",
        data={"targetDedicatedNodes": "0", "csrf": token.get_attribute("value")},
    )
    assert answer.status_code == 401
    assert scene["svc"].get_pool("p").target_dedicated_nodes == 3


def test_the_job_page_shows_progress_and_failed_tasks_first(
    signed_in: webdriver.Chrome, server: Server, tmp_path: Path
) -> None:
    browser = signed_in
    browser.get(f"{server.url}/ui/jobs")
    row = browser.find_element(By.ID, "job-j")
    assert row.find_element(By.CSS_SELECTOR, ".priority").text == "250"
    browser.get(f"{server.url}/ui/jobs/j")
    progress = browser.find_element(By.ID, "job-progress")
    numbers = {
        el.get_attribute("data-count"): el.text
        for el in progress.find_elements(By.CSS_SELECTOR, "[data-count]")
    }
    assert numbers == {"active": "0", "running": "1", "succeeded": "1", "failed": "1", "total": "3"}
    widths = {
        name: float(progress.find_element(By.CSS_SELECTOR, f".b-{name}").get_attribute("width"))
        for name in ("succeeded", "failed", "running")
    }
    assert all(abs(w - 100 / 3) < 0.01 for w in widths.values())
    rows = browser.find_elements(By.CSS_SELECTOR, "#task-table tbody tr")
    assert [r.get_attribute("data-task") for r in rows] == ["bad", "ok", "slow"]
    first = rows[0].find_elements(By.TAG_NAME, "td")
    assert first[2].text == "3" and "failure" in first[1].text and first[4].text.startswith("tvm")
    browser.save_screenshot(str(tmp_path / "ui-job.png"))
    assert (tmp_path / "ui-job.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    browser.find_element(By.CSS_SELECTOR, '[data-filter="running"]').click()
    rows = browser.find_elements(By.CSS_SELECTOR, "#task-table tbody tr")
    assert [r.get_attribute("data-task") for r in rows] == ["slow"]


def test_the_failed_task_shows_its_exit_code_and_stderr_as_text(
    signed_in: webdriver.Chrome, server: Server
) -> None:
    browser = signed_in
    browser.get(f"{server.url}/ui/jobs/j/tasks/bad")
    assert browser.find_element(By.ID, "exit-code").text == "3"
    assert "FailureExitCode" in browser.find_element(By.ID, "failure-info").text
    assert browser.find_element(By.ID, "stderr").text.strip() == XSS
    assert browser.find_element(By.ID, "stdout").text.strip() == "about to fail"
    assert browser.execute_script("return window.__xss === undefined")
    assert browser.find_elements(By.CSS_SELECTOR, "main img, main script") == []
    links = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "table.files a")]
    assert "stderr.txt" in links and "stdout.txt" in links


def test_a_running_tasks_output_updates_and_it_can_be_terminated(
    signed_in: webdriver.Chrome, server: Server, scene: dict[str, Any]
) -> None:
    browser = signed_in
    browser.get(f"{server.url}/ui/jobs/j/tasks/slow")
    first = browser.find_element(By.ID, "stdout").text
    assert browser.find_element(By.ID, "task-state").text == "running"
    _wait(browser, lambda: browser.find_element(By.ID, "stdout").text != first)
    assert "tick" in browser.find_element(By.ID, "stdout").text

    browser.find_element(By.CSS_SELECTOR, ".actions button").click()
    _confirm(browser).accept()
    _wait(browser, lambda: scene["svc"].get_task("j", "slow").state.value == "completed")
    browser.get(f"{server.url}/ui/jobs/j/tasks/slow")
    assert browser.find_element(By.ID, "task-state").text == "completed"
    assert browser.find_element(By.ID, "exit-code").text == str(0xC000013A)
