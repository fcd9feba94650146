"""Shared benchmark helpers: timing, CSV/JSON rows, peak memory of process groups."""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

log = logging.getLogger("benchmarks")
TIMINGS: list[tuple[str, float]] = []   # every timed() call of this process, in order


def timed(label: str, fn: Callable[[], Any]) -> tuple[Any, float]:
    """Run ``fn`` and return (its result, seconds); the label and time are logged and kept in TIMINGS."""
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    TIMINGS.append((label, seconds))
    log.info("%s: %.3f s", label, seconds)
    return result, seconds


def spark_jobs(spark) -> int:
    """Spark jobs the application started so far (from its status store: every thread's, whatever the code)."""
    sc = spark.sparkContext._jsc.sc()
    sc.listenerBus().waitUntilEmpty()
    return int(sc.statusStore().jobsList(None).size())


class Recorder:
    """Collects one dict per measurement; writes CSV and JSON next to each other."""

    def __init__(self, name: str, out_dir: str | Path = "out/benchmarks"):
        self.name = name
        self.out_dir = Path(out_dir)
        self.rows: list[dict] = []

    def add(self, **row) -> None:
        self.rows.append(row)

    def save(self) -> Path:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        keys = sorted({k for r in self.rows for k in r}, key=lambda k: (k != "measure", k))
        path = self.out_dir / f"{self.name}.csv"
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(self.rows)
        (self.out_dir / f"{self.name}.json").write_text(json.dumps(self.rows, indent=1))
        return path


def _descendants(pids: Iterable[int]) -> list:
    import psutil

    out = []
    for pid in pids:
        try:
            out.extend(psutil.Process(pid).children(recursive=True))
        except psutil.Error:
            continue
    return out


def local_groups() -> dict[str, Callable[[], list]]:
    """This process (the driver's Python), its JVM, and the JVM's Python workers (local mode)."""
    import os

    import psutil

    me = psutil.Process()

    def children(java: bool):
        return [p for p in _descendants([os.getpid()]) if _is_java(p) == java]

    return {"driver_python_mb": lambda: [me], "jvm_mb": lambda: children(True), "workers_mb": lambda: children(False)}


def cluster_groups(worker_pids: list[int]) -> dict[str, Callable[[], list]]:
    """Driver (this Python + its JVM) and executors (the JVMs the standalone workers launched + their Python
    workers); the master and worker daemons themselves are not counted."""
    groups = local_groups()
    driver = {"driver_python_mb": groups["driver_python_mb"], "driver_jvm_mb": groups["jvm_mb"]}

    def executors(java: bool):
        return [p for p in _descendants(worker_pids) if _is_java(p) == java]

    driver.update({"executor_jvms_mb": lambda: executors(True), "executor_python_mb": lambda: executors(False)})
    return driver


def _is_java(proc) -> bool:
    try:
        return "java" in proc.name()
    except Exception:
        return False


class PeakMemory:
    """Polls the RSS of process groups every ``interval`` seconds; keeps each group's peak sum (MB)."""

    def __init__(self, groups: dict[str, Callable[[], list]] | None = None, interval: float = 0.05):
        self.groups = groups or local_groups()
        self.interval = interval
        self.peak = {name: 0.0 for name in self.groups}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        import psutil

        for name, procs in self.groups.items():
            total = 0.0
            for p in procs():
                try:
                    total += p.memory_info().rss / 2**20
                except psutil.Error:
                    continue
            self.peak[name] = max(self.peak[name], total)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(self.interval)

    def __enter__(self) -> "PeakMemory":
        self.sample()   # first on this thread: psutil is imported here, never first in the polling thread
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def make_files(folder: Path, n: int, files: int, seed: int = 0, start: int = 0, d: int = 1280,
               day: str | None = None) -> list[Path]:
    """``n`` contract rows (non-negative low-rank-plus-noise vectors, like pooled ReLU6 features) in ``files``
    Parquet files laid out as uploads (filed under ``day``, default today); image ids start at ``start`` (so batches
    can be disjoint)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from contract.layout import vectors_object_key
    from contract.vectors import features_array, file_metadata, parquet_options, vector_schema

    sha = "b" * 64
    rng = np.random.default_rng(seed)
    basis_rng = np.random.default_rng(12345)           # the same population for every batch
    rank = 48
    basis = basis_rng.normal(size=(rank, d)).astype(np.float32)
    scales = np.geomspace(3.0, 0.1, rank).astype(np.float32)
    bounds = np.linspace(start, start + n, files + 1).astype(int)
    schema = vector_schema().with_metadata(file_metadata(sha, "bench"))
    written = []
    for f in range(files):
        lo, hi = bounds[f], bounds[f + 1]
        m = hi - lo
        z = rng.normal(size=(m, rank)).astype(np.float32) * scales
        x = np.clip(z @ basis * 0.2 + 0.5 + 0.05 * rng.normal(size=(m, d)).astype(np.float32), 0, 6)
        # Image ids as devices send them: the sha256 of a photo, so their first digits (the state's ``key``
        # column, what a refresh reads of each counted row) are spread as real ones are. (Ids "000...0<i>" gave
        # every row the key 0: each refresh found a possible match in every ids file and read them whole.)
        ids = [hashlib.sha256(i.to_bytes(8, "little")).hexdigest() for i in range(lo, hi)]
        table = pa.table({
            "image_id": pa.array(ids), "label": pa.array([f"class{i % 10}" for i in range(lo, hi)]),
            "source": pa.array([f"p{i}.jpg" for i in range(lo, hi)]), "width": pa.array([100] * m, pa.int32()),
            "height": pa.array([100] * m, pa.int32()), "features": features_array(x),
            "model_sha256": pa.array([sha] * m), "model_name": pa.array(["bench"] * m),
            "client_id": pa.array([f"phone-{f % 7}"] * m),
            "vectorized_at": pa.array([0] * m, pa.timestamp("us", tz="UTC"))}, schema=schema)
        path = folder / vectors_object_key("", sha, f"phone-{f % 7}", ids, day=day)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path, **parquet_options())
        written.append(path)
    return written


def answers_changed(before: list, after: list, truth: list) -> tuple[float, float]:
    """Two runs' answers to the same photos: (the share that changed, the share newly given a wrong fruit's name,
    i.e. a name that is not the photo's, where "unknown" and "not sure: ..." are not names)."""
    def named_wrong(answer: str, t: str) -> bool:
        return answer != t and answer != "unknown" and not answer.startswith("not sure")

    n = max(1, len(before))
    return (sum(x != y for x, y in zip(before, after)) / n,
            sum(x != y and named_wrong(y, t) for x, y, t in zip(before, after, truth)) / n)
