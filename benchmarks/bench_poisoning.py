"""How far can anonymous phones move what others get? Each attack of the threat model (docs/trust.md) added to
an honest set of real photos and run as the daily chain runs it (``cloud_pca.job.run``, the gram solver, local[2],
full and incremental; then ``publish`` against the projection in force, which holds a refit that turns too far).

    ./run bench poisoning [--photos DIR] [--k 10] [--only TEXT] [--draws 5] [--smoke]

Honest set: real Fruits-360 photos (``../shared/data/fruits360`` when it is there, else ``data/fruits360``), the
Training frames split in two by image id: one half is what honest devices sent (70% from 100 anonymous phones, 30% from
5 keyed laptops, over 10 days), the other half is a pool of real photos the attacks and the controls send; the Test
frames are what honest answers are measured on. The honest fit is published first, as in steady state.

- **Vector attacks**: the largest principal angle between the attacked fit's top-k subspace and the honest fit's,
  against the control (honest photos from the pool: what new honest data moves anyway); and what ``publish`` does
  with it (published, or held: turned more than 20 degrees from the projection in force). Goal: every attack within
  10 degrees of the control, or held; no honest row lost.
- **Label attacks**: honest answers on the Test photos that change against the control (the same photos honestly
  labelled by the same identities), the labels the index holds and its size. Goal: <= 1% changed for swaps from any
  number of anonymous identities, up to 30% of the rows. Which ids the re-sent photos get decides the index's sample
  and k-means' start, so the index's own noise and the earned-weight swap are measured over ``--draws`` draws
  (mean and range).
- **Crafted rows**: the trust stage's seconds (``timings_s.trust_s``) for 20,000 rows crafted to share one 32-bit
  signature half against 20,000 ordinary rows, in the same run. Goal: <= 2x.
- **State and stack**: a swapped or rolled-back state, damaged local-stack files: the run's exit code and its one line.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import numpy as np

from common import Recorder, answers_changed, timed

from cloud_pca.pca import largest_angle

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data" / "fruits360"
OWN = ROOT / "data" / "fruits360"
GROCERY = ROOT.parent / "shared" / "data" / "grocery"
DAY_MS = 86_400_000
T0 = 1_790_000_000_000          # the honest uploads' first day (ms since the epoch)


def cognito(i: int, region: str = "eu-west-3") -> str:
    return f"{region}:{uuid.UUID(int=(0x5EED << 96) + i, version=4)}"


def write_object(root: Path, rows: dict, client: str, mtime_ms: int, *, valid: bool = True) -> Path:
    """One object as a device uploads it: ``vectors/model=<sha>/day=<day>/client=<device>/part-<content>.parquet``;
    ``valid``: through the contract's writer (an honest device), else written raw (an attacker need not)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from contract.layout import vectors_object_key
    from contract.vectors import file_metadata, vector_schema, write_table

    key = vectors_object_key("", rows["model_sha256"][0], client, rows["image_id"])
    path = root / key
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table(rows, schema=vector_schema())
    if valid:
        write_table(table, path, model_sha256=rows["model_sha256"][0], model_name=rows["model_name"][0])
    else:
        pq.write_table(table.replace_schema_metadata(file_metadata(rows["model_sha256"][0], "m")), path)
    os.utime(path, ns=(mtime_ms * 1_000_000, mtime_ms * 1_000_000))
    return path


def rows_of(table, idx, client: str, features=None, **override) -> dict:
    from datetime import datetime, timezone

    t = table.take(list(map(int, idx)))
    out = {c: t.column(c).to_pylist() for c in t.column_names}
    out["client_id"] = [client] * len(idx)
    out["vectorized_at"] = [datetime.now(timezone.utc)] * len(idx)
    if features is not None:
        out["features"] = [list(map(float, r)) for r in features]
    out.update(override)
    return out


def fresh_ids(k: int, tag: str) -> list[str]:
    return [hashlib.sha256(f"{tag} {i}".encode()).hexdigest() for i in range(k)]


# ------------------------------------------------------------------------------------------------ data
def cached_vectors(folder: Path, cache: Path, tag: str, client_id: str, limit: int | None = None):
    """The photos of a folder (the first ``limit``) vectorized once by the Python edge with the committed model, cached
    under the folder and the model's fingerprint (keyed by the file's name, an earlier model's vectors were reused)."""
    from contract import read_vectors
    from contract.card import load_model_card
    from edge_client.vectorize import find_photos, vectorize
    from models import model_path

    sha = load_model_card(model_path()).sha256
    f = cache / f"{hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:12]}-{sha[:16]}-{tag}.parquet"
    if not f.exists():
        f.parent.mkdir(parents=True, exist_ok=True)
        vectorize(find_photos([folder])[:limit], f, model_path=model_path(), progress=False, client_id=client_id)
    return read_vectors(f)


def real_vectors(photos: Path, cache: Path):
    """The Training and Test photos vectorized once by the Python edge (the committed model), cached."""
    return tuple(cached_vectors(photos / split, cache, split, "honest") for split in ("Training", "Test"))


def split_halves(training):
    """(honest rows, pool rows): the Training rows split by a hash of the image id."""
    ids = training.column("image_id").to_pylist()
    half = np.array([int(i[:8], 16) % 2 for i in ids])
    return training.take(np.flatnonzero(half == 0)), training.take(np.flatnonzero(half == 1))


def lay_out_honest(root: Path, honest, per_object: int = 20) -> dict:
    """Honest objects: 70% from 100 anonymous phones, 30% from 5 keyed laptops, over 10 days. {image_id: client}."""
    owner = {}
    n = honest.num_rows
    order = np.random.default_rng(1).permutation(n)
    for o, start in enumerate(range(0, n, per_object)):
        idx = order[start:start + per_object]
        client = cognito(o % 100) if o % 10 < 7 else f"laptop-{o % 5}"
        write_object(root, rows_of(honest, idx, client), client, T0 + (o % 10) * DAY_MS + o * 1000)
        owner.update({honest.column("image_id")[int(i)].as_py(): client for i in idx})
    return owner


# --------------------------------------------------------------------------------------------- attacks
def write_rows(root, when, table, feats, clients, *, ids=None, labels=None, valid=False, tag="a", **override):
    """Rows with the given features (or the table's), one object per client, raw or through the contract's writer."""
    k = len(clients)
    ids = ids or fresh_ids(k, f"{tag} {when}")
    for j, client in enumerate(sorted(set(clients))):
        pick = [i for i in range(k) if clients[i] == client]
        extra = {c: [v[i] for i in pick] for c, v in override.items()}
        if labels is not None:
            extra["label"] = [labels[i] for i in pick]
        src = [i % table.num_rows for i in pick]
        write_object(root, rows_of(table, src, client, None if feats is None else [feats[i] for i in pick],
                                   image_id=[ids[i] for i in pick], **extra), client, when + j, valid=valid)


def low_variance_shift(x: np.ndarray, honest_x: np.ndarray, columns: int = 100, sd: float = 5.0, top: float = 4.99):
    """Real photo vectors moved ``sd`` standard deviations (of the honest rows) in the ``columns`` columns where the
    honest rows vary least (but vary)."""
    std = honest_x.std(axis=0)
    low = np.argsort(np.where(std > 0, std, np.inf))[:columns]
    out = np.array(x, np.float64, copy=True)
    out[:, low] += sd * std[low]
    return np.clip(out, 0, top)


def vector_attacks(honest, pool, n_attack: int) -> dict:
    """name -> writer(root, when) of each vector attack; the first is the control."""
    from contract.vectors import features_matrix

    rng = np.random.default_rng(2)
    hx = features_matrix(honest.column("features")).astype(np.float64)
    px = features_matrix(pool.column("features")).astype(np.float64)
    ids = honest.column("image_id").to_pylist()
    x0 = hx[int(rng.integers(len(hx)))]
    d = hx.shape[1]
    one, many = cognito(5000), [cognito(6000 + i) for i in range(100)]

    def near(k, noise):
        return np.clip(x0 + noise * rng.standard_normal((k, d)) * x0.std(), 0, 4.99)

    def pool_rows(k):
        return np.arange(k) % pool.num_rows

    def spread(k):
        return [many[i % 100] for i in range(k)]

    n_shift = max(1, round(n_attack * 0.9))
    claimed = min(300, len(ids) // 3)
    return {
        f"control: {n_attack} honest photos from the pool, 100 identities": lambda root, when: write_rows(
            root, when, pool.take(pool_rows(n_attack)), None, spread(n_attack),
            ids=[pool.column("image_id")[int(i)].as_py() for i in pool_rows(n_attack)], valid=True),
        "one row of 1e30": lambda root, when: write_rows(root, when, honest, [np.full(d, 1e30)], [one]),
        "one row of 1e6": lambda root, when: write_rows(root, when, honest, [np.full(d, 1e6)], [one]),
        f"{max(1, n_attack // 3)} rows of negative features": lambda root, when: write_rows(
            root, when, honest, -hx[:max(1, n_attack // 3)], [one] * max(1, n_attack // 3)),
        f"{n_attack} near-copies of one vector, one identity": lambda root, when: write_rows(
            root, when, honest, near(n_attack, 0.01), [one] * n_attack),
        f"{n_attack} near-copies of one vector, 100 identities (Sybil)": lambda root, when: write_rows(
            root, when, honest, near(n_attack, 0.01), spread(n_attack)),
        f"{n_attack} looser copies (noise 0.1 sd), 100 identities": lambda root, when: write_rows(
            root, when, honest, near(n_attack, 0.1), spread(n_attack)),
        f"{n_attack} uniform random vectors in [0, 4.99], 100 identities": lambda root, when: write_rows(
            root, when, honest, rng.uniform(0, 4.99, (n_attack, d)), spread(n_attack)),
        f"{n_attack} uniform random vectors in [0, 1] (a photo's distance from the center), 100 identities":
            lambda root, when: write_rows(root, when, honest, rng.uniform(0, 1, (n_attack, d)), spread(n_attack)),
        f"{n_shift} real photos shifted 5 SD in the 100 lowest-variance columns, one identity":
            lambda root, when: write_rows(root, when, honest, low_variance_shift(px[pool_rows(n_shift)], hx),
                                          [one] * n_shift, valid=True),
        f"{n_shift} real photos shifted 5 SD in the 100 lowest-variance columns, 100 identities":
            lambda root, when: write_rows(root, when, honest, low_variance_shift(px[pool_rows(n_shift)], hx),
                                          spread(n_shift), valid=True),
        f"{claimed} honest ids claimed, vectorized_at 1970": lambda root, when: write_rows(
            root, when, honest, near(claimed, 0.01), [one] * claimed, ids=ids[:claimed],
            vectorized_at=[__import__("datetime").datetime(1970, 1, 1, tzinfo=__import__("datetime").timezone.utc)]
            * claimed),
        "rows naming other devices": lambda root, when: write_rows(
            root, when, honest, hx[:20], [one] * 20, client_id=["laptop-0"] * 20),
        "a 0-byte object and a key of 32 dots": lambda root, when: _junk(root, when, one),
    }


def _junk(root: Path, when: int, client: str) -> None:
    from contract.layout import upload_day

    folder = root / f"vectors/model={'0' * 64}/day={upload_day()}/client={client}"
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in ((f"part-{'e' * 32}.parquet", b""), (f"part-{'.' * 32}.parquet", b"not parquet")):
        (folder / name).write_bytes(data)
        os.utime(folder / name, ns=(when * 1_000_000, when * 1_000_000))


# ------------------------------------------------------------------------------------------ the chain
def fit(spark, root: Path, out: Path, run_id: str, k: int, **mode) -> dict:
    from cloud_pca.job import JobConfig, run

    result = run(spark, JobConfig(inputs=[f"file://{root}/vectors"], output=f"file://{out}", k=k, run_id=run_id,
                                  plots=False, **mode))
    return {"summary": result.summary, "model": result.model, "run_uri": result.run_uri}


def publish_run(spark, run_uri: str, root: Path, k: int):
    from cloud_pca.publish import publish

    return publish(spark, run_uri, f"file://{root}", k=k)


def honest_kept(spark, run_uri: str, owner: dict) -> int:
    """Honest rows fitted as their honest device sent them (an id fitted with another device's vector is lost)."""
    proj = spark.read.parquet(f"{run_uri}/projections").select("image_id", "client_id").collect()
    return len({r["image_id"] for r in proj if owner.get(r["image_id"]) == r["client_id"]})


def answers(publication, test) -> list[str]:
    """The published index's answer for each Test photo, as a phone gives it."""
    from contract.vectors import features_matrix

    y = publication.projection.project(features_matrix(test.column("features")))
    return [publication.index.answer(row).answer for row in y]


def copy_base(base: Path, to: Path) -> Path:
    while to.exists():   # (a case that did not add a row to the record)
        to = to.with_name(to.name + "x")
    shutil.copytree(base, to, ignore=shutil.ignore_patterns("pca"))
    return to


# ------------------------------------------------------------------------------------------ sections
def run_vectors(spark, args, base, honest, pool, owner, ref, tmp, rec) -> None:
    ref_basis = ref["model"].components_[:args.k]
    n_attack = max(1, ref["summary"]["rows_in"] // 10)
    print("\n| attack (real photos, up to 10% of the rows) | rows | run | largest angle (deg) | publish | honest rows kept "
          "| set aside by the trust model |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, attack in vector_attacks(honest, pool, n_attack).items():
        if args.only and args.only not in name and not name.startswith("control"):
            continue
        for mode in ("full", "incremental"):
            root = copy_base(base, tmp / f"v{len(rec.rows)}")
            out = root / "pca"
            if mode == "incremental":   # the honest set counted first, then the attack in a refresh
                fit(spark, root, out, "state", args.fit_k, full=True)
            attack(root, T0 + 20 * DAY_MS)
            try:
                got, sec = timed(f"{name} {mode}", lambda: fit(spark, root, out, "attack", args.fit_k,
                                                              **({"incremental": True, "reproject": True}
                                                                 if mode == "incremental" else {})))
                done = publish_run(spark, got["run_uri"], root, args.publish_k)
            except Exception as exc:   # the run must complete: a failure is a result, and shown
                rec.add(measure="attack", attack=name, mode=mode, completed=False, error=str(exc)[:300])
                print(f"| {name} | | {mode}: FAILED ({str(exc)[:80]}) | | | | |", flush=True)
                continue
            s = got["summary"]
            angle = largest_angle(got["model"].components_[:args.k], ref_basis)
            kept = honest_kept(spark, got["run_uri"], owner) if mode == "full" else None
            c = s.get("contributions") or {}
            aside = {key: c.get(key, 0) for key in ("screened", "near_copies", "conflicts", "quarantined",
                                                     "held_back", "replaced_counted", "influence")}
            refused = s["rejected"] - sum(v for v in aside.values() if isinstance(v, int))
            t = done.record["turn"]
            verdict = (f"held ({t['turn_deg']:.1f} deg from the projection in force)" if done.held
                       else f"published ({t['turn_deg']:.1f} deg)")
            rec.add(measure="attack", attack=name, mode=mode, completed=True, angle_deg=round(angle, 3),
                    turn_deg=t["turn_deg"], held=done.held, dk_bound_deg=t.get("dk_bound_deg"),
                    top_driver=(t["drivers"][0]["device"] if t.get("drivers") else None),
                    honest_kept=kept, honest=len(owner), rows_in=s["rows_in"], rejected=s["rejected"],
                    seconds=round(sec, 2), trust_s=s["timings_s"].get("trust_s"), **aside)
            why = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in aside.items() if v) or "-"
            print(f"| {name} | {s['rows_in']} | {mode} | {angle:.2f} | {verdict} | "
                  f"{'' if kept is None else f'{kept}/{len(owner)}'} | {why}; {max(refused, 0)} refused by the "
                  f"contract |", flush=True)


def extra_vectors(folder: Path, cache: Path, tag: str, limit: int):
    """Vectors of up to ``limit`` photos of a folder (the committed model), cached: photos the honest set never had."""
    return cached_vectors(folder, cache, tag, "extra", limit)


def influence_cases(honest, pool, args) -> dict:
    """name -> (writer(root, when), trusted device or None) of issue 49's cases: a handful of shifted rows, a Sybil
    group of them, and honest growth that must publish."""
    from contract.vectors import features_matrix
    from models.synthetic import generate

    hx = features_matrix(honest.column("features")).astype(np.float64)
    px = features_matrix(pool.column("features")).astype(np.float64)
    one, sybils, phone = cognito(8000), [cognito(8100 + i) for i in range(60)], cognito(8500)

    def pool_rows(k, at=0):
        return (np.arange(k) + at) % pool.num_rows

    def honest_rows(k, clients, at=0):
        idx = pool_rows(k, at)
        return lambda root, when: write_rows(root, when, pool.take(idx), None, clients,
                                             ids=[pool.column("image_id")[int(i)].as_py() for i in idx], valid=True)

    cases = {
        "control: 3 honest photos, one new identity": honest_rows(3, [one] * 3),
        "3 real photos shifted 5 SD in the 300 lowest-variance columns, one identity": lambda root, when: write_rows(
            root, when, honest, low_variance_shift(px[pool_rows(3)], hx, columns=300), [one] * 3, valid=True),
        "60 identities of 1 shifted row each (Sybil)": lambda root, when: write_rows(
            root, when, honest, low_variance_shift(px[pool_rows(60)], hx, columns=300), sybils, valid=True),
        "40 honest photos, one anonymous phone": honest_rows(40, [phone] * 40, at=100),
    }
    synthetic = args.cache / "synthetic-40" / "Training"
    if not synthetic.is_dir():
        generate(synthetic.parent, per_class=7, n_classes=6, seed=49)
    sx = extra_vectors(synthetic, args.cache, "synthetic", 40)
    cases["40 honest synthetic photos, one anonymous phone"] = lambda root, when: write_rows(
        root, when, sx, None, [phone] * sx.num_rows, ids=sx.column("image_id").to_pylist(), valid=True)
    if GROCERY.is_dir():
        new = extra_vectors(GROCERY / "train" / "Banana", args.cache, "banana", 10)
        cases["10 photos of a new fruit (shop bananas), a trusted laptop"] = lambda root, when: write_rows(
            root, when, new, None, ["laptop-new"] * new.num_rows, ids=new.column("image_id").to_pylist(), valid=True,
            labels=["Banana"] * new.num_rows)
    return cases


def run_influence(spark, args, base, honest, pool, ref, tmp, rec) -> None:
    """Issue 49's cases, each a refresh of the honest state then ``publish`` against the honest projection in force;
    after the 3 shifted rows, 3 more days of honest photos (40 a day, new identities), each published."""
    print("\n| case (one refresh of the honest state) | rows | publish (turn from the projection in force) | set aside for "
          "their influence | listed as drivers |")
    print("| --- | --- | --- | --- | --- |")
    control = None
    for name, write in influence_cases(honest, pool, args).items():
        root = copy_base(base, tmp / f"i{len(rec.rows)}")
        out = root / "pca"
        fit(spark, root, out, "state", args.fit_k, full=True)
        write(root, T0 + 20 * DAY_MS)
        days = [(name, None)] + ([(f"  then honest day {d + 1}: 40 photos from 20 new identities", d) for d in range(3)]
                                 if "one identity" in name and "shifted" in name else [])
        for label, day in days:
            if day is not None:
                idx = (np.arange(40) + 200 + 40 * day) % pool.num_rows
                write_rows(root, T0 + (21 + day) * DAY_MS, pool.take(idx), None,
                           [cognito(9000 + 20 * day + i % 20) for i in range(40)],
                           ids=[pool.column("image_id")[int(i)].as_py() for i in idx], valid=True)
            run_id = f"r{len(rec.rows)}"
            got = fit(spark, root, out, run_id, args.fit_k, incremental=True, reproject=True)
            done = publish_run(spark, got["run_uri"], root, args.publish_k)
            t, inf = done.record["turn"], got["summary"].get("influence") or {}
            aside = [d["device"] for d in inf.get("set_aside", [])]
            listed = [d["device"] for d in t.get("drivers", [])]
            if label.startswith("control"):
                control = t["turn_deg"]
            verdict = ("HELD" if done.held else "published") + f" ({t['turn_deg']:.1f} deg" + (
                f", control {control:.1f}" if control is not None and not label.startswith("control") else "") + (
                "; explained by the trusted devices" if t.get("explained_by") else "") + ")"
            rec.add(measure="influence", case=label, held=done.held, turn_deg=t["turn_deg"], control_deg=control,
                    explained_by=t.get("explained_by"), set_aside=aside, drivers=listed[:60],
                    rows_added=got["summary"]["incremental"]["rows_added"],
                    groups=inf.get("groups"), influence_s=got["summary"]["timings_s"].get("influence_s"))
            print(f"| {label} | {got['summary']['rows_in']} | {verdict} | {len(aside)} identities "
                  f"({sum(d['rows'] for d in inf.get('set_aside', []))} rows) | {len(listed)} |", flush=True)


def run_rename(spark, args, honest, pool, test, tmp, rec) -> None:
    """Issue 49: one identity sent 6 right photos, then 8 plums labelled "Banana" (a fruit only the catalog knows), and 9
    of 13 honest plums became "Banana", on a stack whose trusted rows had no plum (``./run web``'s seed). Here, on
    such an honest set (its plums left out, as that seed does): how many identities, each with how many right labels,
    it takes; the honest Test plums answered "Banana" after each publish (the catalog knows Banana, no trusted row has
    it, and none has Plum either)."""
    import pyarrow as pa

    from cloud_pca.catalog import seed_bytes

    base = tmp / "rename-base"
    no_plum = honest.filter(pa.array([lab.split()[0] != "Plum" for lab in honest.column("label").to_pylist()]))
    lay_out_honest(base, no_plum)
    labels = pool.column("label").to_pylist()
    plums = [i for i, lab in enumerate(labels) if lab.split()[0] == "Plum"]
    right = [i for i, lab in enumerate(labels) if lab.split()[0] != "Plum"]
    truth = test.column("label").to_pylist()
    print("\n| label attack: plums labelled \"Banana\" (a fruit only the catalog knows; 6 plums of their own each) | "
          "identities x right labels each | honest Test plums answered \"Banana\" |")
    print("| --- | --- | --- |")
    for ids, n_right in ((1, 6), (1, 40), (4, 40), (5, 40), (10, 40)):
        root = copy_base(base, tmp / f"n{len(rec.rows)}")
        (root / "models").mkdir(parents=True, exist_ok=True)
        (root / "models" / "catalog.json").write_bytes(seed_bytes())
        fit(spark, root, root / "pca", "state", args.fit_k, full=True)
        for j in range(ids):
            who = cognito(8600 + j)
            theirs = [plums[(j * 6 + r) % len(plums)] for r in range(6)]   # photos of their own
            mine = [right[(j * n_right + r) % len(right)] for r in range(n_right)] + theirs
            write_rows(root, T0 + 20 * DAY_MS + j, pool.take(mine), None, [who] * len(mine),
                       ids=fresh_ids(len(mine), f"rename {ids} {n_right} {j}"), valid=True,
                       labels=[labels[i] for i in mine[:n_right]] + ["Banana"] * len(theirs))
        got = fit(spark, root, root / "pca", "r", args.fit_k, incremental=True, reproject=True)
        done = publish_run(spark, got["run_uri"], root, args.publish_k)
        said = answers(done, test) if not done.held else []
        plum_answers = [a for a, t in zip(said, truth) if t.split()[0] == "Plum"]
        renamed = sum("Banana" in a for a in plum_answers)
        v = done.record.get("labels") or {}
        counted = (v.get("labels", {}).get("Banana") or {}).get("anonymous_rows", 0)
        why = {k: n for k, n in (v.get("anonymous_not_counted") or {}).items() if n}
        rec.add(measure="rename", identities=ids, right_labels=n_right, held=done.held, plums=len(plum_answers),
                renamed=renamed, banana_rows_counted=counted, not_counted=why)
        print(f"| {ids} x ({n_right} right + 6 plums as Banana) | {ids} x {n_right} | {renamed} of {len(plum_answers)}"
              f" (\"Banana\" rows counted: {counted} of {6 * ids}) |", flush=True)


def run_drip(spark, args, base, honest, pool, ref, tmp, rec, refreshes: int = 8) -> None:
    """One identity, 20 shifted rows per refresh: each refresh's turn against the projection in force."""
    from contract.vectors import features_matrix

    hx = features_matrix(honest.column("features")).astype(np.float64)
    px = features_matrix(pool.column("features")).astype(np.float64)
    root = copy_base(base, tmp / "drip")
    fit(spark, root, root / "pca", "state", args.fit_k, full=True)
    publish_run(spark, f"file://{root}/pca/run=state", root, args.publish_k)
    one = cognito(7000)
    print("\n| slow drip: one identity, 20 shifted real photos per refresh | refresh | rows so far | angle to the honest "
          "fit (deg) | publish |")
    print("| --- | --- | --- | --- | --- |")
    for r in range(refreshes):
        rows = np.arange(20 * r, 20 * (r + 1)) % pool.num_rows
        write_rows(root, T0 + (21 + r) * DAY_MS, honest, low_variance_shift(px[rows], hx), [one] * 20, valid=True,
                   tag=f"drip {r}")
        got = fit(spark, root, root / "pca", f"drip{r}", args.fit_k, incremental=True, reproject=True)
        done = publish_run(spark, got["run_uri"], root, args.publish_k)
        angle = largest_angle(got["model"].components_[:args.k], ref["model"].components_[:args.k])
        t = done.record["turn"]
        rec.add(measure="drip", refresh=r + 1, rows=20 * (r + 1), angle_deg=round(angle, 3), turn_deg=t["turn_deg"],
                held=done.held, top_driver=(t["drivers"][0]["device"] if t.get("drivers") else None))
        print(f"| | {r + 1} | {20 * (r + 1)} | {angle:.2f} | {'held' if done.held else 'published'} "
              f"({t['turn_deg']:.1f} deg from the projection in force; first driver "
              f"{'the drip' if t.get('drivers') and t['drivers'][0]['device'] == one else 'another'}) |", flush=True)


def label_attacks(honest, pool, fruits: tuple[str, str], fracs=(0.167, 0.286)) -> dict:
    """name -> (rows to add: (table of pool rows, labels, clients)) for each label attack and its control."""
    labels = pool.column("label").to_pylist()
    a, b = fruits
    src = [i for i, lab in enumerate(labels) if lab in (a, b)]
    others = [i for i, lab in enumerate(labels) if lab not in (a, b)]
    out = {}
    n = honest.num_rows
    for frac in fracs:
        k = int(round(frac / (1 - frac) * n))
        pick = [src[i % len(src)] for i in range(k)]
        ids = [cognito(8000 + j % 120) for j in range(k)]
        tag = f"{frac:.1%} of the rows"
        out[f"control: {k} real photos of {a} and {b}, honestly labelled, 120 new identities ({tag})"] = (
            pick, [labels[i] for i in pick], ids)
        out[f"swap: {k} real photos of {a} labelled {b} and the reverse, 120 new identities ({tag})"] = (
            pick, [b if labels[i] == a else a for i in pick], ids)
        earn = [others[j % len(others)] for j in range(120 * 10)]   # each identity first labels 10 photos rightly
        earners = [cognito(9000 + j // 10) for j in range(len(earn))] + [cognito(9000 + j % 120) for j in range(k)]
        out[f"control for the next: 120 identities label 10 photos rightly each, then {k} more rightly ({tag})"] = (
            earn + pick, [labels[i] for i in earn + pick], earners)
        out[f"control for the next: the same, the {k} sent without a label ({tag})"] = (
            earn + pick, [labels[i] for i in earn] + [None] * k, earners)
        out[f"swap after earning weight: the same 120 identities, the {k} swapped ({tag})"] = (
            earn + pick, [labels[i] for i in earn] + [b if labels[i] == a else a for i in pick], earners)
    lookalike = ["\u0410pple Red", "Apple Red ", "Apple\u200bRed", "\u202eApple Red", "unknown", "", "Not sure: A or B"]
    pick = [src[i % len(src)] for i in range(len(lookalike) * 10)]
    out["control for the next: the same 70 photos, honestly labelled"] = (
        pick, [labels[i] for i in pick], [cognito(10000 + j) for j in range(len(pick))])
    out["look-alike labels (Cyrillic А, a trailing space, zero-width, right-to-left, 'unknown', '', 'Not sure: A or B'),"
        " 10 photos each"] = (pick, [lookalike[j // 10] for j in range(len(pick))],
                              [cognito(10000 + j) for j in range(len(pick))])
    many = [others[j % len(others)] for j in range(2000)]
    out["control for the next: the same 2,000 photos, honestly labelled"] = (
        many, [labels[i] for i in many], [cognito(20000 + j) for j in range(2000)])
    out["2,000 labels of 1,000 characters, 2,000 identities"] = (
        many, [hashlib.sha256(str(j).encode()).hexdigest() * 16 for j in range(2000)],
        [cognito(20000 + j) for j in range(2000)])
    return out


def run_labels(spark, args, base, honest, pool, test, tmp, rec, honest_answers) -> None:
    fruits = tuple(args.swap.split(",")) if args.swap else _two_similar(pool)
    attacks = label_attacks(honest, pool, fruits, fracs=(0.167,) if args.smoke else (0.167, 0.286))
    if args.smoke:     # the swap and its control
        attacks = dict(list(attacks.items())[:2])
    results = {"honest": honest_answers}
    print(f"\n| label attack ({fruits[0]} / {fruits[1]}) | rows added | honest Test answers changed vs its control (/ vs the same photos unlabelled) | "
          f"newly given a wrong fruit's name | right answers | labels in the index | index bytes | anonymous rows counted / sent |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    truth = test.column("label").to_pylist()
    draws = 1 if args.smoke else max(1, args.draws)
    # The index's own noise, no attack: the honest set with some of its objects (20 rows each) left out. An attack
    # whose rows count for nothing still changes which rows the index is fitted on; this is what that alone moves.
    objects = sorted((base / "vectors").rglob("*.parquet"))
    for n_out in () if args.smoke else (1, 5):
        seen_changes = []
        for draw in range(draws):
            root = copy_base(base, tmp / f"n{n_out}d{draw}")
            rng = np.random.default_rng(n_out if draw == 0 else 1000 * n_out + draw)
            for f in rng.choice(objects, n_out, replace=False):
                (root / Path(f).relative_to(base)).unlink()
            got = fit(spark, root, root / "pca", "noise", args.fit_k)
            done = publish_run(spark, got["run_uri"], root, args.publish_k)
            mine = answers(done, test)
            seen_changes.append(answers_changed(honest_answers, mine, truth))
            if draw == 0:
                right = float(np.mean([x == y for x, y in zip(mine, truth)]))
                labels_n, size = len(done.index.labels), len(done.index.to_bytes())
        changed, wrong = seen_changes[0]
        name = f"no attack: the honest set with {n_out * 20} of its rows left out (the index's own noise)"
        rec.add(measure="labels", attack=name, rows=-20 * n_out, changed=changed, wrong_name_new=wrong,
                right=round(right, 4), draws=_draws(seen_changes))
        print(f"| {name} | {-20 * n_out} | {changed:.1%}{_shown_draws(seen_changes, 0)} | {wrong:.1%}"
              f"{_shown_draws(seen_changes, 1)} | {right:.1%} | {labels_n} | {size:,} | |", flush=True)
    by_draw: dict = {}     # (name, draw) -> answers, for the cases measured over several draws
    for name, (pick, labels, clients) in attacks.items():
        if args.only and args.only not in name and "control" not in name and not args.smoke:
            continue
        drawn = name.startswith("swap after earning") or name.startswith("control for the next: the same, the")
        for draw in range(draws if drawn else 1):
            done = _label_case(spark, args, base, pool, tmp, rec, name, pick, labels, clients, draw)
            got_answers = None if done.held else answers(done, test)
            by_draw[(name, draw)] = got_answers
            if draw == 0:
                _show_label_case(rec, name, pick, done, got_answers, results, truth)
        if drawn and draws > 1 and name.startswith("swap after earning"):
            control = [n for n in results if n.startswith("control for the next: the same, the")][-1]
            per = [answers_changed(by_draw[(control, d)], by_draw[(name, d)], truth) for d in range(draws)
                   if by_draw[(control, d)] is not None and by_draw[(name, d)] is not None]
            rec.add(measure="labels draws", attack=name, vs="the same photos unlabelled", draws=_draws(per))
            print(f"| (the same over {len(per)} draws of the re-sent photos' ids, vs unlabelled: changed "
                  f"{_shown_draws(per, 0).strip(' ()')}; newly a wrong name {_shown_draws(per, 1).strip(' ()')}) "
                  f"| | | | | | | |", flush=True)


def _label_case(spark, args, base, pool, tmp, rec, name, pick, labels, clients, draw: int):
    """One label case laid out on a copy of the honest set, fitted and published. ``draw`` picks the ids a photo sent
    again gets (a re-encoded copy: a new id, the same in a case and its controls; which ids decides the index's
    sample and k-means' start, so its noise)."""
    root = copy_base(base, tmp / f"l{len(rec.rows)}d{draw}")
    table = pool.take(pick)
    seen: set = set()
    ids = []
    for j, i in enumerate(pick):   # a photo sent again is sent under a new id (a re-encoded copy): the same id in a
        tag = f"sent again {j}" if draw == 0 else f"sent again {j} draw {draw}"   # case and in its controls
        ids.append(table.column("image_id")[j].as_py() if i not in seen else fresh_ids(1, tag)[0])
        seen.add(i)
    write_rows(root, T0 + 20 * DAY_MS, table, None, clients, labels=labels, valid=True, ids=ids)
    got = fit(spark, root, root / "pca", "labels", args.fit_k)
    return publish_run(spark, got["run_uri"], root, args.publish_k)


def _show_label_case(rec, name, pick, done, got_answers, results, truth) -> None:
    if done.held:
        results[name] = None
        print(f"| {name} | {len(pick)} | held ({done.record['turn']['turn_deg']:.1f} deg) | | | | | |", flush=True)
        return
    results[name] = got_answers
    compared = [answers_changed(c, got_answers, truth) for c in _controls_of(name, results) if c is not None]
    changes, steered = [c for c, _ in compared], [w for _, w in compared]
    changed = changes[0] if changes else None
    right = float(np.mean([x == y for x, y in zip(got_answers, truth)]))
    v = done.record["labels"]
    size = len(done.index.to_bytes())
    rec.add(measure="labels", attack=name, rows=len(pick), changed=changed,
            changed_vs_unlabelled=changes[1] if len(changes) > 1 else None,
            wrong_name_new=steered[0] if steered else None, right=round(right, 4),
            labels=len(done.index.labels), index_bytes=size, anonymous_counted=v["anonymous_counted"],
            anonymous_rows=v["anonymous_rows"], held_labels=v["held_labels"],
            refused_labels=v["labels_refused_count"])
    shown = " / ".join(f"{c:.1%}" for c in changes)
    wrong = " / ".join(f"{c:.1%}" for c in steered)
    print(f"| {name} | {len(pick)} | {shown} | {wrong} | {right:.1%} | "
          f"{len(done.index.labels)} | {size:,} | {v['anonymous_counted']} / {v['anonymous_rows']} "
          f"({v['held_labels']} labels held, {v['labels_refused_count']} refused) |", flush=True)


def _draws(per: list) -> dict:
    """Several draws of one comparison: each, and their mean."""
    return {"changed": [round(c, 4) for c, _ in per], "wrong_name_new": [round(w, 4) for _, w in per],
            "changed_mean": round(float(np.mean([c for c, _ in per])), 4) if per else None,
            "wrong_name_new_mean": round(float(np.mean([w for _, w in per])), 4) if per else None}


def _shown_draws(per: list, at: int) -> str:
    if len(per) < 2:
        return ""
    xs = [p[at] for p in per]
    return f" (mean {np.mean(xs):.1%}, {min(xs):.1%}-{max(xs):.1%} over {len(xs)} draws)"


def _controls_of(name: str, results: dict) -> list:
    """The answers of the controls that go with an attack: the lines "control for the next" just before it (the same
    photos honestly labelled first; then, where there is one, the same photos sent without a label: what the attack's
    labels did beyond taking its rows' honest labels away)."""
    if name.startswith("swap:"):
        tag = name[name.rindex("("):]
        return [next((a for n, a in results.items() if n.startswith("control: ") and n.endswith(tag)), None)]
    if name.startswith("control"):
        return []
    before = [n for n in results if n != "honest"][:-1]
    mine = []
    while before and before[-1].startswith("control for the next"):
        mine.insert(0, results[before.pop()])
    return mine


def _two_similar(pool) -> tuple[str, str]:
    labels = sorted(set(pool.column("label").to_pylist()))
    for a, b in (("Apple Braeburn", "Apple Red Delicious"), ("Peach", "Nectarine")):
        if a in labels and b in labels:
            return a, b
    return labels[0], labels[1]


def run_crafted(spark, args, base, honest, tmp, rec) -> None:
    """The trust stage's seconds for N ordinary anonymous rows against N rows crafted to share one 32-bit half of
    their signatures: with the public seed (what an attacker can compute), and with the state's own key (as if it
    leaked)."""
    from contract.vectors import features_matrix
    from cloud_pca.trust import SIG_BITS, _seed, load_center
    from models import model_path

    n = args.crafted
    rng = np.random.default_rng(5)
    hx = features_matrix(honest.column("features")).astype(np.float64)
    card = json.loads(model_path().with_suffix(".json").read_text())
    center = load_center(card) if card.get("feature_center") else hx.mean(axis=0)

    def crafted(key: str | None) -> np.ndarray:
        """Rows whose 32 low signature bits are one pattern for the planes of ``key``: honest rows moved by the least
        change along those planes that gives them the pattern (the high 32 bits stay as they were)."""
        planes = np.random.default_rng(_seed(key)).standard_normal((hx.shape[1], SIG_BITS))[:, :32]
        want = np.where(np.random.default_rng(9).random(32) < 0.5, -1.0, 1.0)
        x = hx[rng.integers(len(hx), size=n)] + rng.normal(0, 0.02, (n, hx.shape[1]))
        z = x - center
        proj = z @ planes
        target = want * np.maximum(np.abs(proj), 0.5)
        delta = (target - proj) @ np.linalg.pinv(planes)
        return np.clip(center + z + delta, 0, 4.99)

    cases = {"ordinary": hx[rng.integers(len(hx), size=n)] + rng.normal(0, 0.05, (n, hx.shape[1])).clip(-0.5, 0.5),
             "crafted from the public seed": crafted(None)}
    print(f"\n| {n:,} anonymous rows, 200 identities | trust stage (s) | / ordinary | whole run (s) | near-copies set aside |")
    print("| --- | --- | --- | --- | --- |")
    ordinary = None
    for name, x in list(cases.items()) + [("crafted for the state's own key (as if it leaked)", None)]:
        root = copy_base(base, tmp / f"c{len(rec.rows)}")
        out = root / "pca"
        got = fit(spark, root, out, "state", args.fit_k, full=True)       # the honest state; its key
        if x is None:
            state = json.loads(next((out / "state").rglob("current.json")).read_text())
            x = crafted(state["sig_key"])
        write_rows(root, T0 + 20 * DAY_MS, honest, np.clip(x, 0, 4.99), [cognito(30000 + i % 200) for i in range(n)],
                   valid=True, tag=name)
        got, sec = timed(name, lambda: fit(spark, root, out, "crafted", args.fit_k, incremental=True))
        trust_s = got["summary"]["timings_s"]["trust_s"]
        ordinary = trust_s if ordinary is None else ordinary
        near = (got["summary"].get("contributions") or {}).get("near_copies", 0)
        rec.add(measure="crafted", case=name, rows=n, trust_s=round(trust_s, 3), ratio=round(trust_s / ordinary, 2),
                seconds=round(sec, 2), near_copies=near)
        print(f"| {name} | {trust_s:.3f} | {trust_s / ordinary:.2f} | {sec:.1f} | {near} |", flush=True)


def run_state(tmp: Path, rec) -> None:
    """A swapped moments.npz and a rolled-back current.json under a real state, and damaged local-stack files:
    each run's exit code and its error line."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    print("\n| state or stack damaged | exit code | what the run says |")
    print("| --- | --- | --- |")
    from common import make_files

    for case in ("an older moments.npz over the current one", "current.json rolled back"):
        root = tmp / f"s{len(rec.rows)}"
        make_files(root, 300, 3, seed=1)
        cmd = [sys.executable, "-c", "import sys; from cloud_pca.cli import main; sys.exit(main())", "--quiet", "pca", "--input", str(root / "vectors"), "--output",
               str(root / "pca"), "--k", "3", "--incremental"]
        subprocess.run(cmd + ["--run-id", "a"], env=env, check=True, capture_output=True)
        first = next((root / "pca" / "state").glob("model=*"))
        pointer = (first / "current.json").read_bytes()
        gen_a = json.loads(pointer)["generation"]
        make_files(root, 100, 1, seed=2, start=1000)
        subprocess.run(cmd + ["--run-id", "b"], env=env, check=True, capture_output=True)
        gen_b = json.loads((first / "current.json").read_text())["generation"]
        if case.startswith("an older"):
            shutil.copy(first / f"gen={gen_a}" / "moments.npz", first / f"gen={gen_b}" / "moments.npz")
        else:
            (first / "current.json").write_bytes(pointer)
        done = subprocess.run(cmd + ["--run-id", "c"], env=env, capture_output=True, text=True)
        line = next((x for x in done.stderr.splitlines() if x.startswith("Error:")), done.stderr.strip()[-200:])
        rec.add(measure="state", case=case, rc=done.returncode, says=line[:300])
        print(f"| {case} | {done.returncode} | {line[:160]}… |", flush=True)
    from demo.s3server import LocalS3

    for case in ("a damaged object record", "a damaged bucket.json"):
        folder = tmp / f"stack{len(rec.rows)}"
        with LocalS3(mode="process", state=folder / "data") as server:
            import boto3

            s3 = boto3.client("s3", endpoint_url=server.endpoint_url, region_name="us-east-1",
                              aws_access_key_id="test", aws_secret_access_key="test")
            s3.create_bucket(Bucket="fruits-local")
            s3.put_object(Bucket="fruits-local", Key="fruits/vectors/a.parquet", Body=b"a")
        bucket = folder / "data" / "s3" / "fruits-local"
        target = bucket / "bucket.json" if "bucket.json" in case else next(p for p in bucket.glob("*.json")
                                                                           if p.name != "bucket.json")
        target.write_text('{"key": ')
        done = subprocess.run([sys.executable, "-m", "demo.stack", "stack"], cwd=ROOT, capture_output=True, text=True,
                              env={**env, "FRUITS_LOCAL_STACK": str(folder)})
        line = next((x for x in done.stderr.splitlines() if x.startswith("Error:")), done.stderr.strip()[-200:])
        rec.add(measure="stack", case=case, rc=done.returncode, says=line[:300])
        print(f"| local stack: {case} | {done.returncode} | {line[:160]}… |", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=Path, default=SHARED if SHARED.is_dir() else OWN,
                    help="a Fruits-360 layout (Training/, Test/); default ../shared/data/fruits360, else data/fruits360")
    ap.add_argument("--k", type=int, default=10, help="components compared (the top-k subspace)")
    ap.add_argument("--publish-k", type=int, default=32, help="components published (what phones identify with)")
    ap.add_argument("--swap", help="the two fruits the label swap exchanges, 'A,B' (default two similar ones)")
    ap.add_argument("--crafted", type=int, default=20000, help="rows of the crafted-signature case")
    ap.add_argument("--sections", default="vectors,drip,influence,rename,labels,crafted,state")
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "benchmarks")
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get("FRUITS_CACHE", ROOT / ".cache")) / "bench-poisoning")
    ap.add_argument("--smoke", action="store_true", help="the project's own photos, the controls and one attack of each "
                                                         "kind, 500 crafted rows: that it runs and writes its results")
    ap.add_argument("--draws", type=int, default=5, help="draws of the index's noise rows and of the earned-weight "
                    "swap with its unlabelled control (which ids the re-sent photos get)")
    ap.add_argument("--only", help="run only the attacks whose name holds this text (and the controls)")
    args = ap.parse_args()
    if args.smoke:
        args.photos, args.crafted, args.only = OWN, 500, args.only or "1e30"
        args.sections = "vectors,labels,crafted,state"
    sections = set(args.sections.split(","))
    args.fit_k = max(args.k, args.publish_k)     # the fit keeps enough components to publish; the top k are compared
    from cloud_pca.spark import get_spark

    rec = Recorder("poisoning", args.out)
    tmp = Path(tempfile.mkdtemp(prefix="fruits-bench-poisoning-"))
    # One signature key for every fresh state of this run (a deployment's is random, each --full a new one): the
    # near-copy rule then decides alike wherever the rows are alike, so a case and its control differ only by what the
    # attack sent, not by which of the honest near-identical frames a fresh key happened to keep.
    import cloud_pca.trust as trust

    trust.new_key = lambda: hashlib.sha256(b"bench-poisoning").hexdigest()
    spark = get_spark("fruits-bench-poisoning", master="local[2]")
    try:
        (training, test), seconds = timed("real vectors", lambda: real_vectors(args.photos, args.cache))
        honest, pool = split_halves(training)
        base = tmp / "honest-root"
        owner = lay_out_honest(base, honest)
        ref, _ = timed("honest fit", lambda: fit(spark, base, base / "pca", "honest", args.fit_k, full=True))
        first = publish_run(spark, ref["run_uri"], base, args.publish_k)
        s = ref["summary"]
        kept = {r["image_id"] for r in spark.read.parquet(f"{ref['run_uri']}/projections").select("image_id").collect()}
        lost = len(set(owner) - kept)
        honest_answers = answers(first, test)
        right = float(np.mean([a == t for a, t in zip(honest_answers, test.column("label").to_pylist())]))
        print(f"honest set: {s['rows_in']} real photos ({args.photos}) from {s['contributions']['devices']} devices "
              f"({s['contributions']['anonymous_devices']} anonymous); fitted {s['projected']}, set aside {lost} "
              f"(goal 0); published with k={args.publish_k}: {right:.1%} of the {test.num_rows} Test photos named "
              f"right; labels counted: {first.record['labels']['anonymous_counted']} of "
              f"{first.record['labels']['anonymous_rows']} anonymous rows", flush=True)
        rec.add(measure="honest", rows=s["rows_in"], fitted=s["projected"], set_aside=lost, right=round(right, 4))
        owner = {i: c for i, c in owner.items() if i in kept}   # an attack must not lose any row the honest fit kept
        base_published = base      # (the honest projection in force under base/models: every copy starts from it)
        if "vectors" in sections:
            run_vectors(spark, args, base_published, honest, pool, owner, ref, tmp, rec)
        if "drip" in sections:
            run_drip(spark, args, base_published, honest, pool, ref, tmp, rec)
        if "influence" in sections:
            run_influence(spark, args, base_published, honest, pool, ref, tmp, rec)
        if "rename" in sections:
            run_rename(spark, args, honest, pool, test, tmp, rec)
        if "labels" in sections:
            run_labels(spark, args, base_published, honest, pool, test, tmp, rec, honest_answers)
        if "crafted" in sections:
            run_crafted(spark, args, base_published, honest, tmp, rec)
        if "state" in sections:
            run_state(tmp, rec)
    finally:
        spark.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"written: {rec.save()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
