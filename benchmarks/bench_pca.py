"""PCA scaling benchmark: fit + transform + write for N vectors with the gram and spark solvers (Spark
local[2]) against numpy covariance + eigh on the same data read from the same Parquet file; and, with
``--cluster``, the PCA job on a standalone cluster against local mode.

    ./run bench pca [--sizes 10000,50000,100000] [--k 64]
    ./run bench pca --cluster [--sizes 10000,100000,300000] [--files 100]

``--cluster``: the whole job (``cloud_pca.job.run``: read and validate every file, deduplicate, fit, project,
write, plots) on N vectors spread over ``--files`` contract files, in local mode (``local[2]``, one JVM,
the project's local tuning) and on a standalone cluster on 127.0.0.1 (2 workers x 1 core; driver, master,
workers and executors in separate JVMs; Spark's defaults, as on EMR). Each case is a fresh driver process
that runs a warm-up job first (so neither side pays JVM or Python-worker start-up in the timing). Reported:
seconds, the bytes of task results the driver received (fit and whole run; Spark's resultSize metric), and
peak RSS of driver and executors. Then the driver bytes of the cluster run at 10 and 1,000 shuffle partitions.

Every (solver, N) runs in its own child process so that peak memory is that case's alone: the driver's
Python, the JVM (in local mode the driver and executor share it) and the Spark Python workers are sampled
separately every 50 ms. Times exclude starting Spark (a warm-up fit runs first). Output: a table, a
time-vs-N plot, ``out/benchmarks/pca.{csv,json,png}``; 1M and 100M are extrapolated from the measured
slope and marked as such.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import PeakMemory, Recorder, make_files
from contract.vectors import features_array

D = 1280
SOLVERS = ("numpy", "gram", "spark")


def make_data(path: Path, n: int, seed: int = 0, rank: int = 48, chunk: int = 8192) -> None:
    """Non-negative, low-rank-plus-noise 1280-d float32 vectors (like pooled ReLU6 features), in row groups."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(rank, D)).astype(np.float32)
    scales = np.geomspace(3.0, 0.1, rank).astype(np.float32)
    schema = pa.schema([("image_id", pa.string()), ("features", pa.list_(pa.float32()))])
    with pq.ParquetWriter(path, schema, compression="zstd") as w:
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            z = rng.normal(size=(m, rank)).astype(np.float32) * scales
            x = np.clip(z @ basis * 0.2 + 0.5 + 0.05 * rng.normal(size=(m, D)).astype(np.float32), 0, 6)
            ids = pa.array([f"{i:064x}" for i in range(start, start + m)])
            w.write_table(pa.table({"image_id": ids, "features": features_array(x)}, schema=schema))


def run_numpy(path: str, out: str, k: int) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    x = table.column("features").combine_chunks().flatten().to_numpy().reshape(table.num_rows, D)
    x = x.astype(np.float64)
    mean = x.mean(axis=0)
    std = x.std(axis=0, ddof=1)
    z = (x - mean) / np.where(std > 0, std, 1.0)
    cov = z.T @ z / (len(z) - 1)
    values, vectors = np.linalg.eigh(cov)
    comps = vectors[:, np.argsort(values)[::-1][:k]]
    proj = (z @ comps).astype(np.float32)
    pq.write_table(pa.table({"image_id": table.column("image_id"),
                             "pca": pa.FixedSizeListArray.from_arrays(pa.array(proj.ravel()), k)}),
                   out, compression="zstd")
    return {"rows": int(table.num_rows)}


def run_spark(spark, solver: str, path: str, out: str, k: int) -> dict:
    from cloud_pca.pca import fit_pca

    df = spark.read.parquet(path)
    model = fit_pca(df, k=k, solver=solver)
    (model.project(df.select("image_id", "features"))
     .write.mode("overwrite").parquet(out))
    return {"rows": int(model.n_samples_)}


def child(args) -> int:
    """One case: prints a JSON line with the time and peaks."""
    spark = None
    if args.solver != "numpy":
        from cloud_pca.spark import get_spark

        spark = get_spark("fruits-bench-pca", master="local[2]")
        run_spark(spark, args.solver, args.warmup, args.out + ".warmup", args.k)  # start workers, JIT
    with PeakMemory() as mem:
        start = time.perf_counter()
        info = run_numpy(args.data, args.out, args.k) if spark is None else run_spark(
            spark, args.solver, args.data, args.out, args.k)
        seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, **info, **{k: round(v) for k, v in mem.peak.items()}}))
    if spark is not None:
        spark.stop()
    return 0


def plot(rows: list[dict], extrapolated: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for solver, color in zip(SOLVERS, ("#444444", "#2a7ab0", "#d9822b")):
        pts = sorted((r["n"], r["seconds"]) for r in rows if r["solver"] == solver)
        if not pts:
            continue
        ax.plot(*zip(*pts), "o-", color=color, label=f"{solver} (measured)")
        ext = sorted((r["n"], r["seconds"]) for r in extrapolated if r["solver"] == solver)
        if ext:
            ax.plot([pts[-1][0]] + [e[0] for e in ext], [pts[-1][1]] + [e[1] for e in ext], "--",
                    color=color, alpha=0.6, label=f"{solver} (extrapolated)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("vectors (N)")
    ax.set_ylabel("fit + transform + write (s)")
    ax.set_title("PCA on 1280-d vectors, 2 cores")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def slope(rows: list[dict], solver: str) -> tuple[float, float]:
    """Least-squares seconds = a + b * N over the measured sizes of one solver."""
    pts = np.array([(r["n"], r["seconds"]) for r in rows if r["solver"] == solver], dtype=float)
    b, a = np.polyfit(pts[:, 0], pts[:, 1], 1)
    return float(a), float(b)


# ---------------------------------------------------------------------------------- --cluster: the job
def job_child(args) -> int:
    """One case of --cluster: a driver process (local mode or a client of the cluster); prints one JSON line."""
    from cloud_pca.job import JobConfig, run
    from cloud_pca.spark import get_spark
    from common import cluster_groups, local_groups

    conf = dict(kv.split("=", 1) for kv in args.conf)
    spark = get_spark("fruits-bench-cluster", master=args.master, conf=conf)
    run(spark, JobConfig(inputs=[f"file://{args.warmup}"], output=f"file://{args.out}-warmup", k=args.k,
                         run_id="warmup"))
    groups = local_groups() if args.master.startswith("local") else cluster_groups(
        [int(p) for p in args.worker_pids.split(",")])
    with PeakMemory(groups) as mem:
        start = time.perf_counter()
        result = run(spark, JobConfig(inputs=[f"file://{args.data}"], output=f"file://{args.out}", k=args.k,
                                      run_id="bench"))
        seconds = time.perf_counter() - start
    s = result.summary
    print(json.dumps({"seconds": seconds, "rows": s["projected"], "files": s["files"],
                      "driver_bytes_fit": s["driver_result_bytes"]["fit"],
                      "driver_bytes_run": s["driver_result_bytes"]["run"],
                      "partitions": s["partitions"],
                      "shuffle_partitions": spark.conf.get("spark.sql.shuffle.partitions"),
                      "timings": s["timings_s"], **{k: round(v) for k, v in mem.peak.items()}}))
    spark.stop()
    return 0


def cluster_main(args) -> int:
    from cloud_pca.standalone import LocalCluster, loopback_env

    sizes = [int(s) for s in args.sizes.split(",")]
    rec = Recorder("pca_cluster")
    rows = []
    env = loopback_env()

    def case(mode: str, master: str, data: Path, warm: Path, out: Path, pids: str = "", conf=()) -> dict:
        cmd = [sys.executable, __file__, "--job-child", "--master", master, "--data", str(data), "--warmup",
               str(warm), "--out", str(out), "--k", str(args.k), "--worker-pids", pids]
        if master.startswith("spark://") and args.executor_memory:
            conf = [*conf, f"spark.executor.memory={args.executor_memory}"]
        for kv in conf:
            cmd += ["--conf", kv]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"Error: the {mode} case failed (exit {proc.returncode})")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    with tempfile.TemporaryDirectory(prefix="fruits-bench-cluster-") as tmp, \
            LocalCluster(workers=2, cores=1) as cluster:
        tmp = Path(tmp)
        pids = ",".join(str(p) for p in cluster.pids[1:])   # the workers (not the master)
        warm = tmp / "warm"
        make_files(warm, 2000, 40, seed=99)   # over 32 files: Spark lists them with a job, as in the timed runs
        print(f"cluster {cluster.master_url}: 2 workers x 1 core, executors {args.executor_memory or '1g (default)'}; "
              f"local mode: local[2] (one JVM, 4g); k={args.k}", flush=True)
        print(f"{'N':>7s} {'files':>5s} {'mode':8s} {'seconds':>8s} {'ratio':>6s} {'fit bytes':>10s} "
              f"{'run bytes':>10s} {'parts':>5s} {'driver MB':>9s} {'executors MB':>12s}", flush=True)
        for n in sizes:
            data = tmp / f"n{n}"
            make_files(data, n, args.files, seed=n)
            local = None
            for mode, master in (("local[2]", "local[2]"), ("cluster", cluster.master_url)):
                r = case(mode, master, data, warm, tmp / f"out-{'local' if mode.startswith('local') else mode}-{n}", pids)
                assert r["rows"] == n, r
                local = r["seconds"] if mode == "local[2]" else local
                driver_mb = r.get("driver_python_mb", 0) + r.get("driver_jvm_mb", r.get("jvm_mb", 0))
                executors_mb = r.get("executor_jvms_mb", 0) + r.get("executor_python_mb", r.get("workers_mb", 0))
                row = {"measure": "pca_job", "n": n, "files": r["files"], "mode": mode, "k": args.k,
                       "seconds": round(r["seconds"], 2), "ratio_to_local": round(r["seconds"] / local, 2),
                       "driver_bytes_fit": r["driver_bytes_fit"], "driver_bytes_run": r["driver_bytes_run"],
                       "partitions": r["partitions"], "shuffle_partitions": r["shuffle_partitions"],
                       "driver_mb": driver_mb, "executors_mb": executors_mb, "timings": r["timings"],
                       **{k: v for k, v in r.items() if k.endswith("_mb")}}
                rows.append(row)
                rec.add(**row)
                print(f"{n:7d} {r['files']:5d} {mode:8s} {r['seconds']:8.2f} {row['ratio_to_local']:6.2f} "
                      f"{r['driver_bytes_fit']:10d} {r['driver_bytes_run']:10d} {r['partitions']:5d} "
                      f"{driver_mb:9d} {executors_mb:12d}", flush=True)
        n = sizes[len(sizes) // 2]
        print(f"\ndriver bytes on the cluster at N={n} with 10 and 1,000 shuffle partitions:")
        for parts in (10, 1000):
            r = case("cluster", cluster.master_url, tmp / f"n{n}", warm, tmp / f"out-p{parts}", pids,
                     conf=[f"spark.sql.shuffle.partitions={parts}"])
            rec.add(measure="pca_job_driver_bytes", n=n, mode="cluster", shuffle_partitions=parts,
                    seconds=round(r["seconds"], 2), driver_bytes_fit=r["driver_bytes_fit"],
                    driver_bytes_run=r["driver_bytes_run"], partitions=r["partitions"])
            print(f"  spark.sql.shuffle.partitions={parts:5d}: fit {r['driver_bytes_fit']} B, run "
                  f"{r['driver_bytes_run']} B, {r['seconds']:.1f} s", flush=True)
    path = rec.save()
    print(f"\nwrote {path}, {path.with_suffix('.json')}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default=None, help="default 10000,50000,100000 (--cluster: 10000,100000,300000)")
    ap.add_argument("--cluster", action="store_true", help="the job on a standalone cluster vs local[2]")
    ap.add_argument("--files", type=int, default=100, help="--cluster: input files per N (uploads: <= 5,000 rows each)")
    ap.add_argument("--executor-memory", help="--cluster: spark.executor.memory for the cluster's 2 executors "
                                              "(default: Spark's 1g; local[2] runs in one 4g JVM)")
    ap.add_argument("--job-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--master", help=argparse.SUPPRESS)
    ap.add_argument("--worker-pids", default="", help=argparse.SUPPRESS)
    ap.add_argument("--conf", action="append", default=[], help=argparse.SUPPRESS)
    ap.add_argument("--solvers", default=",".join(SOLVERS))
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--solver", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--warmup", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    if args.job_child:
        return job_child(args)
    if args.cluster:
        args.sizes = args.sizes or "10000,100000,300000"
        return cluster_main(args)
    args.sizes = args.sizes or "10000,50000,100000"

    sizes = [int(s) for s in args.sizes.split(",")]
    solvers = [s for s in args.solvers.split(",") if s]
    rec = Recorder("pca")
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="fruits-bench-pca-") as tmp:
        warm = Path(tmp) / "warmup.parquet"
        make_data(warm, 2000, seed=99)
        print(f"{'N':>7s} {'solver':6s} {'seconds':>8s} {'vs numpy':>8s} {'s/10k':>6s} "
              f"{'driver py MB':>12s} {'JVM MB':>7s} {'workers MB':>10s}", flush=True)
        for n in sizes:
            data = Path(tmp) / f"x{n}.parquet"
            make_data(data, n, seed=n)
            base = None
            for solver in solvers:
                out = str(Path(tmp) / f"out-{solver}-{n}")
                cmd = [sys.executable, __file__, "--child", "--solver", solver, "--data", str(data),
                       "--warmup", str(warm), "--out", out, "--k", str(args.k)]
                proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ})
                if proc.returncode != 0:
                    print(proc.stderr[-3000:], file=sys.stderr)
                    raise SystemExit(f"Error: {solver} at N={n} failed (exit {proc.returncode})")
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                assert r["rows"] == n, r
                if solver == "numpy":
                    base = r["seconds"]
                row = {"measure": "pca_fit_transform_write", "n": n, "solver": solver, "k": args.k,
                       "seconds": round(r["seconds"], 3),
                       "ratio_to_numpy": round(r["seconds"] / base, 2) if base else None,
                       "driver_python_mb": r["driver_python_mb"], "jvm_mb": r["jvm_mb"],
                       "workers_mb": r["workers_mb"], "data_mb": round(data.stat().st_size / 2**20)}
                rows.append(row)
                rec.add(**row)
                ratio = f"{row['ratio_to_numpy']:.2f}" if base else "-"
                print(f"{n:7d} {solver:6s} {r['seconds']:8.2f} {ratio:>8s} {r['seconds'] / n * 1e4:6.2f} "
                      f"{r['driver_python_mb']:12d} {r['jvm_mb']:7d} {r['workers_mb']:10d}", flush=True)

    extrapolated = []
    if len(sizes) >= 2:
        print("\nlinear fit seconds = a + b*N over the measured sizes; 1M and 100M are EXTRAPOLATED:")
        for solver in solvers:
            a, b = slope(rows, solver)
            t = {n: a + b * n for n in (1_000_000, 100_000_000)}
            per = [r["seconds"] / r["n"] * 1e4 for r in rows if r["solver"] == solver]
            print(f"  {solver:6s} a={a:6.2f}s b={b * 1e4:6.3f}s/10k rows; s/10k at each N: "
                  f"{', '.join(f'{p:.2f}' for p in per)}; 1M ~{t[1_000_000] / 60:.1f} min, "
                  f"100M ~{t[100_000_000] / 3600:.1f} h (one 2-core machine)")
            for n, s in t.items():
                extrapolated.append({"measure": "pca_fit_transform_write_extrapolated", "n": n, "solver": solver,
                                     "seconds": round(s, 1), "extrapolated": True})
                rec.add(**extrapolated[-1])
    path = rec.save()
    plot(rows, extrapolated, path.with_suffix(".png"))
    print(f"\nwrote {path}, {path.with_suffix('.json')}, {path.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
