"""Identification on real photos: how often the phone's answer is right, wrong, "unknown" or "not sure", for fruits
it knows and fruits it was never sent, beside plain baselines on the same vectors.

    ./run bench identify [--train DIR] [--test DIR] [--unseen N] [--rounds R] [--k 32[,64...]] [--engine chromium]
                         [--stability DRAWS] [--leave-out ROWS]

Each round withholds N of the training fruits (never sent), fits as the daily chain does (the training photos'
vectors -> ``fruits-cloud pca`` -> ``publish --k K``, in local mode), and identifies every test photo the way a
phone does: its vector, the published projection and index read back from where publish wrote them
(``fruits-edge identify``'s code path), and, with ``--engine``, the page's code on the same vectors in a browser
(its answers must be the same; its identify time per photo is reported). Test photos of withheld fruits, or of
fruits not in the training folder, count as never sent. Baselines on the same vectors, fitted on the same known
training rows, with no refusal: nearest centroid in the published space (what was published before), 1-NN in the
published space, 1-NN in 1280-d (standardized); and 1-NN with an *oracle* distance threshold set on the test's own
known photos to refuse 5% of them (what a threshold could do at best).

Defaults: ``../shared/data/fruits360`` when it is there (its Test/ = other frames of the Training films), else the
project's own subset ``data/fruits360``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import Recorder, answers_changed, timed

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data" / "fruits360"
OWN = ROOT / "data" / "fruits360"


def vectors(folder: Path, out: Path) -> dict:
    """The photos' vectors (fruits-edge vectorize): features, labels, sources, image ids."""
    import pyarrow.parquet as pq

    from contract.vectors import features_matrix
    from edge_client.vectorize import find_photos, vectorize
    from models import model_path

    vectorize(find_photos([folder]), out, model_path=model_path(), progress=False, client_id="bench-identify")
    t = pq.read_table(out)
    return {"x": features_matrix(t.column("features")), "label": np.array(t.column("label").to_pylist(), object),
            "source": t.column("source").to_pylist(), "table": t}


def fit_and_publish(spark, table, tmp: Path, name: str, ks: list[int]) -> dict[int, Path]:
    """The daily chain on ``table``'s rows: pca (variance 0.95) then publish at each k; {k: the root it wrote}."""
    import pyarrow.parquet as pq

    from cloud_pca.job import JobConfig, run
    from cloud_pca.publish import publish

    (tmp / name / "in").mkdir(parents=True)
    pq.write_table(table, tmp / name / "in" / "v.parquet")
    result = run(spark, JobConfig(inputs=[f"file://{tmp / name / 'in'}"], output=f"file://{tmp / name / 'pca'}",
                                  variance=0.95, run_id=name, plots=False))
    roots = {}
    for k in ks:
        root = tmp / name / f"root-k{k}"
        publish(spark, result.run_uri, f"file://{root}", k=min(k, result.summary["k"]))
        roots[k] = root
    return roots


def baselines(projection, train_x, train_y, test_x, test_y, known: set[str]) -> dict:
    """Plain identifiers on the same vectors (no refusal), and 1-NN with an oracle threshold."""
    yt, ye = projection.project(train_x).astype(np.float64), projection.project(test_x).astype(np.float64)
    labels = sorted(set(train_y))
    cents = np.stack([yt[train_y == lab].mean(axis=0) for lab in labels])
    kn = np.array([t in known for t in test_y])

    def nn(a, b):
        d = (a * a).sum(1)[:, None] - 2 * a @ b.T + (b * b).sum(1)[None, :]
        return np.argmin(d, axis=1), np.sqrt(np.clip(d.min(axis=1), 0, None))

    z = lambda x: (x - projection.mean) * projection.scale   # noqa: E731
    out = {}
    i, _ = nn(ye, cents)
    out["nearest centroid, published space"] = np.mean(np.array(labels)[i][kn] == test_y[kn])
    i, dist = nn(ye, yt)
    out["1-NN, published space"] = np.mean(train_y[i][kn] == test_y[kn])
    i, _ = nn(z(test_x), z(train_x))
    out["1-NN, 1280-d"] = np.mean(train_y[i][kn] == test_y[kn])
    if kn.any() and (~kn).any():
        t = np.quantile(dist[kn], 0.95)
        out["oracle 1-NN threshold: never-sent refused at 5% known refused"] = float(np.mean(dist[~kn] > t))
    return {key: round(float(v), 4) for key, v in out.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = SHARED if SHARED.is_dir() else OWN
    ap.add_argument("--train", type=Path, default=default / "Training")
    ap.add_argument("--test", type=Path, default=default / "Test")
    ap.add_argument("--unseen", type=int, default=5, help="training fruits withheld as never sent (default 5)")
    ap.add_argument("--rounds", type=int, default=1, help="rounds, each withholding other fruits (default 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--k", default="32", help="components published, a list to compare (default 32)")
    ap.add_argument("--engine", default="none", choices=("none", "chromium", "firefox", "webkit"),
                    help="also answer in the page in this engine (same answers; its identify time per photo)")
    ap.add_argument("--out", type=Path, default=Path("out/benchmarks"))
    ap.add_argument("--stability", type=int, default=3, metavar="DRAWS",
                    help="in round 0, refit this many times with --leave-out random training rows left out and count "
                         "the test answers that change (what a refresh with a few rows more or less moves)")
    ap.add_argument("--leave-out", type=int, default=20)
    ap.add_argument("--smoke", action="store_true", help="the project's subset, 1 round, 3 withheld: that it runs")
    args = ap.parse_args()
    if args.smoke:
        args.train, args.test, args.unseen, args.rounds, args.stability = OWN / "Training", OWN / "Test", 3, 1, 1
    ks = sorted({int(k) for k in args.k.split(",")})
    for folder in (args.train, args.test):
        if not folder.is_dir():
            print(f"Error: {folder} is not a folder", file=sys.stderr)
            return 1

    from cloud_pca.spark import get_spark
    from edge_client.project import Published, figures, identify_features, never_sent
    from models import model_path
    from featurizer.runtime import Model

    rec = Recorder("identify", args.out)
    sha = Model(model_path(), threads=1).sha256
    with tempfile.TemporaryDirectory(prefix="bench-identify-") as t:
        tmp = Path(t)
        train, s_train = timed("vectorize train", lambda: vectors(args.train, tmp / "train.parquet"))
        test, s_test = timed("vectorize test", lambda: vectors(args.test, tmp / "test.parquet"))
        print(f"train: {len(train['x'])} photos of {len(set(train['label']))} fruits ({args.train}); test: "
              f"{len(test['x'])} photos ({args.test}); vectorized in {s_train + s_test:.1f} s")
        spark = get_spark("bench-identify", master="local[2]")
        fruits = sorted(set(train["label"]))
        phone = browser_cm = server_cm = None
        if args.engine != "none":
            from web.build import build
            from web.device import browser
            from web.server import WebServer

            server_cm = WebServer(build(), {})
            server = server_cm.__enter__()
            browser_cm = browser(args.engine)
            phone = browser_cm.__enter__().open(server.url)
        try:
            for r in range(args.rounds):
                withheld = never_sent(fruits, args.unseen, args.seed + r)
                known = set(fruits) - set(withheld)
                keep = np.array([lab in known for lab in train["label"]])
                roots, s_fit = timed(f"round {r}: pca + publish", lambda: fit_and_publish(
                    spark, train["table"].filter(keep), tmp, f"r{r}", ks))
                print(f"\nround {r}: withheld (never sent): {', '.join(withheld)}; fit and publish {s_fit:.1f} s")
                for k, root in roots.items():
                    projection, index = Published(str(root)).identifier(sha)
                    t0 = time.perf_counter()
                    answers = [identify_features(x, projection, index) for x in test["x"]]
                    py_ms = (time.perf_counter() - t0) * 1000 / len(answers)
                    fig = figures(list(zip(test["label"], [a.answer for a in answers])), known)
                    files = sorted((root / "models").iterdir())
                    download = sum(f.stat().st_size for f in files)
                    row = {"measure": "identify", "round": r, "k": projection.k, "withheld": ";".join(withheld),
                           "known_fruits": len(known), "test_photos": len(answers), "download_bytes": download,
                           "python_ms_per_photo": round(py_ms, 4), "calibration": index.calibration}
                    for level, f in fig.items():
                        row.update({f"{level}_{key}": v for key, v in f.items()})
                    row.update(baselines(projection, train["x"][keep], train["label"][keep], test["x"], test["label"],
                                         known))
                    if phone is not None:
                        index_file = next(f for f in files if f.name.startswith("index-"))
                        page, page_ms = phone.identify_vectors(
                            next(f for f in files if f.name.startswith("projection-") and f.suffix == ".npz").read_bytes(),
                            index_file.read_bytes(), index_file.stem.split("-", 1)[1], test["x"])
                        row["page_ms_per_photo"] = round(page_ms, 4)
                        row["page_answers_differing"] = sum(p["answer"] != a.answer for p, a in zip(page, answers))
                    rec.add(**row)
                    show(row)
                    if r == 0 and args.stability:
                        stability(spark, args, rec, train, test, keep, tmp, k, sha,
                                  [a.answer for a in answers])
        finally:
            if browser_cm is not None:
                browser_cm.__exit__(None, None, None)
                server_cm.__exit__(None, None, None)
            spark.stop()
    summarize(rec.rows)
    print(f"\nwrote {rec.save()}")
    return 0


def stability(spark, args, rec, train, test, keep, tmp: Path, k: int, sha: str, before: list) -> None:
    """The same round refitted with ``--leave-out`` random training rows left out, ``--stability`` times: the share
    of test answers that change, and the share newly given a wrong fruit's name (a never-sent fruit's photo named
    counts too)."""
    from edge_client.project import Published, identify_features

    rows = np.flatnonzero(keep)
    changed, wrong = [], []
    for d in range(args.stability):
        out = np.random.default_rng(1000 + d).choice(rows, min(args.leave_out, len(rows) - 1), replace=False)
        mine = keep.copy()
        mine[out] = False
        root = fit_and_publish(spark, train["table"].filter(mine), tmp, f"s{k}-{d}", [k])[k]
        projection, index = Published(str(root)).identifier(sha)
        after = [identify_features(x, projection, index).answer for x in test["x"]]
        c, w = answers_changed(before, after, list(test["label"]))
        changed.append(c)
        wrong.append(w)
    rec.add(measure="stability", k=k, leave_out=args.leave_out, training_rows=int(keep.sum()), changed=changed,
            wrong_name_new=wrong)
    print(f"        stability: {args.leave_out} of {int(keep.sum())} training rows left out ({len(changed)} draws): "
          f"test answers changed {np.mean(changed):.1%} ({min(changed):.1%}-{max(changed):.1%}), newly a wrong "
          f"fruit's name {np.mean(wrong):.1%}")


def show(row: dict) -> None:
    pct = lambda v: "-" if v is None else f"{v:.1%}"   # noqa: E731
    print(f"  k={row['k']}: known fruits ({row['label_known_photos']} photos): named right "
          f"{pct(row['label_named_right'])}, wrong {pct(row['label_wrong'])}, unknown {pct(row['label_unknown'])}, "
          f"not sure {pct(row['label_not_sure'])}; precision {pct(row['label_precision'])}")
    print(f"        never sent ({row['label_never_sent_photos']} photos): unknown or not sure "
          f"{pct(row['label_never_sent_refused'])} (unknown {pct(row['label_never_sent_unknown'])}); species never "
          f"sent ({row['species_never_sent_photos']} photos): {pct(row['species_never_sent_refused'])}; species "
          f"known: named right {pct(row['species_named_right'])}, precision {pct(row['species_precision'])}")
    print(f"        a phone downloads {row['download_bytes']:,} bytes to identify; identify {row['python_ms_per_photo']:.3f}"
          f" ms/photo in Python" + (f", {row['page_ms_per_photo']:.3f} ms in the page ({row['page_answers_differing']} "
                                   f"answers differ)" if "page_ms_per_photo" in row else ""))
    print("        baselines (no refusal): " + "; ".join(f"{k} {v:.1%}" for k, v in row.items()
                                                     if k.startswith(("nearest", "1-NN", "oracle"))))


def summarize(rows: list[dict]) -> None:
    rows = [r for r in rows if r["measure"] == "identify"]
    if len({r["round"] for r in rows}) < 2:
        return
    print("\nacross rounds (mean / min):")
    for k in sorted({r["k"] for r in rows}):
        sel = [r for r in rows if r["k"] == k]
        line = []
        for key in ("label_named_right", "label_wrong", "label_precision", "label_never_sent_refused",
                    "species_never_sent_refused"):
            vals = [r[key] for r in sel if r[key] is not None]
            if vals:
                line.append(f"{key} {statistics.mean(vals):.1%} / {min(vals):.1%}")
        print(f"  k={k}: " + "; ".join(line))


if __name__ == "__main__":
    sys.exit(main())
