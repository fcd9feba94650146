"""Run in a fresh interpreter (``python tests/thread_imports.py job|edge OUT.json``): the PCA job (a full run and an
incremental one, plots on, local Spark) or the edge's ``vectorize`` (worker threads), with every import watched.
Writes what was imported for the first time by a thread other than the main thread.

Threads that import modules for the first time at the same moment can deadlock on Python's per-module import
locks: the job hung so in its write stage (three threads importing pyspark.ml, matplotlib and pandas). A fresh
interpreter is the only place to see it: in a test process every module is imported already.
"""
from __future__ import annotations

import importlib.abc
import json
import os
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


class Audit(importlib.abc.MetaPathFinder):
    """Records (thread, module) for every module imported first by a thread that is not the main thread."""

    def __init__(self):
        self.off_main: list[tuple[str, str]] = []

    def find_spec(self, fullname, path, target=None):
        if threading.current_thread() is not threading.main_thread() and fullname not in sys.modules:
            self.off_main.append((threading.current_thread().name, fullname))
        return None   # the other finders import it


def job(tmp: Path) -> None:
    os.environ["PYSPARK_PYTHON"] = sys.executable
    from cloud_pca.job import JobConfig, run
    from cloud_pca.spark import get_spark
    from vectors_for_tests import contract_table

    import pyarrow.parquet as pq

    data = tmp / "in"
    data.mkdir()
    pq.write_table(contract_table(300, seed=1), data / "a.parquet")
    spark = get_spark("thread-imports", master="local[1]")
    out = f"file://{tmp}/pca"
    run(spark, JobConfig(inputs=[f"file://{data}"], output=out, k=4, run_id="full", full=True))
    pq.write_table(contract_table(50, seed=2, start=1000), data / "b.parquet")
    run(spark, JobConfig(inputs=[f"file://{data}"], output=out, k=4, run_id="inc", incremental=True))
    spark.stop()


def edge(tmp: Path) -> None:
    from edge_client.vectorize import find_photos, vectorize
    from models import model_path
    from models.synthetic import generate

    photos = generate(tmp / "photos", per_class=4, n_classes=3, seed=5)
    vectorize(find_photos([photos]), tmp / "v.parquet", model_path=model_path(), threads=4, progress=False)


if __name__ == "__main__":
    import tempfile

    mode, out = sys.argv[1], Path(sys.argv[2])
    audit = Audit()
    sys.meta_path.insert(0, audit)
    with tempfile.TemporaryDirectory(prefix="thread-imports-") as tmp:
        {"job": job, "edge": edge}[mode](Path(tmp))
    out.write_text(json.dumps({"off_main": audit.off_main}))
