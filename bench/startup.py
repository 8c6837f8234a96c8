"""What a CLI user waits for on every call: import and start-up times, measured in one run.

    python bench/startup.py [--repeat 5]

Prints the median wall time over ``--repeat`` fresh processes of:

- ``python -c pass`` (the interpreter alone: the floor under everything else);
- ``python -c "import prefect_batch"`` (the public API);
- ``prefect-batch --help`` (target < 0.5 s);
- ``prefect-batch quickstart`` on a fresh home (a pool of 2 local nodes, 100 tasks), once.

Each command runs as its own process with ``PREFECT_BATCH_HOME`` in a temporary directory.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def wall(argv: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--no-quickstart", action="store_true", help="skip the quickstart run")
    args = ap.parse_args(argv)

    home = tempfile.mkdtemp(prefix="prefect-batch-startup-")
    env = {**os.environ, "PREFECT_BATCH_HOME": home}
    script = shutil.which("prefect-batch")  # what a user types; else the same entry point
    cli = [script] if script else [sys.executable, "-c", "from prefect_batch.cli import app; app()"]
    rows: list[tuple[str, float, str]] = []
    try:
        for name, cmd, target in [
            ("python -c pass", [sys.executable, "-c", "pass"], ""),
            ("import prefect_batch", [sys.executable, "-c", "import prefect_batch"], ""),
            ("prefect-batch --help", [*cli, "--help"], "target < 0.5 s"),
        ]:
            median = statistics.median(wall(cmd, env) for _ in range(args.repeat))
            met = ""
            if target:
                met = f"{target}: {'met' if median < 0.5 else 'not met'}"
            rows.append((name, median, met))
        if not args.no_quickstart:
            quickstart = wall([*cli, "quickstart"], env)
            rows.append(("prefect-batch quickstart, fresh home", quickstart, ""))
    finally:
        shutil.rmtree(home, ignore_errors=True)

    print(f"\nprefect-batch start-up ({time.strftime('%Y-%m-%d')}, median of {args.repeat})")
    width = max(len(r[0]) for r in rows)
    for name, seconds, note in rows:
        print(f"  {name:<{width}}  {seconds:6.2f} s  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
