"""A year of daily refreshes: is day 365 as cheap as day 1? Every day ``--per-day`` new vectors arrive (in objects
of ``--devices`` keyed devices) in a bucket of the local stack's S3 server (moto on 127.0.0.1, a process of its own,
as ``./run web`` runs it), and ``fruits-cloud pca --incremental`` runs as the daily refresh does, with its state on
that S3 (``s3a://``), not in a local folder, in one warm Spark session (local[2]): what grows is the state, not the
start-up.

    ./run bench refresh [--days 365] [--per-day 1000] [--devices 4] [--k 32] [--smoke]

Printed: each refresh's seconds (every 30th day, and the table of refresh 1, 30 and 365), the state objects it read
(pointer, moments, objects list, history, ids files: ``summary.incremental.state_objects_read``), the ids folders in
force, and the medians of the first and last weeks. Goal: refresh 365 <= 1.2x refresh 1.
Output: ``out/benchmarks/refresh.{csv,json}``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import Recorder, make_files

BUCKET, ROOT = "fruits-bench", "fruits"


FIRST_DAY = "2026-01-01"     # the simulated year's day 1: uploads are filed under their day, the job runs as of it


def simulated(day: int) -> str:
    from contract.layout import shift_day

    return shift_day(FIRST_DAY, day - 1)


def send_day(s3, tmp: Path, day: int, per_day: int, devices: int) -> int:
    """The day's objects, as uploads make them (content-named keys under ``vectors/``, filed under the simulated
    day); returns their bytes."""
    folder = tmp / f"day{day}"
    paths = make_files(folder, per_day, devices, seed=1000 + day, start=day * 10_000_000, day=simulated(day))
    size = 0
    for path in paths:
        data = path.read_bytes()
        s3.put_object(Bucket=BUCKET, Key=f"{ROOT}/{path.relative_to(folder).as_posix()}", Body=data)
        size += len(data)
        path.unlink()
    return size


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--per-day", type=int, default=1000)
    ap.add_argument("--devices", type=int, default=4, help="objects per day (one per device)")
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--profile", action="store_true", help="cProfile the first and the last refresh (wall time, "
                                                             "the job's own functions)")
    ap.add_argument("--smoke", action="store_true", help="12 days of 200 vectors: that it runs and writes its results")
    ap.add_argument("--out", type=Path, default=Path("out/benchmarks"))
    args = ap.parse_args()
    if args.smoke:
        args.days, args.per_day = 12, 200
    import boto3

    from cloud_pca.job import JobConfig, run
    from cloud_pca.spark import get_spark
    from demo.s3server import TEST_CREDENTIALS, LocalS3

    os.environ.update(TEST_CREDENTIALS)    # the local server's keys, for boto3 and Spark's S3A alike
    rec = Recorder("refresh", args.out)
    rows = []
    with LocalS3(mode="process") as server, tempfile.TemporaryDirectory(prefix="bench-refresh-") as t:
        tmp = Path(t)
        s3 = boto3.client("s3", endpoint_url=server.endpoint_url, region_name="us-east-1",
                          aws_access_key_id=TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
        s3.create_bucket(Bucket=BUCKET)
        spark = get_spark("fruits-bench-refresh", master="local[2]", s3_endpoint=server.endpoint_url)
        inputs, output = f"s3a://{BUCKET}/{ROOT}/vectors/", f"s3a://{BUCKET}/{ROOT}/pca"
        # Warm-up (imports, the JVM's first S3A calls), on a state of its own.
        make_files(tmp / "warm", 500, 2, seed=1, start=1)
        for p in (tmp / "warm").rglob("*.parquet"):
            s3.put_object(Bucket=BUCKET, Key=f"warm/{p.relative_to(tmp / 'warm').as_posix()}", Body=p.read_bytes())
        for i in range(2):
            run(spark, JobConfig(inputs=[f"s3a://{BUCKET}/warm/"], output=f"s3a://{BUCKET}/warm-out", k=args.k,
                                 run_id=f"w{i}", incremental=True))
        print(f"{args.days} daily refreshes of {args.per_day} vectors in {args.devices} objects; state on the local "
              f"stack's S3 ({server.endpoint_url}); k={args.k}", flush=True)
        print(f"{'day':>4s} {'rows total':>10s} {'refresh s':>9s} {'state objects read':>18s} {'ids folders':>11s} "
              f"{'read / fit / write s':>22s} {'listing s (objects)':>20s}", flush=True)
        for day in range(1, args.days + 1):
            send_day(s3, tmp, day, args.per_day, args.devices)
            profile = None
            if args.profile and day in (2, args.days):
                import cProfile

                profile = cProfile.Profile()
                profile.enable()
            t0 = time.perf_counter()
            result = run(spark, JobConfig(inputs=[inputs], output=output, k=args.k, run_id=f"day{day:03d}",
                                          incremental=True, as_of=simulated(day)))
            seconds = time.perf_counter() - t0
            if profile is not None:
                import pstats

                profile.disable()
                print(f"-- profile of refresh {day} (cumulative wall seconds, the job's functions)")
                pstats.Stats(profile).sort_stats("cumulative").print_stats(r"cloud_pca|contract", 45)
            inc, tim = result.summary["incremental"], result.summary["timings_s"]
            assert inc["rows_added"] == args.per_day, inc
            pointer = json.loads(s3.get_object(Bucket=BUCKET, Key=f"{ROOT}/pca/state/model={'b' * 64}/current.json")
                                 ["Body"].read())
            row = {"measure": "refresh", "day": day, "rows_total": inc["rows_total"], "seconds": round(seconds, 3),
                   "state_objects_read": inc["state_objects_read"], "ids_folders": len(pointer["ids"]),
                   "objects_counted": inc["objects_counted_before"] + inc["objects_read"],
                   "read_s": tim.get("read_validate_s"), "fit_s": tim.get("fit_s"), "write_s": tim.get("write_s"),
                   "objects_listed": inc["objects_listed"], "list_s": inc["list_s"],
                   "days_listed": "..".join(inc["days_listed"]) if isinstance(inc["days_listed"], list) else "all",
                   "angle_top10_deg": inc["history"][-1]["angle_top10_deg"]}
            rows.append(row)
            rec.add(**row)
            if day in (1, 2, 30, args.days) or day % 30 == 0:
                print(f"{day:4d} {row['rows_total']:10d} {seconds:9.2f} {row['state_objects_read']:18d} "
                      f"{row['ids_folders']:11d} {tim.get('read_validate_s'):7.2f} /{tim.get('fit_s'):5.2f} /"
                      f"{tim.get('write_s'):5.2f} {row['list_s']:9.2f} ({row['objects_listed']})", flush=True)
        spark.stop()
    first = rows[0]
    week1 = statistics.median(r["seconds"] for r in rows[:7])
    last7 = statistics.median(r["seconds"] for r in rows[-7:])
    worst = max(rows, key=lambda r: r["seconds"])
    print("\n| refresh | rows counted | seconds | state objects read | ids folders |")
    print("| --- | --- | --- | --- | --- |")
    for day in sorted({1, min(30, args.days), args.days}):
        r = rows[day - 1]
        print(f"| {day} | {r['rows_total']:,} | {r['seconds']:.2f} | {r['state_objects_read']} | {r['ids_folders']} |")
    lists = [r["list_s"] for r in rows]
    print(f"\nlisting the inputs (inside read): median {statistics.median(lists[:7]):.2f} s (first 7) -> "
          f"{statistics.median(lists[-7:]):.2f} s (last 7), {rows[-1]['objects_listed']} objects at the end")
    print(f"\nrefresh {args.days} / refresh 1: {rows[-1]['seconds'] / first['seconds']:.2f} (goal <= 1.2); median of the "
          f"last 7 / the first 7: {last7 / week1:.2f} ({last7:.2f} / {week1:.2f} s); slowest: day {worst['day']}, "
          f"{worst['seconds']:.2f} s ({worst['ids_folders']} ids folders after it)")
    rec.add(measure="summary", days=args.days, per_day=args.per_day, ratio_last_first=round(rows[-1]["seconds"] / first["seconds"], 3),
            ratio_last7_first7=round(last7 / week1, 3), slowest_day=worst["day"], slowest_s=worst["seconds"])
    print(f"written: {rec.save()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
