"""Identification on real photos, per set (lab frames, shop photos): how often the phone's answer is right, wrong,
"unknown" or "not sure", for fruits it knows and fruits it was never sent, at the variety and the species level, beside
plain baselines on the same vectors.

    ./run bench identify [--train DIR ...] [--test DIR ...] [--withhold card|N] [--rounds R] [--k 32[,64...]]
                         [--engine chromium] [--stability DRAWS] [--leave-out ROWS] [--no-transfer]

Each round withholds some training classes (never sent): by default the classes the model's fine-tuning never saw
(its card's ``fine_tuned.held_out``: the backbone has not seen them either), or ``--withhold N`` random ones. It fits
as the daily chain does (the training photos' vectors -> ``fruits-cloud pca`` -> ``publish --k K``, in local mode,
with the project's catalog, so the index knows its labels' species) and identifies every test photo the way a phone
does: its vector, the published projection and index read back from where publish wrote them (``fruits-edge
identify``'s code path), and, with ``--engine``, the page's code on the same vectors in a browser (its answers must be
the same; its identify time per photo is reported). Test photos of withheld classes, or of classes not in the
training folders, count as never sent; so do the training folders' photos of the withheld classes the model was never
trained on either (each folder's its own set, "grocery/train (never-sent classes)"): more never-sent photos than the
test folders hold, to pin their refusal down.

Each test folder is reported on its own, at the variety (label) and the species level (the catalog's fruit: "Granny-
Smith" and "Apple Braeburn" are both apples; "not sure: A or B" between two varieties of the right species names the
species): named right, wrong name, refused, precision of named answers, the right label or species among the 3
candidates shown, never-sent classes refused; the summary table gives each of these shares its 95% interval
(Wilson) from the number of photos behind it. Baselines fitted on the same known training rows, no refusal: 1-NN on
the standardized 1280-d vectors, and a linear classifier on them (ridge, one vs all); "lab -> shop" fits lab photos
only and asks shop photos (species level): how far lab references carry.

Defaults: ``../shared/data/fruits360`` (Training, Test) and ``../shared/data/grocery`` (train, val) when they are
there, else the project's own subsets in ``data/``. No film is on both sides: Fruits-360's Test frames are other
frames of Training's films, so the lab training drops the frames of one film (``--lab-film r_``) and the lab test keeps
only that film's; the shop photos are the dataset's own train and val splits.
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
SHARED = ROOT.parent / "shared" / "data"
OWN = ROOT / "data"
LAB, SHOP = "fruits360", "grocery"
NEVER_TRAINED = "(never-sent classes)"


def default_sets() -> tuple[list[Path], list[Path]]:
    """(training folders, test folders): the shared lab and shop photos when there, else the project's subsets."""
    root = SHARED if (SHARED / LAB).is_dir() and (SHARED / SHOP).is_dir() else OWN
    return [root / LAB / "Training", root / SHOP / "train"], [root / LAB / "Test", root / SHOP / "val"]


def set_name(folder: Path) -> str:
    return f"{folder.parent.name}/{folder.name}"


def vectors(folders: list[Path], out: Path, film: str = "", test: bool = False) -> dict:
    """The photos' vectors (fruits-edge vectorize), each folder's: features, labels, sources, image ids, set; lab
    folders split by ``film`` (:func:`film_split`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from contract.vectors import features_matrix
    from featurizer.preprocess import film_split
    from edge_client.vectorize import find_photos, vectorize
    from models import model_path

    tables, sets = [], []
    for i, folder in enumerate(folders):
        part = out.with_name(f"{out.stem}-{i}.parquet")
        keep = film_split(folder, film, test)
        photos = [p for p in find_photos([folder]) if keep is None or keep(Path(p.source).name)]
        vectorize(photos, part, model_path=model_path(), progress=False, client_id="bench-identify")
        t = pq.read_table(part)
        tables.append(t)
        sets += [set_name(folder)] * t.num_rows
    t = pa.concat_tables(tables)
    return {"x": features_matrix(t.column("features")), "label": np.array(t.column("label").to_pylist(), object),
            "source": t.column("source").to_pylist(), "table": t, "set": np.array(sets, object)}


def fit_and_publish(spark, table, tmp: Path, name: str, ks: list[int]) -> dict[int, Path]:
    """The daily chain on ``table``'s rows: pca (variance 0.95) then publish at each k, with the project's catalog
    (the index learns its labels' species from it); {k: the root it wrote}."""
    import pyarrow.parquet as pq

    from cloud_pca.catalog import seed_bytes
    from cloud_pca.job import JobConfig, run
    from cloud_pca.publish import publish

    (tmp / name / "in").mkdir(parents=True)
    pq.write_table(table, tmp / name / "in" / "v.parquet")
    result = run(spark, JobConfig(inputs=[f"file://{tmp / name / 'in'}"], output=f"file://{tmp / name / 'pca'}",
                                  variance=0.95, run_id=name, plots=False))
    roots = {}
    for k in ks:
        root = tmp / name / f"root-k{k}"
        (root / "models").mkdir(parents=True)
        (root / "models" / "catalog.json").write_bytes(seed_bytes())
        publish(spark, result.run_uri, f"file://{root}", k=min(k, result.summary["k"]))
        roots[k] = root
    return roots


def baselines(train_x, train_y, test_x, test_y, known: set, species_of) -> dict:
    """Plain identifiers on the same 1280-d vectors, standardized on the training rows, no refusal: 1-NN and a ridge
    classifier (one vs all): the share of known test photos whose label and species they name right."""
    mean, std = train_x.mean(axis=0), train_x.std(axis=0)
    inv = np.divide(1.0, std, out=np.zeros_like(std), where=std > 0)
    a, b = (train_x - mean) * inv, (test_x - mean) * inv
    kn = np.array([t in known for t in test_y])
    if not kn.any():
        return {}
    d = (b * b).sum(1)[:, None] - 2 * b @ a.T + (a * a).sum(1)[None, :]
    nn = train_y[np.argmin(d, axis=1)]
    labels = np.array(sorted(set(train_y)), object)
    target = (train_y[:, None] == labels[None, :]).astype(np.float64) * 2 - 1
    xa = np.hstack([a, np.ones((len(a), 1))])
    w = np.linalg.solve(xa.T @ xa + 0.1 * len(a) * np.eye(xa.shape[1]), xa.T @ target)
    ridge = labels[np.argmax(np.hstack([b, np.ones((len(b), 1))]) @ w, axis=1)]
    sp = np.vectorize(species_of, otypes=[object])
    out = {}
    for name, guess in (("1-NN", nn), ("ridge", ridge)):
        out[f"{name} label"] = float(np.mean(guess[kn] == test_y[kn]))
        out[f"{name} species"] = float(np.mean(sp(guess[kn]) == sp(test_y[kn])))
    return {key: round(v, 4) for key, v in out.items()}


def withheld_classes(args, fruits: list[str], r: int) -> list[str]:
    """The round's never-sent classes: the model's fine-tuning hold-outs (its card) that the training folders hold,
    ``--withhold N`` drawn as the demo draws them, or ``--withhold A,B,...`` named (another model's run withholding
    the same classes)."""
    from edge_client.project import never_sent

    if not args.withhold.isdigit() and args.withhold != "card":
        return sorted(set(args.withhold.split(",")) & set(fruits))

    if args.withhold == "card":
        return sorted(set(fine_tuning_held_out() or []) & set(fruits))
    return never_sent(fruits, int(args.withhold), args.seed + r)


def fine_tuning_held_out() -> list[str] | None:
    """The classes the model's fine-tuning held out (its card's ``fine_tuned.held_out``), or None for a model its card
    shows no fine-tuning for."""
    from contract.card import load_model_card
    from models import model_path

    tuned = load_model_card(model_path()).weights.get("fine_tuned")
    return (tuned.get("held_out") or []) if tuned else None


def never_trained(withheld: list[str]) -> list[str]:
    """The withheld classes the model was never trained on either: the fine-tuning's hold-outs among them, or all of
    them for a model without fine-tuning (the base saw no fruit photos)."""
    held = fine_tuning_held_out()
    return sorted(withheld) if held is None else sorted(set(withheld) & set(held))


def with_never_trained(test: dict, train: dict, classes: list[str]) -> dict:
    """The test photos and, as more never-sent photos, the training folders' photos of ``classes`` (never fitted:
    withheld; never trained on: :func:`never_trained`), each folder's as its own set "<folder> (never-sent classes)":
    the test folders hold few photos of the never-sent classes, and this pins their refusal down more tightly."""
    extra = np.flatnonzero(np.isin(train["label"], classes))
    return {"x": np.vstack([test["x"], train["x"][extra]]),
            "label": np.concatenate([test["label"], train["label"][extra]]),
            "set": np.concatenate([test["set"], np.array([f"{s} {NEVER_TRAINED}" for s in train["set"][extra]],
                                                         object)])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    train_default, test_default = default_sets()
    ap.add_argument("--train", type=Path, nargs="+", default=train_default, help="training folders (class folders)")
    ap.add_argument("--test", type=Path, nargs="+", default=test_default, help="test folders, each reported apart")
    ap.add_argument("--withhold", default="card",
                    help="'card': the classes the model's fine-tuning never saw (default); N random classes; or "
                         "class names, comma-separated")
    ap.add_argument("--rounds", type=int, default=1, help="rounds, each withholding other classes (default 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--k", default="32", help="components published, a list to compare (default 32)")
    ap.add_argument("--engine", default="none", choices=("none", "chromium", "firefox", "webkit"),
                    help="also answer in the page in this engine (same answers; its identify time per photo)")
    ap.add_argument("--out", type=Path, default=Path("out/benchmarks"))
    ap.add_argument("--stability", type=int, default=3, metavar="DRAWS",
                    help="in round 0, refit this many times with --leave-out random training rows left out and count "
                         "the test answers that change (what a refresh with a few rows more or less moves)")
    ap.add_argument("--leave-out", type=int, default=20)
    ap.add_argument("--no-transfer", action="store_true", help="skip the lab -> shop row")
    ap.add_argument("--lab-film", default="r_", help="the Fruits-360 film the lab test keeps and the lab training "
                                                     "drops (default r_: no film on both sides; '' for all frames)")
    ap.add_argument("--smoke", action="store_true", help="the project's subsets, 1 round: that it runs")
    args = ap.parse_args()
    if args.smoke:
        args.train = [OWN / LAB / "Training", OWN / SHOP / "train"]
        args.test = [OWN / LAB / "Test", OWN / SHOP / "val"]
        args.rounds, args.stability = 1, 1
    ks = sorted({int(k) for k in args.k.split(",")})
    for folder in [*args.train, *args.test]:
        if not folder.is_dir():
            print(f"Error: {folder} is not a folder", file=sys.stderr)
            return 1

    from cloud_pca.catalog import seed_bytes
    from cloud_pca.spark import get_spark
    from contract.catalog import Catalog
    from edge_client.project import Published, figures, identify_features, lab_film_seen
    from models import model_path
    from featurizer.runtime import Model

    catalog = Catalog.from_bytes(seed_bytes())

    def species_of(label: str) -> str:
        return catalog.species(label) or label.split()[0].lower()

    rec = Recorder("identify", args.out)
    sha = Model(model_path(), threads=1).sha256
    seen = lab_film_seen(args.lab_film)
    if seen:
        print(f"WARNING: {seen}: the lab figures below are not film-disjoint", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="bench-identify-") as t:
        tmp = Path(t)
        train, s_train = timed("vectorize train", lambda: vectors(args.train, tmp / "train.parquet", args.lab_film))
        test, s_test = timed("vectorize test", lambda: vectors(args.test, tmp / "test.parquet", args.lab_film, True))
        print(f"train: {len(train['x'])} photos of {len(set(train['label']))} classes "
              f"({', '.join(map(set_name, args.train))}); test: {len(test['x'])} photos "
              f"({', '.join(map(set_name, args.test))}); vectorized in {s_train + s_test:.1f} s; model {model_path().name}")
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
                withheld = withheld_classes(args, fruits, r)
                known = set(fruits) - set(withheld)
                keep = np.array([lab in known for lab in train["label"]])
                roots, s_fit = timed(f"round {r}: pca + publish", lambda: fit_and_publish(
                    spark, train["table"].filter(keep), tmp, f"r{r}", ks))
                print(f"\nround {r}: withheld (never sent): {', '.join(withheld) or 'none'}; fit and publish "
                      f"{s_fit:.1f} s")
                asked = with_never_trained(test, train, never_trained(withheld))
                for k, root in roots.items():
                    projection, index = Published(str(root)).identifier(sha)
                    t0 = time.perf_counter()
                    answers = [identify_features(x, projection, index) for x in asked["x"]]
                    py_ms = (time.perf_counter() - t0) * 1000 / len(answers)
                    files = sorted((root / "models").iterdir())
                    download = sum(f.stat().st_size for f in files if not f.name.startswith("catalog"))
                    for name in dict.fromkeys(asked["set"]):
                        at = np.flatnonzero(asked["set"] == name)
                        rows = [(asked["label"][i], answers[i].answer, [x[0] for x in answers[i].ranked])
                                for i in at]
                        row = {"measure": "identify", "round": r, "set": name, "k": projection.k,
                               "withheld": ";".join(withheld), "known_classes": len(known), "test_photos": len(at),
                               "download_bytes": download, "python_ms_per_photo": round(py_ms, 4),
                               "calibration": index.calibration, "lab_film_seen_by_model": bool(seen)}
                        for level, f in figures(rows, known, species_of).items():
                            row.update({f"{level}_{key}": v for key, v in f.items()})
                        row.update(baselines(train["x"][keep], train["label"][keep], asked["x"][at],
                                             asked["label"][at], known, species_of))
                        rec.add(**row)
                        show(row)
                    if phone is not None:
                        index_file = next(f for f in files if f.name.startswith("index-"))
                        page, page_ms = phone.identify_vectors(
                            next(f for f in files if f.name.startswith("projection-") and f.suffix == ".npz").read_bytes(),
                            index_file.read_bytes(), index_file.stem.split("-", 1)[1], asked["x"])
                        differ = sum(p["answer"] != a.answer for p, a in zip(page, answers))
                        rec.add(measure="page", round=r, k=projection.k, page_ms_per_photo=round(page_ms, 4),
                                page_photos=len(page), page_answers_differing=differ)
                        print(f"  page ({args.engine}): {page_ms:.3f} ms a photo; {differ} of {len(page)} answers "
                              "differ from Python's")
                    if r == 0 and args.stability:
                        stability(spark, args, rec, train, test, keep, tmp, k, sha,
                                  [a.answer for a in answers[:len(test["x"])]])
            if not args.no_transfer:
                transfer(spark, args, rec, train, test, tmp, ks[0], sha, species_of)
        finally:
            if browser_cm is not None:
                browser_cm.__exit__(None, None, None)
                server_cm.__exit__(None, None, None)
            spark.stop()
    summarize(rec.rows)
    print(f"\nwrote {rec.save()}")
    return 0


def transfer(spark, args, rec, train, test, tmp: Path, k: int, sha: str, species_of) -> None:
    """Lab -> shop: an index fitted on the lab photos alone asks the shop photos, at the species level (its labels are
    lab varieties: a shop photo's answer is right when it names a lab variety of the photo's species)."""
    from edge_client.project import Published, figures, identify_features

    lab = np.array([s.startswith(LAB) for s in train["set"]])
    shop = np.flatnonzero(np.array([s.startswith(SHOP) for s in test["set"]]))
    if not lab.any() or not len(shop):
        return
    root = fit_and_publish(spark, train["table"].filter(lab), tmp, "transfer", [k])[k]
    projection, index = Published(str(root)).identifier(sha)
    known = set(train["label"][lab])
    rows = [(test["label"][i], (a := identify_features(test["x"][i], projection, index)).answer,
             [x[0] for x in a.ranked]) for i in shop]
    kinds = {species_of(x) for x in known}
    f = figures([r for r in rows if species_of(r[0]) in kinds], set(test["label"][shop]) | known, species_of)["species"]
    base = baselines(train["x"][lab], train["label"][lab], test["x"][shop], test["label"][shop],
                     {lab_ for lab_ in test["label"][shop] if species_of(lab_) in kinds} | known, species_of)
    rec.add(measure="transfer", set="lab -> shop", k=projection.k, species_photos=f["known_photos"],
            **{f"species_{key}": v for key, v in f.items()}, **{key: v for key, v in base.items() if "species" in key})
    print(f"\nlab -> shop ({f['known_photos']} shop photos of species the lab photos show): named right "
          f"{pct(f['named_right'])}, wrong {pct(f['wrong'])}, precision {pct(f['precision'])}; 1-NN "
          f"{pct(base.get('1-NN species'))}, ridge {pct(base.get('ridge species'))}")


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


def pct(v) -> str:
    return "-" if v is None else f"{v:.1%}"


def film_seen(row: dict) -> bool:
    """The row is a lab test set and the model's fine-tuning trained on the film its test keeps
    (``edge_client.project.lab_film_seen``); not the never-sent classes' training photos (it never trained on them)."""
    return bool(row.get("lab_film_seen_by_model")) and row["set"].startswith(LAB) and NEVER_TRAINED not in row["set"]


def show(row: dict) -> None:
    print(f"  {row['set']} (k={row['k']}, {row['test_photos']} photos)"
          + (" NOT FILM-DISJOINT: the model's fine-tuning saw this film" if film_seen(row) else "") + ":")
    for level in ("label", "species"):
        known = (f"known ({row[f'{level}_known_photos']}) named right {pct(row[f'{level}_named_right'])}, wrong "
                 f"{pct(row[f'{level}_wrong'])}, unknown {pct(row[f'{level}_unknown'])}, not sure "
                 f"{pct(row[f'{level}_not_sure'])}; precision {pct(row[f'{level}_precision'])}; among the 3 candidates "
                 f"{pct(row[f'{level}_among_candidates'])}; " if row[f"{level}_known_photos"] else "")
        print(f"    {level}: {known}never sent ({row[f'{level}_never_sent_photos']}) refused "
              f"{pct(row[f'{level}_never_sent_refused'])}")
    base = [f"{k} {pct(v)}" for k, v in row.items() if k.startswith(("1-NN", "ridge"))]
    if base:
        print("    baselines (no refusal): " + "; ".join(base))


def counted(row: dict, key: str) -> tuple[int, int] | None:
    """(hits, photos) behind one of a row's species shares that :func:`summarize` gives an interval: named right, the
    right species among the candidates and never-sent refused of their photos, precision of the named answers (shares
    are kept to 4 decimals: exact counts)."""
    known, never = row.get("species_known_photos") or 0, row.get("species_never_sent_photos") or 0
    share = row.get(key)
    if share is None:
        return None
    if key in ("species_named_right", "species_among_candidates"):     # the bench shows candidates for every photo
        return round(share * known), known
    if key == "species_never_sent_refused":
        return round(share * never), never
    if key == "species_precision":
        named = round((row["species_named_right"] + row["species_wrong"]) * known)
        return round(share * named), named
    return None


def interval(row: dict, key: str) -> str:
    """" (lo-hi)": the 95% Wilson interval of a share (:func:`counted`), or "" for the shares without one."""
    from edge_client.project import wilson

    c = counted(row, key)
    w = wilson(*c) if c else None
    return f" ({w[0] * 100:.1f}-{w[1] * 100:.1f})" if w else ""


def summarize(rows: list[dict]) -> None:
    """The table of docs/benchmarks.md: per set, mean over rounds (worst round in brackets when there are several;
    with one round, the 95% interval of named right, precision, among the candidates and never-sent refused, from
    their photo counts)."""
    rows = [r for r in rows if r["measure"] == "identify"]
    if not rows:
        return
    keys = ("species_named_right", "species_wrong", "species_precision", "species_among_candidates",
            "species_never_sent_refused", "label_named_right", "label_precision", "1-NN species", "ridge species")
    print("\n| set | k | " + " | ".join(k.replace("_", " ") for k in keys) + " |")
    print("|" + " --- |" * (len(keys) + 2))
    for name in dict.fromkeys(r["set"] for r in rows):
        for k in sorted({r["k"] for r in rows if r["set"] == name}):
            sel = [r for r in rows if r["set"] == name and r["k"] == k]
            cells = []
            for key in keys:
                vals = [r.get(key) for r in sel if r.get(key) is not None]
                cells.append("-" if not vals else pct(statistics.mean(vals)) +
                             (f" ({pct(min(vals))})" if len(vals) > 1 else interval(sel[0], key)))
            seen = " (film seen in fine-tuning)" if any(map(film_seen, sel)) else ""
            print(f"| {name}{seen} | {k} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    sys.exit(main())
