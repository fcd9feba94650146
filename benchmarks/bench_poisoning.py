"""How far can anonymous phones move the shared model? Each attack family of the trust model's threat model (README,
"Threat model") added to an honest set, fitted by the job as the EMR step runs it (``cloud_pca.job.run``, the gram
solver, local[2]); the largest principal angle between the top-k subspace and the honest fit's, and the honest rows
kept, per attack.

    ./run bench poisoning [--honest 800] [--k 10] [--smoke]

Honest set: synthetic fruit photos (10 classes) vectorized by the Python edge (real model outputs), spread over
anonymous phones (Cognito-like identity folders, 70%) and keyed laptops (30%), uploaded over several days (each
object's modification time is the store's clock). The honest fit is published first, as in steady state. The
first row is a control: honest photos added, what new honest data moves anyway. Attacks are objects in anonymous devices' own folders, contract-valid where
the attack allows it. Goal: every attack with up to 10% of the rows moves the subspace by <= 10 degrees, no honest
row is lost, every run completes. Also reported: what the defences cost honest phones (rows set aside among the
honest set and the web client's shared test photos: goal 0).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import uuid
import zlib
from pathlib import Path

import numpy as np

from common import Recorder, timed

from cloud_pca.pca import largest_angle

DAY_MS = 86_400_000
T0 = 1_790_000_000_000          # the honest uploads' first day (ms since the epoch)


def cognito(i: int, region: str = "eu-west-3") -> str:
    return f"{region}:{uuid.UUID(int=(0x5EED << 96) + i, version=4)}"


def write_object(root: Path, rows: dict, client: str, mtime_ms: int, *, valid: bool = True) -> Path:
    """One object as a device uploads it: ``vectors/model=<sha>/day=<day>/client=<device>/part-<content>.parquet``; ``valid``:
    through the contract's writer (an honest device), else written raw (an attacker need not)."""
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

    t = table.take(idx)
    out = {c: t.column(c).to_pylist() for c in t.column_names}
    out["client_id"] = [client] * len(idx)
    out["vectorized_at"] = [datetime.now(timezone.utc)] * len(idx)
    if features is not None:
        out["features"] = [list(map(float, r)) for r in features]
    out.update(override)
    return out


def honest_set(tmp: Path, n: int):
    """The honest vectors (contract tables) of n synthetic photos, of n/10 more (the control: what honest newcomers
    move), and of the web client's shared test photos."""
    from contract import read_vectors
    from edge_client.vectorize import find_photos, vectorize
    from models import model_path
    from models.synthetic import generate
    from web.parity import parity_photos

    photos = generate(tmp / "photos", per_class=max(2, n // 10), n_classes=10, seed=9)
    vectorize(find_photos([photos]), tmp / "honest.parquet", model_path=model_path(), progress=False)
    more = generate(tmp / "more", per_class=max(1, n // 100), n_classes=10, seed=10)
    vectorize(find_photos([more]), tmp / "more.parquet", model_path=model_path(), progress=False)
    parity = parity_photos(tmp / "parity")
    vectorize(find_photos([parity]), tmp / "parity.parquet", model_path=model_path(), progress=False)
    return read_vectors(tmp / "honest.parquet"), read_vectors(tmp / "more.parquet"), read_vectors(tmp / "parity.parquet")


def lay_out_honest(root: Path, honest, parity, per_object: int = 20) -> dict:
    """Honest objects: 70% from 100 anonymous phones, 30% from 5 keyed laptops, over 10 days; the parity photos from
    one more phone. Returns {image_id: client}."""
    owner = {}
    n = honest.num_rows
    order = np.random.default_rng(1).permutation(n)
    for o, start in enumerate(range(0, n, per_object)):
        idx = order[start:start + per_object]
        client = cognito(o % 100) if o % 10 < 7 else f"laptop-{o % 5}"
        write_object(root, rows_of(honest, idx, client), client, T0 + (o % 10) * DAY_MS + o * 1000)
        owner.update({honest.column("image_id")[int(i)].as_py(): client for i in idx})
    phone = cognito(999)
    write_object(root, rows_of(parity, np.arange(parity.num_rows), phone), phone, T0 + 5 * DAY_MS)
    owner.update({i: phone for i in parity.column("image_id").to_pylist()})
    return owner


def attacks(honest, more, n_attack: int, seed: int = 2) -> dict:
    """Each attack family: a function writing its objects under ``root`` at time ``when`` (after the honest set).
    The first is the control: honest photos (``more``), whose angle is what new honest data moves anyway."""
    from contract.vectors import features_matrix

    rng = np.random.default_rng(seed)
    x = features_matrix(honest.column("features"))
    ids = honest.column("image_id").to_pylist()
    x0 = x[int(rng.integers(len(x)))]
    d = x.shape[1]

    def fresh_ids(k, tag):
        return [f"{tag:08x}{i:056x}" for i in range(k)]

    def write(root, when, feats, clients, *, ids_=None, valid=False, **override):
        k = len(feats)
        ids_ = ids_ or fresh_ids(k, zlib.crc32(f"{clients[0]} {k} {when}".encode()))
        for j, client in enumerate(sorted(set(clients))):
            pick = [i for i in range(k) if clients[i] == client]
            rows = rows_of(honest, np.zeros(len(pick), int), client, [feats[i] for i in pick],
                           image_id=[ids_[i] for i in pick], **{c: [v[i] for i in pick] for c, v in override.items()})
            write_object(root, rows, client, when + j, valid=valid)

    def near(k, noise):
        return np.clip(x0 + noise * rng.standard_normal((k, d)) * x0.std(), 0, 6)

    one, many = cognito(5000), [cognito(6000 + i) for i in range(100)]
    honest_more = features_matrix(more.column("features"))
    return {
        f"control: {more.num_rows} more honest photos, 100 identities": lambda root, when: write(
            root, when, honest_more, [many[i % 100] for i in range(more.num_rows)],
            ids_=more.column("image_id").to_pylist(), valid=True),
        "one row of 1e30": lambda root, when: write(root, when, [np.full(d, 1e30)], [one]),
        "one row of 1e6": lambda root, when: write(root, when, [np.full(d, 1e6)], [one]),
        f"{max(1, n_attack // 3)} rows of negative features": lambda root, when: write(
            root, when, -x[:max(1, n_attack // 3)], [one] * max(1, n_attack // 3)),
        f"{n_attack} near-copies of one vector, one identity": lambda root, when: write(
            root, when, near(n_attack, 0.01), [one] * n_attack),
        f"{n_attack} near-copies of one vector, 100 identities (Sybil)": lambda root, when: write(
            root, when, near(n_attack, 0.01), [many[i % 100] for i in range(n_attack)]),
        f"{n_attack} looser copies (noise 0.1 sd), 100 identities": lambda root, when: write(
            root, when, near(n_attack, 0.1), [many[i % 100] for i in range(n_attack)]),
        f"{n_attack} uniform random vectors in [0, 6], 100 identities": lambda root, when: write(
            root, when, rng.uniform(0, 6, (n_attack, d)), [many[i % 100] for i in range(n_attack)]),
        f"{n_attack} uniform random vectors in [0, 1] (a photo's distance from the center), 100 identities":
            lambda root, when: write(root, when, rng.uniform(0, 1, (n_attack, d)),
                                     [many[i % 100] for i in range(n_attack)]),
        f"{min(300, len(ids) // 3)} honest ids claimed, vectorized_at 1970": lambda root, when: write(
            root, when, near(min(300, len(ids) // 3), 0.01), [one] * min(300, len(ids) // 3),
            ids_=ids[:min(300, len(ids) // 3)], vectorized_at=[__import__("datetime").datetime(
                1970, 1, 1, tzinfo=__import__("datetime").timezone.utc)] * min(300, len(ids) // 3)),
        "rows naming other devices": lambda root, when: write(
            root, when, x[:20], [one] * 20, client_id=["laptop-0"] * 20),
        "a 0-byte object and a key of 32 dots": lambda root, when: _junk(root, when, one),
    }


def _junk(root: Path, when: int, client: str) -> None:
    from contract.layout import upload_day

    folder = root / f"vectors/model={'0' * 64}/day={upload_day()}/client={client}"
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in ((f"part-{'e' * 32}.parquet", b""), (f"part-{'.' * 32}.parquet", b"not parquet")):
        (folder / name).write_bytes(data)
        os.utime(folder / name, ns=(when * 1_000_000, when * 1_000_000))


def fit(spark, root: Path, out: Path, run_id: str, k: int, **mode) -> dict:
    from cloud_pca.job import JobConfig, run

    result = run(spark, JobConfig(inputs=[f"file://{root}/vectors"], output=f"file://{out}", k=k, run_id=run_id,
                                  plots=False, **mode))
    return {"summary": result.summary, "model": result.model, "run_uri": result.run_uri}


def honest_kept(spark, run_uri: str, owner: dict) -> int:
    """Honest rows fitted as their honest device sent them (an id fitted with another device's vector is lost)."""
    proj = spark.read.parquet(f"{run_uri}/projections").select("image_id", "client_id").collect()
    return len({r["image_id"] for r in proj if owner.get(r["image_id"]) == r["client_id"]})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--honest", type=int, default=800, help="honest photos (10 classes)")
    ap.add_argument("--k", type=int, default=10, help="components compared (the top-k subspace)")
    ap.add_argument("--out", type=Path, default=Path("out/benchmarks"))
    ap.add_argument("--smoke", action="store_true", help="100 honest photos, k=4: that it runs and writes its results")
    ap.add_argument("--only", help="run only the attacks whose name holds this text (and the control)")
    args = ap.parse_args()
    if args.smoke:
        args.honest, args.k = 100, 4
    from cloud_pca.publish import publish
    from cloud_pca.spark import get_spark

    rec = Recorder("poisoning", args.out)
    tmp = Path(tempfile.mkdtemp(prefix="fruits-bench-poisoning-"))
    spark = get_spark("fruits-bench-poisoning", master="local[2]")
    try:
        (honest, more, parity), seconds = timed("honest vectors", lambda: honest_set(tmp, args.honest))
        base = tmp / "honest-root"
        owner = lay_out_honest(base, honest, parity)
        honest_ids = set(owner)
        ref, _ = timed("honest fit", lambda: fit(spark, base, base / "pca", "honest", args.k, full=True))
        publish(spark, ref["run_uri"], f"file://{base}", k=args.k)
        s = ref["summary"]
        kept = set(r["image_id"] for r in spark.read.parquet(f"{ref['run_uri']}/projections").select("image_id")
                   .collect())
        synthetic = set(honest.column("image_id").to_pylist())
        web = set(parity.column("image_id").to_pylist())
        lost_synthetic, lost_web = len(synthetic - kept), len(web - kept)
        print(f"honest set: {s['rows_in']} rows from {s.get('contributions', {}).get('devices', '?')} devices; fitted {s['projected']}; "
              f"set aside: {lost_synthetic} of the {len(synthetic)} synthetic photos (false quarantines, goal 0), "
              f"{lost_web} of the {len(web)} web test photos (one portrait in {len(web)} encodings: near-copies of "
              f"each other, counted 3 times at most by design); top-{args.k} variance "
              f"{s['cumulative_explained_variance']:.3f}", flush=True)
        rec.add(measure="honest", rows=s["rows_in"], fitted=s["projected"], false_quarantines=lost_synthetic,
                web_test_photos_set_aside=lost_web, k=args.k)
        owner = {i: c for i, c in owner.items() if i in kept}   # an attack must not lose any row the honest fit kept
        honest_ids = set(owner)
        ref_basis = ref["model"].components_[:args.k]
        n_attack = max(1, s["rows_in"] // 10)
        print("\n| attack | rows | run | largest angle (deg) | honest rows kept | set aside by the trust model |")
        print("| --- | --- | --- | --- | --- | --- |")
        for name, attack in attacks(honest, more, n_attack).items():
            if args.only and args.only not in name and not name.startswith("control"):
                continue
            for mode in ("full", "incremental"):
                root = tmp / f"r{len(rec.rows)}"
                shutil.copytree(base, root, ignore=shutil.ignore_patterns("pca"))
                out = root / "pca"
                if mode == "incremental":   # the honest set counted first, then the attack in a refresh
                    fit(spark, root, out, "state", args.k, full=True)
                attack(root / "", T0 + 20 * DAY_MS)
                try:
                    got, sec = timed(f"{name} {mode}", lambda: fit(spark, root, out, "attack", args.k,
                                                                  **({"incremental": True} if mode == "incremental"
                                                                     else {})))
                except Exception as exc:   # the run must complete: a failure is a result, and shown
                    rec.add(measure="attack", attack=name, mode=mode, completed=False, error=str(exc)[:300])
                    print(f"| {name} | | {mode}: FAILED ({str(exc)[:80]}) | | | |", flush=True)
                    continue
                s = got["summary"]
                angle = largest_angle(got["model"].components_[:args.k], ref_basis)
                kept = honest_kept(spark, got["run_uri"], owner) if mode == "full" else None
                c = s.get("contributions") or {}
                aside = {key: c.get(key, 0) for key in ("screened", "near_copies", "conflicts", "quarantined",
                                                         "held_back", "replaced_counted")}
                refused = s["rejected"] - sum(v for v in aside.values() if isinstance(v, int))
                rec.add(measure="attack", attack=name, mode=mode, completed=True, angle_deg=round(angle, 3),
                        honest_kept=kept, honest=len(honest_ids), rows_in=s["rows_in"], rejected=s["rejected"],
                        seconds=round(sec, 2), **aside)
                why = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in aside.items() if v) or "-"
                print(f"| {name} | {s['rows_in']} | {mode} | {angle:.2f} | "
                      f"{'' if kept is None else f'{kept}/{len(honest_ids)}'} | {why}; {max(refused, 0)} refused by "
                      f"the contract |", flush=True)
    finally:
        spark.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"written: {rec.save()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
