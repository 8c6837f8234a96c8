"""Evaluation time of the official autoscale formulas over one day of 30-second samples.

    python bench/autoscale.py [--repeat 2000]

Every sampled metric gets 2,880 samples (one day at Azure's 30-s period). For each official
example formula of the case file (tests/core/autoscale/formula_cases.yaml) it prints the median
time to evaluate an already compiled formula, and for the longest one also the time to compile
(parse + check) and to evaluate straight from text. Target: evaluating the longest formula
< 5 ms. Building the environment's series from (timestamp, value) pairs is timed too: it is
paid by the service once per evaluation.

Then the service path, as a periodic evaluation or ``evaluate_pool_auto_scale`` runs it: a pool
in a SQLite store with one day of samples (2,880 rows, every metric in each), the longest formula
evaluated from the stored samples -- reading them, building the series, evaluating, and (for the
operation) recording the run.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prefect_batch.core.autoscale import (  # noqa: E402
    METRIC_NAMES,
    AutoScaleEnvironment,
    SampleSeries,
    compile_formula,
    evaluate_formula,
)

CASES = ROOT / "tests" / "core" / "autoscale" / "formula_cases.yaml"
SAMPLES_PER_DAY = 24 * 60 * 2
TARGET_MS = 5.0


def median_ms(action: Callable[[], object], repeat: int) -> float:
    """Median wall time of ``action`` in milliseconds."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def service_path(text: str, now: datetime, repeat: int) -> None:
    """Time one evaluation of ``text`` from a day of stored samples, through the service."""
    from prefect_batch.service import BatchService
    from prefect_batch.service.ops.autoscale import compiled_formula, evaluate_on_pool
    from prefect_batch.service.rows.samples import load_series, store_samples
    from prefect_batch.store import Store
    from prefect_batch.store.schema import pools

    rng = random.Random(2)
    stamp = now.timestamp()
    with tempfile.TemporaryDirectory() as home:
        store = Store(f"sqlite:///{home}/batch.db")
        service = BatchService(store, "bench", clock=lambda: stamp)
        service.create_pool(
            {
                "id": "scaled",
                "vmSize": "local",
                "enableAutoScale": True,
                "autoScaleFormula": "$TargetDedicatedNodes = $CurrentDedicatedNodes;",
                "autoScaleEvaluationInterval": "PT15M",
            }
        )
        with store.begin() as conn:
            row = conn.execute(pools.select()).one()
            for i in range(SAMPLES_PER_DAY):
                sample = {metric: rng.uniform(0, 100) for metric in METRIC_NAMES}
                store_samples(conn, {row.pk: sample}, stamp - 30 * i, 30.0)
        compiled = compiled_formula(text)
        body = {"autoScaleFormula": text}

        def engine_path() -> object:
            with store.read() as conn:
                return evaluate_on_pool(conn, row, stamp, compiled)

        def load() -> object:
            with store.read() as conn:
                return load_series(conn, row.pk, stamp, compiled.metrics)

        load_ms = median_ms(load, repeat)
        engine_ms = median_ms(engine_path, repeat)
        operation_ms = median_ms(lambda: service.evaluate_pool_auto_scale("scaled", body), repeat)
        run = service.evaluate_pool_auto_scale("scaled", body)
        store.dispose()
    print()
    print(f"service path, {SAMPLES_PER_DAY} stored samples ({len(compiled.metrics)} metrics read)")
    print(f"  read the samples, build the series:  {load_ms:8.3f} ms")
    print(
        f"  + node counts and evaluation:        {engine_ms:8.3f} ms   (the engine's periodic run)"
    )
    print(f"  evaluate_pool_auto_scale:            {operation_ms:8.3f} ms   (+ the run recorded)")
    shown = run.results if run.error is None else f"error {run.error.code}"
    print(f"  results: {shown[:70]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2000)
    args = parser.parse_args()

    formulas: dict[str, str] = yaml.safe_load(CASES.read_text(encoding="utf-8"))["formulas"]
    now = datetime(2016, 10, 14, 12, 0, tzinfo=timezone.utc)
    rng = random.Random(1)
    pairs = {
        metric: [(now - timedelta(seconds=30 * i), rng.uniform(0, 100)) for i in range(2880)]
        for metric in sorted(METRIC_NAMES)
    }
    build_ms = median_ms(lambda: SampleSeries.of(pairs["$CPUPercent"]), max(args.repeat // 20, 5))
    kept = SampleSeries.of(pairs["$CPUPercent"])  # a sampler keeping ticks builds it directly:
    ticks, values = list(kept.ticks), list(kept.values)
    direct_ms = median_ms(lambda: SampleSeries(tuple(ticks), tuple(values)), args.repeat)
    env = AutoScaleEnvironment(
        now=now,
        target_dedicated_nodes=10,
        current_dedicated_nodes=10,
        series={metric: SampleSeries.of(values) for metric, values in pairs.items()},
    )

    print(f"{len(METRIC_NAMES)} metrics x {SAMPLES_PER_DAY} samples (1 day at 30 s)")
    print(f"build one series from {SAMPLES_PER_DAY} (datetime, value) pairs: {build_ms:.3f} ms")
    print(f"build one series from {SAMPLES_PER_DAY} kept ticks and values:   {direct_ms:.3f} ms")
    print()
    print(f"{'formula':<14}{'chars':>7}{'evaluate (compiled)':>22}  results")
    for name, text in formulas.items():
        compiled = compile_formula(text)
        run = evaluate_formula(compiled, env)
        ms = median_ms(lambda c=compiled: evaluate_formula(c, env), args.repeat)
        shown = run.results if run.error is None else f"error {run.error.code}"
        print(f"{name:<14}{len(text):>7}{ms:>19.3f} ms  {shown[:60]}")

    longest_name = max(formulas, key=lambda n: len(formulas[n]))
    longest = formulas[longest_name]
    compiled = compile_formula(longest)
    compile_ms = median_ms(lambda: compile_formula(longest), max(args.repeat // 10, 10))
    eval_ms = median_ms(lambda: evaluate_formula(compiled, env), args.repeat)
    text_ms = median_ms(lambda: evaluate_formula(longest, env), max(args.repeat // 10, 10))
    print()
    print(f"longest official formula: {longest_name} ({len(longest)} characters)")
    print(f"  compile (parse + check):       {compile_ms:8.3f} ms")
    print(f"  evaluate, compiled:            {eval_ms:8.3f} ms   (target < {TARGET_MS} ms)")
    print(f"  evaluate from text:            {text_ms:8.3f} ms")
    # The official windows are 15 minutes at most; the same formula over the whole day's samples:
    whole_day = compile_formula(longest.replace("TimeInterval_Minute * 15", "TimeInterval_Day"))
    day_ms = median_ms(lambda: evaluate_formula(whole_day, env), args.repeat)
    print(f"  evaluate, windows of 1 day:    {day_ms:8.3f} ms   (2,880 samples per window)")
    print("  " + ("OK" if max(eval_ms, day_ms) < TARGET_MS else "OVER TARGET"))
    service_path(longest, now, max(args.repeat // 100, 5))


if __name__ == "__main__":
    main()
