"""Request limits: what a long command line costs the server and everyone else, in one run.

    python bench/request_limits.py [--requests 20] [--old-split-kib 256]

(1) Splitting one long word: the former ``shlex`` split (quadratic in a word's length) against
    the linear split, at 64 KiB (the limit) and ``--old-split-kib``; the ratio is old/new.
(2) Through a real server (uvicorn on loopback, SQLite): the median time another account's
    write (create a job) is answered, alone, then while a thread keeps sending tasks whose
    command line is one 1 MiB word (refused, 400) or one word just under the 64 KiB limit
    (accepted); and the median answer time of those big requests.

Figures drift on a shared 2-core machine; compare the ratios of one run.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prefect_batch.core.commandline import (  # noqa: E402
    MAX_COMMAND_LINE_LENGTH,
    split_command_line,
)
from tests.api.conftest import running_server  # noqa: E402
from tests.api.test_auth import send  # noqa: E402


def old_split(line: str) -> list[str]:
    lexer = shlex.shlex(line, posix=True)
    lexer.whitespace_split = True
    lexer.commenters = ""
    return list(lexer)


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def bench_split(old_kib: int) -> None:
    print("(1) split of one long word")
    for kib in (64, old_kib):
        line = "echo " + "x" * (kib * 1024 - 10)
        old = timed(old_split, line)
        new = timed(split_command_line, line) if len(line) <= MAX_COMMAND_LINE_LENGTH else None
        if new is None:  # over the limit: time the linear splitter's inner loop alone
            from prefect_batch.core import commandline

            new = timed(commandline._split_words, line, "commandLine")
        print(
            f"    {kib:5d} KiB: shlex {old * 1000:9.1f} ms, linear {new * 1000:7.2f} ms, "
            f"ratio {old / new:8.0f}x"
        )


def bench_server(requests: int) -> None:
    print("(2) another account's writes while big command lines arrive (medians)")
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        with running_server(f"sqlite:///{home / 'batch.db'}", home / "home") as server:
            other = server.add_account("benchother")
            send(server, "POST", "/pools", body={"id": "p", "vmSize": "local"})
            send(server, "POST", "/jobs", body={"id": "j", "poolInfo": {"poolId": "p"}})
            counter = iter(range(10**9))

            def other_write() -> float:
                n = next(counter)
                body = {"id": f"o{n}", "poolInfo": {"poolId": "p"}}
                start = time.perf_counter()
                answer = send(
                    server, "POST", "/jobs", account=other.name, key=other.primary, body=body
                )
                assert answer.status_code == 201, answer.text
                return time.perf_counter() - start

            alone = statistics.median(other_write() for _ in range(requests))
            print(f"    other account's write alone:          {alone * 1000:7.1f} ms")
            for label, size, status in (
                ("1 MiB word (400)", 1024 * 1024, 400),
                ("64 KiB word (201)", MAX_COMMAND_LINE_LENGTH - 10, 201),
            ):
                big_times: list[float] = []
                stop = threading.Event()

                def flood(
                    size: int = size,
                    status: int = status,
                    stop: threading.Event = stop,
                    big_times: list[float] = big_times,
                ) -> None:
                    while not stop.is_set() and len(big_times) < 200:
                        n = next(counter)
                        body = {"id": f"t{n}", "commandLine": "z" * size}
                        start = time.perf_counter()
                        answer = send(server, "POST", "/jobs/j/tasks", body=body)
                        assert answer.status_code == status, answer.text
                        big_times.append(time.perf_counter() - start)

                thread = threading.Thread(target=flood)
                thread.start()
                during = statistics.median(other_write() for _ in range(requests))
                stop.set()
                thread.join(120)
                big = statistics.median(big_times)
                print(
                    f"    with {label:18s}: other {during * 1000:7.1f} ms "
                    f"({during / alone:4.1f}x alone); big request {big * 1000:7.1f} ms"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--old-split-kib", type=int, default=256)
    args = parser.parse_args()
    print(time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    bench_split(args.old_split_kib)
    bench_server(args.requests)


if __name__ == "__main__":
    main()
