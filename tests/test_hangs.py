"""No hang: the job and the edge import nothing for the first time in a worker thread, the job's write stage
passes in fresh interpreters under load, and a run that stops making progress fails with a message naming its
stage instead of holding a cluster (each failed before its fix: the job hung in its write stage on a fresh
clone's test run, three threads deadlocked on Python's import locks)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROBE = Path(__file__).resolve().parent / "thread_imports.py"


def probe(mode: str, out: Path, timeout: float = 240) -> list:
    """Run tests/thread_imports.py in a fresh interpreter; the modules first imported off the main thread."""
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    proc = subprocess.run([sys.executable, str(PROBE), mode, str(out)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())["off_main"]


def test_the_edge_workers_import_nothing_first(tmp_path):
    """vectorize's worker threads decode photos: Pillow's plugins, EXIF reader and encoders are imported on the
    main thread first (before: PIL.PngImagePlugin, GifImagePlugin, ... were imported by a worker)."""
    assert probe("edge", tmp_path / "edge.json") == []


@pytest.mark.slow
def test_the_job_imports_nothing_in_threads(tmp_path):
    """A full and an incremental run, plots on, in a fresh interpreter: no module is imported first by a thread
    other than the main one (before: 196, by the three output threads: pyspark.ml, matplotlib, pandas, ...)."""
    assert probe("job", tmp_path / "job.json") == []


@pytest.mark.slow
def test_the_write_stage_never_hangs_in_fresh_interpreters_under_load(tmp_path):
    """The job (full + incremental, plots on) in 4 fresh interpreters, two at a time, beside a process that burns a
    core: every one finishes within its timeout (before: about 1 in 4 such runs deadlocked here)."""
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(lambda i: probe("job", tmp_path / f"job{i}.json", timeout=300), range(4)))
    finally:
        burner.kill()
        burner.wait()
    assert results == [[]] * 4


# ------------------------------------------------------------------------------------------ watchdog
def test_a_run_stuck_in_python_fails_naming_its_stage(spark, tmp_path, monkeypatch):
    """The plots never finish (as when threads deadlocked on an import): the watchdog logs the threads, stops the
    run and it fails with one message naming the stage, within the stall limit and its grace."""
    import pyarrow.parquet as pq

    from cloud_pca import plots
    from cloud_pca.job import JobConfig, run
    from cloud_pca.watchdog import Stalled
    from vectors_for_tests import contract_table

    (tmp_path / "in").mkdir()
    pq.write_table(contract_table(100), tmp_path / "in" / "a.parquet")
    never = threading.Event()
    monkeypatch.setattr(plots, "scree", lambda explained: never.wait() and {})
    start = time.monotonic()
    with pytest.raises(Stalled, match=r"no progress for \d+ s in stage 'plotting' \(no Spark job running\)"):
        run(spark, JobConfig(inputs=[f"file://{tmp_path}/in"], output=f"file://{tmp_path}/pca", k=3, run_id="s",
                             stall_s=10))
    assert time.monotonic() - start < 90
    assert not (tmp_path / "pca" / "run=s" / "_SUCCESS.json").exists()


def test_a_spark_task_that_never_ends_is_cancelled(spark):
    """A task stuck on an executor: the watchdog cancels the application's jobs and the action fails with the
    watchdog's message, not Spark's cancellation."""
    from cloud_pca.watchdog import Stalled, Watchdog

    start = time.monotonic()
    with pytest.raises(Stalled, match=r"no progress for \d+ s in stage 'waiting' \(1 Spark stage\(s\) running\)"):
        with Watchdog(stall_s=3) as dog:
            dog.stage("waiting")
            spark.sparkContext.parallelize([1], 1).map(lambda x: time.sleep(600) or x).collect()
    assert time.monotonic() - start < 60
    assert spark.range(3).count() == 3            # the session is still usable


def test_progress_keeps_a_long_run_alive(spark):
    """Stages that move and tasks that finish are progress: a run longer than the stall limit is not stopped."""
    from cloud_pca.watchdog import Watchdog

    with Watchdog(stall_s=2, poll_s=0.2) as dog:
        for i in range(5):
            dog.stage(f"step {i}")
            time.sleep(1)
        assert spark.sparkContext.parallelize(range(8), 8).map(lambda x: time.sleep(0.8) or x).sum() == 28
    assert dog.stalled is None


def test_stall_minutes_is_checked(capsys):
    from cloud_pca.cli import main

    assert main(["--stall-minutes", "-1", "report", "--run", "/nowhere"]) == 1
    assert "Error: --stall-minutes=-1 must be 0 (never) or more" in capsys.readouterr().err
