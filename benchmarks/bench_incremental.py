"""The daily refresh: an incremental PCA run that adds a day's new vectors, against a full refit of everything,
in one Spark session (local[2]) on this machine, at several sizes of what already exists.

    ./run bench incremental [--existing 50000,100000,200000] [--new 5000] [--k 64]

For each existing N: N vectors in files of 5,000 rows (as uploads make them), counted once by an untimed
``--full`` run (the state); then one file of ``--new`` new vectors arrives and both are timed, same outputs
(projections, model, explained variance, plots): the incremental run (reads the new file's features and the
counted image ids) and a full refit (reads every file). A warm-up of both runs on a small dataset comes
first. Reported: seconds, the ratio, objects and bytes read; the same refresh cold (``fruits-cloud pca --incremental``
in a fresh process, as the schedule runs it: ``cold s``) and its fixed cost (cold minus warm; goal <= 5 s), with
what starting a Spark session costs a fresh process; the scan of 1M and 4M counted ids (the part of an
incremental run that grows with what exists); then the daily refresh cost at 1M and 100M vectors on EMR,
EXTRAPOLATED from the measured slopes (seconds = a + b*N) and marked so.
Output: ``out/benchmarks/incremental.{csv,json}``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from common import Recorder, make_files, spark_jobs, timed

ROWS_PER_OBJECT = 5000
VCPUS, CORES_HERE = 4, 2          # an m5.xlarge, this machine


def job(spark, inputs: str, output: str, run_id: str, k: int, **mode):
    """A run's summary, with the Spark jobs it started (counted from the status store: any version of the job)."""
    from cloud_pca.job import JobConfig, run

    before = spark_jobs(spark)
    summary = run(spark, JobConfig(inputs=[inputs], output=output, k=k, run_id=run_id, **mode)).summary
    return {**summary, "spark_jobs": spark_jobs(spark) - before}


def measure(spark, tmp: Path, existing: int, new: int, k: int) -> dict:
    data = tmp / f"data-{existing}"
    make_files(data, existing, max(1, existing // ROWS_PER_OBJECT), seed=existing)
    out = f"file://{tmp}/out-{existing}"
    src = f"file://{data}"
    timed(f"state of {existing} (untimed --full)", lambda: job(spark, src, out, "state", k, full=True))
    new_files = make_files(data, new, 1, seed=existing + 1, start=10_000_000)
    shutil.copytree(tmp / f"out-{existing}", tmp / f"cold-{existing}")   # the same state, for the cold run
    cold_s = cold_run(src, f"file://{tmp}/cold-{existing}", k)
    inc, inc_s = timed(f"incremental +{new} on {existing}", lambda: job(spark, src, out, "inc", k, incremental=True))
    full, full_s = timed(f"full refit of {existing + new}", lambda: job(spark, src, out, "full", k))
    i = inc["incremental"]
    assert i["objects_read"] == 1 and i["rows_added"] == new and i["rows_total"] == existing + new, i
    _, scan_s = timed(f"scan of the {existing + new} counted ids", lambda: scan_ids(spark, out))
    assert full["projected"] == existing + new
    return {"measure": "daily_refresh", "existing": existing, "new": new, "k": k,
            "incremental_s": round(inc_s, 2), "full_s": round(full_s, 2), "ratio": round(inc_s / full_s, 3),
            "cold_incremental_s": round(cold_s, 2), "cold_fixed_s": round(cold_s - inc_s, 2),
            "id_scan_s": round(scan_s, 3),
            "incremental_objects_read": i["objects_read"], "incremental_bytes_read": i["bytes_read"],
            "full_files": full["files"], "full_bytes_read": sum(f.stat().st_size for f in data.rglob("*.parquet")),
            "new_file_bytes": new_files[0].stat().st_size,
            "incremental_spark_jobs": inc["spark_jobs"], "full_spark_jobs": full["spark_jobs"],
            "incremental_timings": inc["timings_s"], "full_timings": full["timings_s"]}


def cold_run(inputs: str, output: str, k: int) -> float:
    """The same refresh as a scheduled job runs it: ``fruits-cloud pca --incremental`` in a fresh process (its
    imports, and Spark's JVM only if the run needs it); wall seconds."""
    import subprocess
    import sys
    import time

    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "cloud_pca.cli", "--quiet", "pca", "--input", inputs, "--output",
                           output, "--k", str(k), "--incremental", "--run-id", "cold"], capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if done.returncode != 0:
        raise RuntimeError(f"the cold run failed: {done.stderr[-2000:]}")
    print(f"  cold run (fresh process): {seconds:.2f} s", flush=True)
    return seconds


def session_start() -> dict:
    """What a run that needs Spark adds in a fresh process: the interpreter's imports, the JVM and the session, its
    first job, its stop (a fresh interpreter; seconds)."""
    import subprocess
    import sys

    code = ("import time; t0 = time.perf_counter()\n"
            "from cloud_pca.spark import get_spark\n"
            "t1 = time.perf_counter(); spark = get_spark('fruits-bench-start', master='local[2]')\n"
            "t2 = time.perf_counter(); spark.range(1000).selectExpr('sum(id)').collect()\n"
            "t3 = time.perf_counter(); spark.stop(); t4 = time.perf_counter()\n"
            "import json; print(json.dumps({'import_s': t1 - t0, 'jvm_and_session_s': t2 - t1, "
            "'first_job_s': t3 - t2, 'stop_s': t4 - t3}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"starting a session failed: {done.stderr[-2000:]}")
    return {k: round(v, 2) for k, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}


def scan_ids(spark, output: str) -> int:
    """What an incremental run scans of the counted data: the counted image ids (one column), semi-joined with
    the new batch's ids as ``cloud_pca.job.prepare_rows`` does it."""
    from cloud_pca import incremental

    state = incremental.load_state(spark, output, None)
    return semi_join_count(state.counted.frame(spark), spark.read.parquet(*state.id_parts[-1:]))


def semi_join_count(counted, batch) -> int:
    from pyspark.sql import functions as F

    return counted.join(F.broadcast(batch.select("image_id")), "image_id", "left_semi").distinct().count()


def measure_id_scan(spark, tmp: Path, sizes: list[int], new: int) -> list[dict]:
    """The part of an incremental run that grows with what exists, alone and at sizes where it dominates its
    fixed cost: ``sizes`` counted sha256 ids (as the state's ``ids/`` hold them, 1M per file) semi-joined with
    ``new`` ids of a batch (half of them counted before)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(7)
    rows = []
    for size in sizes:
        folder = tmp / f"ids-{size}"
        folder.mkdir()
        for i, start in enumerate(range(0, size, 1_000_000)):
            raw = rng.bytes(32 * min(1_000_000, size - start))
            ids = [raw[j:j + 32].hex() for j in range(0, len(raw), 32)]
            pq.write_table(pa.table({"image_id": ids}), folder / f"part-{i:05d}.parquet")
        batch = spark.createDataFrame([(x,) for x in ids[:new // 2]] + [(f"{j:064x}",) for j in range(new - new // 2)],
                                      "image_id string")
        counted = spark.read.parquet(f"file://{folder}")
        seen, seconds = timed(f"id scan of {size} counted ids", lambda: semi_join_count(counted, batch))
        assert seen == new // 2, seen
        rows.append({"measure": "id_scan", "counted_ids": size, "new": new, "seconds": round(seconds, 3),
                     "bytes": sum(f.stat().st_size for f in folder.iterdir())})
        shutil.rmtree(folder, ignore_errors=True)
    return rows


def cost_model(rows: list[dict], scans: list[dict], new: int) -> list[dict]:
    """Daily refresh at 1M and 100M vectors on EMR, EXTRAPOLATED, priced as m5.xlarge hours (2 cores here =
    half an m5.xlarge's 4 vCPUs). Full: seconds = a + b*N fitted on the measured sizes. Incremental: its
    measured mean (it did not grow with N here) plus the id scan's slope, the part that grows with N, fitted
    (a + b*N) on the scans of millions of counted ids, where the scan outweighs its fixed cost."""
    from bootstrap.emr import SETUP_HOURS, load_prices

    prices = load_prices()
    hourly = prices["ec2_on_demand_per_hour"]["m5.xlarge"]["eu-west-3"] + prices["emr_fee_per_hour"]["m5.xlarge"]["eu-west-3"]
    n = np.array([r["existing"] for r in rows], float)
    out = []
    b_full, a_full = np.polyfit(n, np.array([r["full_s"] for r in rows]), 1)
    b_scan, _ = np.polyfit([r["counted_ids"] for r in scans], [r["seconds"] for r in scans], 1)
    b_scan = max(b_scan, 0.0)
    inc_mean = float(np.mean([r["incremental_s"] for r in rows]))
    for mode, (a, b) in (("full", (a_full, b_full)), ("incremental", (inc_mean - b_scan * n.mean(), b_scan))):
        for size in (1_000_000, 100_000_000):
            seconds = a + b * size
            hours = seconds * CORES_HERE / VCPUS / 3600      # on one m5.xlarge's 4 vCPUs
            out.append({"measure": "daily_refresh_cost", "vectors": size, "new_per_day": new, "mode": mode,
                        "seconds_on_2_cores": round(seconds, 1), "m5_xlarge_hours": round(hours, 4),
                        "usd_compute": round(hours * hourly, 4),
                        "usd_with_cluster_setup": round((hours + SETUP_HOURS) * hourly, 4),
                        "slope_s_per_1M": round(b * 1e6, 2), "intercept_s": round(a, 2), "extrapolated": True})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--existing", default="50000,100000,200000")
    ap.add_argument("--new", type=int, default=5000)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--scan-sizes", default="1000000,4000000", help="counted ids for the id scan's slope")
    ap.add_argument("--smoke", action="store_true", help="2,000 and 4,000 existing, 500 new: that it runs and "
                                                            "writes its results")
    ap.add_argument("--out", type=Path, default=Path("out/benchmarks"))
    args = ap.parse_args()
    if args.smoke:
        args.existing, args.new, args.scan_sizes = "2000,4000", 500, "20000,40000"
    from cloud_pca.spark import get_spark

    sizes = [int(s) for s in args.existing.split(",")]
    rec = Recorder("incremental", args.out)
    spark = get_spark("fruits-bench-incremental", master="local[2]")
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="fruits-bench-incremental-"))
    try:
        warm = tmp / "warm"
        make_files(warm, 4000, 2, seed=1)
        job(spark, f"file://{warm}", f"file://{tmp}/warm-out", "w1", args.k, full=True)
        make_files(warm, 1000, 1, seed=2, start=9_000_000)
        job(spark, f"file://{warm}", f"file://{tmp}/warm-out", "w2", args.k, incremental=True)
        job(spark, f"file://{warm}", f"file://{tmp}/warm-out", "w3", args.k)
        start = session_start()
        rec.add(measure="session_start", **start)
        print(f"a Spark session in a fresh process (what a run that needs Spark adds): {start}", flush=True)
        print(f"{'existing':>9s} {'new':>6s} {'incr s':>7s} {'full s':>7s} {'ratio':>6s} {'incr MB read':>12s} "
              f"{'full MB read':>12s} {'id scan s':>9s} {'cold s':>7s} {'fixed s':>7s}", flush=True)
        for n in sizes:
            r = measure(spark, tmp, n, args.new, args.k)
            rows.append(r)
            rec.add(**{k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in r.items()})
            print(f"{n:9d} {args.new:6d} {r['incremental_s']:7.2f} {r['full_s']:7.2f} {r['ratio']:6.3f} "
                  f"{r['incremental_bytes_read'] / 1e6:12.1f} {r['full_bytes_read'] / 1e6:12.1f} "
                  f"{r['id_scan_s']:9.3f} {r['cold_incremental_s']:7.2f} {r['cold_fixed_s']:7.2f}   Spark jobs: "
                  f"incremental {r['incremental_spark_jobs']}, full "
                  f"{r['full_spark_jobs']}; incremental stages (s): {r['incremental_timings']}", flush=True)
            shutil.rmtree(tmp / f"data-{n}", ignore_errors=True)
        print(f"\n{'counted ids':>11s} {'scan s':>7s} {'MB':>7s}   (semi-join with {args.new} new ids)", flush=True)
        scans = measure_id_scan(spark, tmp, [int(s) for s in args.scan_sizes.split(",")], args.new)
        for r in scans:
            rec.add(**r)
            print(f"{r['counted_ids']:11d} {r['seconds']:7.2f} {r['bytes'] / 1e6:7.1f}", flush=True)
    finally:
        spark.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    if args.smoke:
        print("\n(smoke sizes: the figures below are not meaningful)")
    if len(rows) >= 2:
        print("\ndaily refresh on EMR (m5.xlarge, eu-west-3 on demand), EXTRAPOLATED from the slopes above:")
        for c in cost_model(rows, scans, args.new):
            rec.add(**c)
            print(f"  {c['vectors']:>11,d} vectors, {c['mode']:11s}: {c['seconds_on_2_cores']:9.1f} s here, "
                  f"{c['m5_xlarge_hours']:.4f} m5.xlarge h, ${c['usd_compute']:.4f} compute "
                  f"(${c['usd_with_cluster_setup']:.2f} with a transient cluster's setup)")
    path = rec.save()
    print(f"\nwrote {path}, {path.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
