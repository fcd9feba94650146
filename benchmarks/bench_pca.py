"""PCA job benchmark: the whole job (`fruits-cloud pca`: read, validate, dedup check, fit, project, write) against a
plain in-process reference on the same files, stage by stage, in the same run; in local[2] and on a standalone
cluster (2 workers x 1 core, separate JVMs, Spark's defaults: 1 GiB executors and driver, 200 shuffle partitions).

    ./run bench pca [--sizes 100000,1000000] [--modes local,cluster] [--k 64]
    ./run bench pca --smoke            # a tiny run (the test suite runs it: benchmarks cannot rot)

The reference is what one Python process does with pyarrow and numpy, nothing more: pass 1 reads the
``image_id`` and ``features`` columns of every file (pyarrow), checks them (1,280 finite values, sha256 ids),
and sums ``x.T @ x`` in float64 chunks of 8,192 rows (numpy: BLAS syrk), then ``eigh`` of the correlation;
pass 2 reads again, projects to k and writes Parquet. Its stages: read (decode), check, syrk, solve,
project+write. The job's own ``timings_s``: read and validate (with the gram pass when it is fused into it),
fit, write. Data: ``benchmarks/common.make_files`` rows (contract files laid out as uploads, 5,000 rows each),
made once under ``.cache/bench-pca/``. Peak RSS is sampled every 50 ms: the driver (Python + JVM) and the
executors (worker JVMs + Python workers; local mode: its Python workers). Ratios are job / reference, measured
in the same run. 100M is EXTRAPOLATED from the 1M ratio and marked so.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import PeakMemory, Recorder, cluster_groups, local_groups, make_files, spark_jobs

D = 1280
CHUNK = 8192
ROOT = Path(__file__).resolve().parent.parent
SHA_RE = re.compile(r"^[0-9a-f]{64}$")


def data_folder(n: int, rows_per_file: int, cache: Path) -> Path:
    """N contract rows in files of ``rows_per_file`` (made once; a stamp says it is complete)."""
    folder = cache / f"n{n}-r{rows_per_file}"
    stamp = folder / "_COMPLETE"
    if not stamp.exists():
        shutil.rmtree(folder, ignore_errors=True)
        print(f"making {n:,} rows in {max(1, n // rows_per_file)} files under {folder} (once)", flush=True)
        make_files(folder / "data", n, max(1, n // rows_per_file), seed=n)   # data/vectors/model=.../...
        stamp.write_text("ok\n")
    return folder / "data"


# ------------------------------------------------------------------------------------------ reference
def reference(folder: Path, out: Path, k: int) -> dict:
    """The in-process reference, with a timer per stage (seconds)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    files = sorted(folder.rglob("*.parquet"))
    t = {"read": 0.0, "check": 0.0, "syrk": 0.0, "solve": 0.0, "project_write": 0.0}
    n, total, gram = 0, np.zeros(D), np.zeros((D, D))
    start = time.perf_counter()
    for f in files:
        t0 = time.perf_counter()
        table = pq.read_table(f, columns=["image_id", "features"])
        feats = table.column("features").combine_chunks()
        values = pc.list_flatten(feats).to_numpy()
        t1 = time.perf_counter()
        lengths = pc.list_value_length(feats).to_numpy()
        ids = table.column("image_id").to_pylist()
        ok = (lengths == D).all() and np.isfinite(values).all() and all(SHA_RE.match(i) for i in ids)
        assert ok, f
        t2 = time.perf_counter()
        x = values.reshape(-1, D)
        for s in range(0, len(x), CHUNK):
            c = x[s:s + CHUNK].astype(np.float64)
            gram += c.T @ c
            total += c.sum(axis=0)
        n += len(x)
        t["read"] += t1 - t0
        t["check"] += t2 - t1
        t["syrk"] += time.perf_counter() - t2
    t0 = time.perf_counter()
    mean = total / n
    cov = (gram - n * np.outer(mean, mean)) / (n - 1)
    std = np.sqrt(np.clip(np.diag(cov), 0, None))
    inv = np.where(std > 0, 1 / np.where(std > 0, std, 1), 0)
    values, vectors = np.linalg.eigh(cov * np.outer(inv, inv))
    comps = vectors[:, np.argsort(values)[::-1][:k]]
    t["solve"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(files):
        table = pq.read_table(f, columns=["image_id", "features"])
        x = pc.list_flatten(table.column("features").combine_chunks()).to_numpy().reshape(-1, D)
        y = ((x - mean) * inv) @ comps
        pq.write_table(pa.table({"image_id": table.column("image_id"),
                                 "pca": pa.FixedSizeListArray.from_arrays(pa.array(y.astype(np.float32).ravel()), k)}),
                       out / f"part-{i:05d}.parquet", compression="zstd")
    t["project_write"] = time.perf_counter() - t0
    t["total"] = time.perf_counter() - start
    return {"rows": n, **{k2: round(v, 3) for k2, v in t.items()}}


def reference_child(args) -> int:
    with PeakMemory(local_groups()) as mem:
        r = reference(Path(args.data), Path(args.out), args.k)
    print(json.dumps({**r, "peak_mb": round(mem.peak["driver_python_mb"])}))
    return 0


# ----------------------------------------------------------------------------------------------- job
def job_child(args) -> int:
    """One run of the job in a fresh driver process (local[2], or a client of the cluster); one JSON line."""
    from cloud_pca.job import JobConfig, run
    from cloud_pca.spark import get_spark

    spark = get_spark("fruits-bench-pca", master=args.master)
    run(spark, JobConfig(inputs=[f"file://{args.warmup}"], output=f"file://{args.out}-warmup", k=args.k,
                         run_id="warmup"))                 # JVM, Python workers and JIT warm
    groups = local_groups() if args.master.startswith("local") else cluster_groups(
        [int(p) for p in args.worker_pids.split(",") if p])
    jobs_before = spark_jobs(spark)
    with PeakMemory(groups) as mem:
        start = time.perf_counter()
        result = run(spark, JobConfig(inputs=[f"file://{args.data}"], output=f"file://{args.out}", k=args.k,
                                      run_id="bench"))
        seconds = time.perf_counter() - start
    s = result.summary
    print(json.dumps({"seconds": round(seconds, 3), "rows": s["projected"], "files": s["files"],
                      "timings": s["timings_s"], "passes": s.get("passes"), "spark_jobs": spark_jobs(spark) - jobs_before,
                      "driver_bytes_run": s["driver_result_bytes"]["run"],
                      **{k: round(v) for k, v in mem.peak.items()}}))
    spark.stop()
    return 0


def run_child(cmd: list[str], env: dict) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        print(proc.stderr[-4000:], file=sys.stderr)
        raise SystemExit(f"Error: {' '.join(cmd[2:5])} failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--modes", default="local,cluster", help="local (local[2]) and/or cluster (standalone, 2x1 core)")
    ap.add_argument("--rows-per-file", type=int, default=5000, help="rows per input file (an upload: 5,000)")
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--before", type=Path, help="also run the job from this checkout (e.g. `git worktree add "
                                                 "/tmp/before HEAD~1`): before/after in the same run")
    ap.add_argument("--smoke", action="store_true", help="2,000 rows, local only: that it runs and writes its results")
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "benchmarks")
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get("FRUITS_CACHE", ROOT / ".cache")) / "bench-pca")
    ap.add_argument("--reference-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--job-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--master", help=argparse.SUPPRESS)
    ap.add_argument("--worker-pids", default="", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--warmup", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.reference_child:
        return reference_child(args)
    if args.job_child:
        return job_child(args)
    if args.smoke:
        args.sizes, args.modes, args.rows_per_file = "2000", "local", 500
    sizes = [int(s) for s in args.sizes.split(",")]
    modes = [m for m in args.modes.split(",") if m]
    rec = Recorder("pca", args.out)
    from cloud_pca.standalone import LocalCluster, loopback_env

    env = loopback_env()
    with tempfile.TemporaryDirectory(prefix="fruits-bench-pca-") as tmp:
        tmp = Path(tmp)
        warm = tmp / "warm"
        make_files(warm, 2000, 4, seed=99)
        cluster = LocalCluster(workers=2, cores=1).start() if "cluster" in modes else None
        try:
            for n in sizes:
                data = data_folder(n, args.rows_per_file, args.cache)
                mb = sum(f.stat().st_size for f in data.rglob("*.parquet")) / 1e6
                ref = run_child([sys.executable, __file__, "--reference-child", "--data", str(data), "--out",
                                 str(tmp / f"ref-{n}"), "--k", str(args.k)], env)
                rec.add(measure="reference", n=n, input_mb=round(mb), **ref)
                print(f"\nN={n:,} ({mb:,.0f} MB in {len(list(data.rglob('*.parquet')))} files)  reference: "
                      f"read {ref['read']:.1f} s, check {ref['check']:.1f}, syrk {ref['syrk']:.1f}, solve "
                      f"{ref['solve']:.1f}, project+write {ref['project_write']:.1f}; total {ref['total']:.1f} s, "
                      f"peak {ref['peak_mb']} MB", flush=True)
                for mode in modes:
                    for code in (["before"] if args.before else []) + ["this"]:
                        child_env = dict(env)
                        if code == "before":   # the other checkout's packages first on the child's path
                            child_env["PYTHONPATH"] = os.pathsep.join(
                                [str(args.before.resolve())] + [p for p in [env.get("PYTHONPATH")] if p])
                        rec.add(**job_row(args, mode, code, n, data, warm, tmp, cluster, child_env, ref))
        finally:
            if cluster is not None:
                cluster.stop()
    big = [r for r in rec.rows if r.get("measure") == "job" and r["n"] == max(sizes) and r["code"] == "this"]
    for r in big:
        rec.add(measure="extrapolated_100M", mode=r["mode"], ratio=r["ratio"], extrapolated=True,
                note="EXTRAPOLATED: the same ratio at 100M, assuming both scale linearly")
    path = rec.save()
    plot_stages(rec.rows, args.out / "pca.png")
    print(f"\nwrote {path}, {path.with_suffix('.json')}, {args.out / 'pca.png'}")
    return 0


def job_row(args, mode: str, code: str, n: int, data: Path, warm: Path, tmp: Path, cluster, env: dict,
            ref: dict) -> dict:
    """One run of the job (this checkout's, or ``--before``'s) in a child process, as a row; printed."""
    master = "local[2]" if mode == "local" else cluster.master_url
    pids = "" if mode == "local" else ",".join(str(p) for p in cluster.pids[1:])
    r = run_child([sys.executable, __file__, "--job-child", "--master", master, "--data", str(data),
                   "--warmup", str(warm), "--out", str(tmp / f"job-{code}-{mode}-{n}"), "--k", str(args.k),
                   "--worker-pids", pids], env)
    assert r["rows"] == n, r
    t = r["timings"]
    driver = r.get("driver_python_mb", 0) + r.get("driver_jvm_mb", r.get("jvm_mb", 0))
    executors = r.get("executor_jvms_mb", 0) + r.get("executor_python_mb", r.get("workers_mb", 0))
    row = {"measure": "job", "n": n, "mode": mode, "code": code, "seconds": r["seconds"],
           "ratio": round(r["seconds"] / ref["total"], 2),
           "read_validate_s": t.get("read_validate_s"), "fit_s": t.get("fit_s"),
           "write_s": t.get("write_s"), "passes": (r.get("passes") or {}).get("features"),
           "spark_jobs": r.get("spark_jobs"), "driver_mb": driver, "executors_mb": executors,
           "reference_s": ref["total"]}
    label = f"job {mode}" + (" (before)" if code == "before" else "")
    print(f"  {label:21s} {r['seconds']:7.1f} s = {row['ratio']:.2f} x reference  (read+validate "
          f"{t.get('read_validate_s', 0):.1f}, fit {t.get('fit_s', 0):.1f}, write {t.get('write_s', 0):.1f}; "
          f"passes over the features: {row['passes'] or '?'}; Spark jobs {row['spark_jobs'] or '?'}; peak driver "
          f"{driver} MB, executors {executors} MB)", flush=True)
    return row


def plot_stages(rows: list[dict], path: Path) -> None:
    """Stacked bars per N: the reference's and each mode's seconds by stage (read+validate, fit, project+write)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    refs = {r["n"]: r for r in rows if r.get("measure") == "reference"}
    jobs = [r for r in rows if r.get("measure") == "job"]
    sizes = sorted(refs)
    fig, axes = plt.subplots(1, len(sizes), figsize=(4.8 * len(sizes), 4.6), squeeze=False)
    # the job's read+validate pass also sums the Gram matrices: set it against the reference's read+check+syrk
    colors = {"read + validate + Gram sums": "#4c72b0", "solve": "#dd8452", "project + write": "#55a868"}
    for ax, n in zip(axes[0], sizes):
        ref = refs[n]
        bars = [("reference", {"read + validate + Gram sums": ref["read"] + ref["check"] + ref["syrk"],
                               "solve": ref["solve"], "project + write": ref["project_write"]})]
        for j in (j for j in jobs if j["n"] == n):
            name = j["mode"] + ("\nbefore" if j["code"] == "before" else "\nafter")
            bars.append((f"{name}\n{j['ratio']:.2f}x", {"read + validate + Gram sums": j["read_validate_s"] or 0,
                                                       "solve": j["fit_s"] or 0, "project + write": j["write_s"] or 0}))
        bottom = np.zeros(len(bars))
        for stage, color in colors.items():
            vals = np.array([b[1][stage] for b in bars])
            ax.bar([b[0] for b in bars], vals, bottom=bottom, color=color, label=stage)
            bottom += vals
        ax.set_title(f"N = {n:,}")
        ax.set_ylabel("seconds (2 cores)")
        ax.tick_params(axis="x", labelsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle("PCA job against the in-process reference, by stage (same files, same run)")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
