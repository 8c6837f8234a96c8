"""Staging resource files to a node, beside plain boto3 downloads of the same objects.

    python bench/staging.py [--small 1000] [--big-mb 200]

Both sides read from one S3 endpoint on loopback (moto's server, in this process), so the
endpoint's own speed is common to both. The stack side is a whole task: create it with
``resourceFiles`` (a prefix of ``--small`` objects, or one ``--big-mb`` object), the service
signs URLs, the node agent downloads, the command runs (``true``), the task completes; the time
is from ``create_task`` to ``completed`` (the staged bytes are checked). The baselines are what
``aws s3 cp`` does — boto3 ``download_file`` with its default transfer settings (ranged GETs on
10 threads) for the big object, and 10 threads each calling ``download_file`` for the small
ones — and the same with one streamed ``get_object`` per object; the ratio is against the
faster. Target: within 1.5x. Last, the dispatch rate of 300 tasks that each list their own
object when every listing takes ``--latency-ms`` longer (a remote endpoint), resolved one run
request at a time against the engine's pool of resolver threads.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prefect_batch.service.engine.dispatcher import STAGE_THREADS  # noqa: E402
from prefect_batch.testing import embedded_client, wait_for_nodes, wait_for_task  # noqa: E402
from prefect_batch.testing.storage import S3Endpoint, moto_s3_server  # noqa: E402

BUCKET = "bench-staging"
TARGET_RATIO = 1.5
DISPATCH_TASKS = 300


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=1000, help="number of small objects")
    parser.add_argument("--small-bytes", type=int, default=1024)
    parser.add_argument("--big-mb", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2, help="best of this many runs each")
    parser.add_argument(
        "--latency-ms", type=float, default=30.0, help="added to each listing in the last part"
    )
    args = parser.parse_args()

    with moto_s3_server() as s3, tempfile.TemporaryDirectory() as tmp:
        client = s3.client()
        client.create_bucket(Bucket=BUCKET)
        payload = os.urandom(args.small_bytes)
        with ThreadPoolExecutor(10) as pool:
            list(
                pool.map(
                    lambda i: client.put_object(Bucket=BUCKET, Key=f"small/{i:05d}", Body=payload),
                    range(args.small),
                )
            )
        big = os.urandom(args.big_mb << 20)
        client.upload_fileobj(__import__("io").BytesIO(big), BUCKET, "big/blob.bin")
        del big

        def boto_small(dest: Path) -> None:
            keys = [f"small/{i:05d}" for i in range(args.small)]
            with ThreadPoolExecutor(10) as pool:
                list(
                    pool.map(
                        lambda k: client.download_file(BUCKET, k, str(dest / k.replace("/", "_"))),
                        keys,
                    )
                )

        def boto_big(dest: Path) -> None:
            client.download_file(BUCKET, "big/blob.bin", str(dest / "blob.bin"))

        def boto_small_streams(dest: Path) -> None:
            def one(key: str) -> None:
                body = client.get_object(Bucket=BUCKET, Key=key)["Body"]
                with open(dest / key.replace("/", "_"), "wb") as f:
                    for chunk in body.iter_chunks(1 << 20):
                        f.write(chunk)

            with ThreadPoolExecutor(10) as pool:
                list(pool.map(one, [f"small/{i:05d}" for i in range(args.small)]))

        def boto_big_stream(dest: Path) -> None:
            body = client.get_object(Bucket=BUCKET, Key="big/blob.bin")["Body"]
            with open(dest / "blob.bin", "wb") as f:
                for chunk in body.iter_chunks(1 << 20):
                    f.write(chunk)

        with embedded_client(Path(tmp) / "home", storage=s3.storage()) as batch:
            batch.create_pool({"id": "p", "vmSize": "local", "targetDedicatedNodes": 1})
            wait_for_nodes(batch, "p", 1, timeout=60)
            batch.create_job({"id": "j", "poolInfo": {"poolId": "p"}})
            counter = iter(range(10_000))

            def stack(prefix: str) -> float:
                task_id = f"t{next(counter)}"
                started = time.perf_counter()
                batch.create_task(
                    "j",
                    {
                        "id": task_id,
                        "commandLine": "true",
                        "resourceFiles": [
                            {"storageContainerUrl": f"s3://{BUCKET}", "blobPrefix": prefix}
                        ],
                    },
                )
                task = wait_for_task(batch, "j", task_id, timeout=600)
                elapsed = time.perf_counter() - started
                if task.execution_info.exit_code != 0:
                    raise SystemExit(f"staging failed: {task.execution_info.failure_info}")
                staged = [
                    f
                    for f in batch.list_task_files("j", task_id, recursive=True)
                    if f.name.startswith("wd/") and not f.is_directory
                ]
                size = sum(f.properties.content_length for f in staged)
                if size != expected[prefix]:
                    raise SystemExit(f"staged {size} bytes, expected {expected[prefix]}")
                batch.delete_task("j", task_id)  # frees the node's disk for the next round
                return elapsed

            expected = {"small/": args.small * args.small_bytes, "big/": args.big_mb << 20}
            rows = []
            for label, prefix, baselines in (
                (
                    f"{args.small} x {args.small_bytes} B",
                    "small/",
                    (boto_small, boto_small_streams),
                ),
                (f"1 x {args.big_mb} MB", "big/", (boto_big, boto_big_stream)),
            ):
                times: list[list[float]] = [[], [], []]
                for _ in range(args.rounds):
                    for i, baseline in enumerate(baselines):
                        with tempfile.TemporaryDirectory(dir=tmp) as dest:
                            times[i].append(timed(partial(baseline, Path(dest))))
                    times[2].append(stack(prefix))
                rows.append((label, *(min(t) for t in times)))

        resolve = {n: dispatch_rate(s3, Path(tmp), n, args.latency_ms) for n in (1, STAGE_THREADS)}

    print(
        f"{'files':<20}{'download_file':>15}{'get_object':>12}{'stack':>9}{'stack/best boto3':>18}"
    )
    worst = 0.0
    for label, cp, stream, full in rows:
        ratio = full / min(cp, stream)
        worst = max(worst, ratio)
        print(f"{label:<20}{cp:>14.2f}s{stream:>11.2f}s{full:>8.2f}s{ratio:>17.2f}x")
    print(f"target: within {TARGET_RATIO}x of boto3; worst ratio {worst:.2f}x")
    print(
        f"{DISPATCH_TASKS} tasks each listing its own object, +{args.latency_ms:g} ms per listing: "
        + ", ".join(f"{n} resolver thread(s) {rate:.0f} tasks/s" for n, rate in resolve.items())
    )


def dispatch_rate(s3: S3Endpoint, tmp: Path, threads: int, latency_ms: float) -> float:
    """Tasks/s of a job whose every task lists its own object, each listing ``latency_ms``
    slower (a remote endpoint's round trip), with ``threads`` resolving run requests at once."""
    import prefect_batch.service.engine.dispatcher as dispatcher

    c = s3.client()
    for i in range(DISPATCH_TASKS):
        c.put_object(Bucket=BUCKET, Key=f"each/{i:04d}", Body=b"x")
    storage = s3.storage()
    listing = storage._list

    def remote_list(*args: object, **kwargs: object) -> list[str]:
        time.sleep(latency_ms / 1000)
        return listing(*args, **kwargs)  # type: ignore[arg-type]

    storage._list = remote_list  # type: ignore[method-assign]
    saved, dispatcher.STAGE_THREADS = dispatcher.STAGE_THREADS, threads
    try:
        with embedded_client(tmp / f"home-{threads}", storage=storage) as batch:
            batch.create_pool(
                {"id": "p", "vmSize": "local", "targetDedicatedNodes": 3, "taskSlotsPerNode": 8}
            )
            wait_for_nodes(batch, "p", 3, timeout=60)
            batch.create_job({"id": "each", "poolInfo": {"poolId": "p"}})
            started = time.perf_counter()
            batch.create_tasks(
                "each",
                [
                    {
                        "id": f"t{i}",
                        "commandLine": "true",
                        "resourceFiles": [
                            {"storageContainerUrl": f"s3://{BUCKET}", "blobPrefix": f"each/{i:04d}"}
                        ],
                    }
                    for i in range(DISPATCH_TASKS)
                ],
            )
            batch.wait_for_job("each", timeout=600)
            return DISPATCH_TASKS / (time.perf_counter() - started)
    finally:
        dispatcher.STAGE_THREADS = saved


if __name__ == "__main__":
    main()
