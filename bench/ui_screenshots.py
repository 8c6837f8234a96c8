"""Screenshots of the web page for the README: ``docs/ui-pool.png`` and ``docs/ui-job.png``.

    python bench/ui_screenshots.py [--out docs] [--nodes 10] [--seconds 50]

Runs a real server (the app and an engine with local nodes, SQLite under a temporary home) on
127.0.0.1, sets up what a user watching a batch service would see — pool ``render`` of
``--nodes`` local nodes with 2 slots each working through job ``frames`` (short tasks, a few
failing, some long-running), a second job queued behind it, and pool ``gpu-lab`` whose start task
fails — lets the engine run and sample for ``--seconds``, then signs in with headless Chromium
(``prefect_batch.testing.browser``) and saves the pool page and the job page as PNG.
Nothing is drawn by hand: the pictures are what the page renders for that state.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prefect_batch.api import create_app  # noqa: E402
from prefect_batch.client import build_engine  # noqa: E402
from prefect_batch.service import BatchService  # noqa: E402
from prefect_batch.service.ops.accounts import AccountOperations  # noqa: E402
from prefect_batch.store import Store  # noqa: E402
from prefect_batch.testing import fast_settings  # noqa: E402
from prefect_batch.testing.browser import chromium_driver  # noqa: E402
from prefect_batch.testing.webapp import free_port, serve_app  # noqa: E402


def sh(script: str) -> str:
    return f"/bin/sh -c {shlex.quote(script)}"


def scene(svc: BatchService, nodes: int) -> None:
    """Pools and jobs in the states the pictures show."""
    svc.create_pool(
        {"id": "render", "vmSize": "local", "targetDedicatedNodes": nodes, "taskSlotsPerNode": 2}
    )
    svc.create_pool(
        {
            "id": "gpu-lab",
            "vmSize": "local",
            "targetDedicatedNodes": 2,
            "startTask": {"commandLine": sh("echo driver missing >&2; exit 1")},
        }
    )
    svc.create_job({"id": "frames", "poolInfo": {"poolId": "render"}, "priority": 100})
    tasks = []
    for i in range(240):
        if i % 37 == 5:
            script = f"echo frame {i}; echo 'texture not found: t{i}.png' >&2; exit {2 + i % 3}"
        elif i % 23 == 0:
            script = f"echo frame {i}; sleep 600"
        else:
            script = f"echo frame {i}; sleep {0.5 + (i % 7) * 0.4:.1f}"
        tasks.append({"id": f"frame-{i:03d}", "commandLine": sh(script)})
    svc.create_tasks("frames", tasks)
    svc.create_job({"id": "thumbnails", "poolInfo": {"poolId": "render"}, "priority": 10})
    svc.create_tasks(
        "thumbnails", [{"id": f"thumb-{i}", "commandLine": sh("sleep 1")} for i in range(60)]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=50.0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="pb-ui-shots-") as tmp:
        home = Path(tmp)
        store = Store(f"sqlite:///{home / 'batch.db'}")
        account = AccountOperations(store).create("demo")
        settings = fast_settings(home, autoscale_sample_interval_seconds=1.0)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        engine = build_engine(store, settings, {"demo": url}, server=True)
        app = create_app(store, engine, account_url=url, manage_engine=False)
        engine.start()
        driver = None
        try:
            with serve_app(app, port=port):
                svc = BatchService(store, "demo", wake=engine.wake)
                scene(svc, args.nodes)
                time.sleep(args.seconds)
                driver = chromium_driver(home / "profile", width=1280, height=1100)
                driver.get(f"{url}/ui/signin")
                driver.find_element("id", "account-name").send_keys("demo")
                driver.find_element("id", "account-key").send_keys(account.primary)
                driver.find_element("id", "signin-button").click()
                deadline = time.monotonic() + 20
                while "/ui/signin" in driver.current_url and time.monotonic() < deadline:
                    time.sleep(0.1)  # the sign-in's redirect, before the next page
                for name, path in (
                    ("ui-pool.png", "/ui/pools/render"),
                    ("ui-job.png", "/ui/jobs/frames"),
                ):
                    driver.get(url + path)
                    driver.save_screenshot(str(args.out / name))
                    print(f"wrote {args.out / name}")
        finally:
            if driver is not None:
                driver.quit()
            engine.stop(kill_tasks=True)
            store.dispose()


if __name__ == "__main__":
    main()
