"""Anonymous phones can neither steer the shared model, nor push honest rows out of it, nor stop the refresh (issue 32):
the contract refuses what no model produces and rows naming another device; the job's trust model (cloud_pca.trust)
ranks copies by tier and by when the store received them, never by what a device says, refuses conflicting copies,
quarantines anonymous near-copies and vectors no photo gives, holds back one device's excess, and sets a
device's bad objects aside without failing anyone's run. Each test failed before its fix."""
from __future__ import annotations

import io
import json
import random
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from contract import layout
from contract.errors import ContractError
from contract.vectors import conform_table, validate_table, vector_schema
from vectors_for_tests import SHA, by_id, contract_rows, population_center, put_card

ROOT = "team"
PHONE = "eu-west-3:00000000-0000-4000-8000-00000000000a"


def table_of(rows: dict):
    return pa.table(rows, schema=vector_schema())


# ---------------------------------------------------------------------------------- 1. the contract
@pytest.mark.parametrize("value, refused", [(1e30, True), (1e6, True), (-0.5, True), (6.001, True), (6.0, False),
                                            (0.0, False), (6.00005, False)])
def test_features_outside_what_the_model_can_produce_are_refused(value, refused):
    """MobileNetV2's pooled ReLU6 features lie in [0, 6]: before, only NaN and infinity were refused, and one row of
    1e30 made PC1 explain 100% of the variance."""
    rows = contract_rows(3)
    rows["features"][1] = [float(value)] * 1280
    _, reasons = conform_table(table_of(rows))
    got = reasons.to_pylist()
    assert got[0] is None and got[2] is None
    assert (got[1] is not None) == refused, got[1]
    if refused:
        assert "outside the model's output range [0.0, 6.0]" in got[1]
    with pytest.raises(ContractError) if refused else _nothing():
        validate_table(table_of(rows))          # the edge and the page refuse to upload it


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_a_row_naming_another_device_is_refused():
    rows = contract_rows(4)
    rows["client_id"] = [PHONE, PHONE, "laptop-1", "eu-west-3:00000000-0000-4000-8000-00000000000b"]
    _, reasons = conform_table(table_of(rows), owner=PHONE)
    got = reasons.to_pylist()
    assert got[:2] == [None, None]
    assert all(r and f"is not this object's device (it lies in client={PHONE}/)" in r for r in got[2:])


def test_the_job_reads_every_key_a_device_may_write():
    """Keys IAM lets a device write (its ?-globs match any character but '/', which a Deny keeps out) are keys the job
    reads: before, `part-` + 32 dots was allowed by IAM, refused by the job, and failed everyone's run."""
    from bootstrap.policies import Request, allowed, policy_documents

    docs = policy_documents("fruits-data", ROOT)
    rng = random.Random(4)
    chars = "abcdef0123456789.-_~!$%&'()*+,;=:@ABCXYZ"
    for _ in range(40):
        content = "".join(rng.choice(chars) for _ in range(32))
        key = f"{ROOT}/vectors/model={'a' * 64}/day={layout.upload_day()}/client={PHONE}/part-{content}.parquet"
        ok = allowed(docs["device-identity"], docs["bucket-policy"],
                     Request.put("fruits-data", key, **{"cognito-identity.amazonaws.com:sub": PHONE}))
        problem = layout.device_key_problem(f"s3a://fruits-data/{key}", f"s3a://fruits-data/{ROOT}/vectors/")
        assert ok and problem is None, (key, ok, problem)
    dotted = f"{ROOT}/vectors/model={'a' * 64}/day={layout.upload_day()}/client={PHONE}/part-{'.' * 32}.parquet"
    assert layout.device_key_problem(f"s3a://fruits-data/{dotted}", f"s3a://fruits-data/{ROOT}/vectors/") is None


def test_the_cards_state_the_output_range_their_models_give(tmp_path):
    from contract.card import load_model_card
    from models import model_path
    from models.export import load_inputs, output_range, tflite_features
    from models.synthetic import generate

    x = load_inputs(generate(tmp_path / "p", per_class=2, seed=202), 160)
    for precision in ("fp32", "fp16", "int8"):
        path = model_path(f"mobilenetv2_160_{precision}.tflite")
        data = path.read_bytes()
        assert list(output_range(data, tflite_features(data, x))) == load_model_card(path).output_range, precision
    # the int8 range is its dequantization's, within ReLU6's (the fine-tuned model's reaches the bound: 6.0)
    low, high = load_model_card(model_path("mobilenetv2_160_int8.tflite")).output_range
    assert 0.0 <= low < high <= 6.0


# ------------------------------------------------------------------------------ 2. the trust model
def thin(rows: list[dict]):
    return pa.table({"rid": pa.array([r["rid"] for r in rows], pa.int64()),
                     "image_id": pa.array([r["id"] for r in rows]), "file": pa.array([r["file"] for r in rows], pa.int32()),
                     "row": pa.array([r.get("row", 0) for r in rows], pa.int32()),
                     "sig": pa.array([r["sig"] for r in rows], pa.int64()),
                     "screen": pa.array([r.get("screen", 0.0) for r in rows], pa.float64()),
                     "owner": pa.array([r.get("owner") for r in rows], pa.string())})


def files(*specs):
    from cloud_pca.inputs import InputFile

    return [InputFile(f"s3a://b/{ROOT}/vectors/f{i}.parquet", 1, mtime=mtime, owner=owner,
                      anonymous=layout.is_anonymous(owner)) for i, (owner, mtime) in enumerate(specs)]


def test_copies_are_ranked_by_tier_then_by_the_stores_clock_never_by_what_a_device_says():
    """Two copies that agree: the trusted device's is fitted even if uploaded later; between anonymous ones, the one
    the store received first. vectorized_at plays no part (before: 1970 won)."""
    from cloud_pca.trust import decide, signatures

    x = by_id([1, 2])
    s = signatures(x, population_center())
    fs = files((PHONE, 1000), ("laptop-1", 5000), (PHONE, 200))
    d = decide(thin([{"rid": 0, "id": "a", "file": 0, "sig": s[0]}, {"rid": 1, "id": "a", "file": 1, "sig": s[0]},
                     {"rid": 2, "id": "b", "file": 0, "sig": s[1]}, {"rid": 3, "id": "b", "file": 2, "sig": s[1]}]), fs)
    assert d.duplicates == {0, 2} and not d.refused and not d.conflicts


def test_a_copy_that_disagrees_is_a_conflict_refused_and_listed():
    from cloud_pca.trust import decide, signatures

    x = by_id([1, 2])
    s = signatures(x, population_center())
    fs = files(("laptop-1", 5000), (PHONE, 100))
    d = decide(thin([{"rid": 0, "id": "a", "file": 0, "sig": s[0]}, {"rid": 1, "id": "a", "file": 1, "sig": ~s[0]}]), fs)
    assert list(d.refused) == [1] and "conflict" in d.refused[1] and "trusted device" in d.refused[1]
    assert d.conflicts[0]["kept"].endswith("f0.parquet") and d.conflicts[0]["refused"].endswith("f1.parquet")


def test_the_screen_is_the_models_own_and_lets_every_photo_through(python_vectors, model_path):
    """The plausibility screen comes from the model card (never the last fit: a fruit the fit has not seen must get
    through to be learned). The web client's shared test photos (noise, alpha, 16-bit, a portrait, EXIF turns) lie
    within it, vectors no photo gives do not, and a card without a radius screens nothing."""
    from cloud_pca.trust import load_screen

    card = json.loads(model_path.with_suffix(".json").read_text())
    screen = load_screen(card)
    x = np.array([r["features"] for r in python_vectors.values()], dtype=np.float64)
    assert screen.residuals(x).max() < 0.6 * screen.limit, "honest photos lie well within (at most 1x the radius)"
    rng = np.random.default_rng(0)
    junk = np.vstack([rng.uniform(0, 6, (20, 1280)), rng.choice([0.0, 6.0], (20, 1280)), np.full((1, 1280), 6.0)])
    assert screen.residuals(junk).min() > 1.5 * screen.limit
    assert load_screen({**card, "feature_radius": 0}) is None and load_screen(None) is None


def test_anonymous_near_copies_count_three_times_whatever_identities_sent_them():
    from cloud_pca.trust import NEAR_COPY_KEEP, decide, signatures

    base, center = by_id([7])[0], population_center()
    copies = np.clip(base + 1e-4 * np.random.default_rng(0).standard_normal((20, 1280)), 0, 6)
    s = signatures(copies, center)
    owners = [f"eu-west-3:00000000-0000-4000-8000-{i:012x}" for i in range(20)]   # 20 free identities
    fs = files(*[(o, 1000 + i) for i, o in enumerate(owners)])
    d = decide(thin([{"rid": i, "id": f"{i:064x}", "file": i, "sig": s[i]} for i in range(20)]), fs)
    assert d.near_copies == 20 - NEAR_COPY_KEEP and set(d.refused) == set(range(NEAR_COPY_KEEP, 20))
    honest = signatures(by_id(range(100, 160)), center)
    assert decide(thin([{"rid": i, "id": f"{i:064x}", "file": 0, "sig": v} for i, v in enumerate(
        signatures(by_id(range(100, 160))))]), files((PHONE, 1))).near_copies > 0, "around the origin they look alike"
    d = decide(thin([{"rid": i, "id": f"{i:064x}", "file": 0, "sig": honest[i]} for i in range(60)]), files((PHONE, 1)))
    assert not d.refused, "different photos are not near-copies"


def test_the_near_copy_rule_costs_a_bounded_number_of_comparisons_per_row_whatever_a_bucket_holds(monkeypatch):
    """20,000 signatures built to share one 32-bit half (what the public planes let an attacker do, and what a leaked
    key would): every row is compared with at most BUCKET_KEPT kept ones (before: with every one kept before it,
    quadratic: 119 s for 4,000 rows); near-copies among them are still found; and with the state's own key, rows
    crafted from the public seed scatter over the buckets like any others."""
    from cloud_pca import trust

    n = 20_000
    rng = np.random.default_rng(1)
    half = int(rng.integers(0, 2**31))
    high = rng.integers(0, 2**31, n).astype(np.int64) << 32
    crafted = high | half                                   # one low half for all, the high halves all different
    crafted[n - 10:] = crafted[0]                           # and 10 exact copies of the first
    compared = []
    real = trust.hamming

    def counting(a, b):
        out = real(a, b)
        compared.append(np.size(out))
        return out

    monkeypatch.setattr(trust, "hamming", counting)
    owners = [f"eu-west-3:00000000-0000-4000-8000-{i % 200:012x}" for i in range(n)]
    fs = files(*[(o, 1000 + i) for i, o in enumerate(owners[:200])])
    d = trust.decide(thin([{"rid": i, "id": f"{i:064x}", "file": i % 200, "row": i, "sig": int(crafted[i])}
                           for i in range(n)]), fs)
    assert sum(compared) <= 2 * n * trust.BUCKET_KEPT, sum(compared)
    # the first and its first 2 copies count (3), the other 8 copies are found: through the other half's bucket
    assert set(range(n - 8, n)) <= set(d.refused) and not {0, n - 10, n - 9} & set(d.refused), sorted(d.refused)[:20]
    # keyed planes: the same vectors give other signatures under another key
    x = by_id(range(40))
    assert (trust.signatures(x, population_center()) != trust.signatures(x, population_center(), "a key")).all()


def test_one_anonymous_device_is_held_back_beyond_its_daily_rows():
    from cloud_pca.inputs import InputFile
    from cloud_pca.trust import DAILY_ROWS, hold_back

    day = 1_790_000_000_000
    fs = [InputFile(f"f{i}", 1, mtime=day + i, owner=PHONE, anonymous=True, rows=DAILY_ROWS // 2) for i in range(4)]
    fs.append(InputFile("laptop", 1, mtime=day, owner="laptop-1", anonymous=False, rows=10 * DAILY_ROWS))
    fs.append(InputFile("next-day", 1, mtime=day + 86_400_000, owner=PHONE, anonymous=True, rows=DAILY_ROWS // 2))
    kept, held = hold_back(fs)
    assert [f.path for f in kept] == ["f0", "f1", "laptop", "next-day"]
    assert [h["file"] for h in held] == ["f2", "f3"] and "at most 5000 a day" in held[0]["reason"]


# ------------------------------------------------------------------ 3. hostile devices, the job's real path
def put(s3, bucket, rows: dict, client: str, *, names: str | None = None, key: str | None = None,
        raw: bytes | None = None):
    """Rows uploaded by ``client`` into its own folder, naming ``names`` (default: itself) as their client_id."""
    rows = dict(rows)
    rows["client_id"] = [names or client] * len(rows["image_id"])
    if key is None:
        key = layout.vectors_object_key(ROOT, rows["model_sha256"][0], client, rows["image_id"])
    if raw is None:
        buf = io.BytesIO()
        pq.write_table(table_of(rows), buf)
        raw = buf.getvalue()
    s3.put_object(Bucket=bucket, Key=key, Body=raw)
    return key


@pytest.mark.slow
def test_hostile_objects_neither_steer_nor_stop_the_run(spark, s3, s3_server, bucket, capsys):
    """300 honest rows from laptops and phones; then, from anonymous devices: a 0-byte object, a key of 32 dots, a
    row of 1e30, rows naming another device, 30 near-copies spread over 30 identities, 10 vectors of 0s and 6s (no
    photo gives them: screened by the card's radius), and 100 honest photos' ids
    claimed (with other photos' vectors) and vectorized_at 1970. The EMR step's command line completes, every honest row is fitted, the model
    is the honest one's, and the report and `fruits-cloud contributions` list what was set aside."""
    from bootstrap.cli import main as cloud_main
    from cloud_pca.job import JobConfig, run

    put_card(s3, bucket, ROOT)
    honest = contract_rows(300)
    for i in range(6):
        part = {k: v[i * 50:(i + 1) * 50] for k, v in honest.items()}
        put(s3, bucket, part, "laptop-1" if i < 2 else f"eu-west-3:00000000-0000-4000-8000-{i:012x}")
    base = f"s3a://{bucket}/{ROOT}"
    clean = run(spark, JobConfig(inputs=[f"{base}/vectors/"], output=f"{base}/pca", k=4, run_id="clean",
                                 plots=False)).model
    bad = "eu-west-3:00000000-0000-4000-8000-0000000000ff"
    folder = f"{ROOT}/vectors/model={SHA}/day={layout.upload_day()}/client={bad}"
    s3.put_object(Bucket=bucket, Key=f"{folder}/part-{'0' * 32}.parquet", Body=b"")
    s3.put_object(Bucket=bucket, Key=f"{folder}/part-{'.' * 32}.parquet", Body=b"not parquet")
    wild = contract_rows(1, start=9000)
    wild["features"] = [[1e30] * 1280]
    put(s3, bucket, wild, bad)
    put(s3, bucket, contract_rows(5, start=9100), bad, names="laptop-1")
    x0 = np.asarray(honest["features"][0])
    for i in range(30):
        near = contract_rows(1, start=9200 + i, x=np.clip(x0 + 1e-3 * np.random.default_rng(i).standard_normal(1280),
                                                          0, 6)[None])
        put(s3, bucket, near, f"eu-west-3:00000000-0000-4000-8001-{i:012x}")
    junk = np.random.default_rng(3).choice([0.0, 6.0], (10, 1280))   # in range, but no photo gives it
    for i in range(10):
        put(s3, bucket, contract_rows(1, start=9400 + i, x=junk[i:i + 1]), f"eu-west-3:00000000-0000-4000-8002-{i:012x}")
    claim = contract_rows(100, start=0, x=by_id(range(5000, 5100)))   # other photos' vectors under honest ids
    claim["vectorized_at"] = [datetime(1970, 1, 1, tzinfo=timezone.utc)] * 100
    put(s3, bucket, claim, bad)
    assert cloud_main(["--quiet", "--endpoint-url", s3_server.endpoint_url, "pca", "--input", f"{base}/vectors/",
                       "--output", f"{base}/pca", "--k", "4", "--run-id", "attacked", "--no-plots"]) == 0
    s = json.loads(s3.get_object(Bucket=bucket, Key=f"{ROOT}/pca/run=attacked/summary.json")["Body"].read())
    c = s["contributions"]
    assert s["reconciles"] and c["quarantined"] == 2 and c["near_copies"] == 30 - 3 and c["conflicts"] == 100
    assert c["screened"] == 10 and c["screened_against"] == "model card test-model", c
    proj = spark.read.parquet(f"{base}/pca/run=attacked/projections")
    fitted = {r["image_id"] for r in proj.select("image_id").collect()}
    assert set(honest["image_id"]) <= fitted, "every honest row is fitted"
    assert fitted - set(honest["image_id"]) == {f"{9200 + i:064x}" for i in range(3)}, "3 near-copies, nothing else"
    from cloud_pca.pca import FruitsPCAModel

    model = FruitsPCAModel.load(spark, f"{base}/pca/run=attacked/model")
    cos = np.abs(np.sum(model.components_ * clean.components_, axis=1))
    assert cos.min() > np.cos(np.radians(10)), cos          # the subspace moved by less than 10 degrees
    capsys.readouterr()
    assert cloud_main(["--quiet", "--endpoint-url", s3_server.endpoint_url, "contributions", "--run",
                       f"{base}/pca/run=attacked"]) == 0
    out = capsys.readouterr().out
    assert "Objects quarantined" in out and "Conflicts" in out and bad in out


@pytest.mark.slow
def test_a_counted_anonymous_copy_loses_to_a_trusted_one_in_a_refresh(spark, s3, bucket):
    """The incremental state does not let the first object counted decide: an anonymous device's conflicting copies
    of 40 photos are counted first; a laptop's true copies arrive in the next refresh and replace them in the
    statistics, so the refreshed model equals a full refit of what is there now (means rtol 1e-9)."""
    from cloud_pca.job import JobConfig, run
    from cloud_pca.pca import FruitsPCAModel

    put_card(s3, bucket, ROOT)
    honest = contract_rows(200)
    put(s3, bucket, {k: v[:160] for k, v in honest.items()}, "laptop-1")
    hostile = contract_rows(40, start=160, x=by_id(range(7000, 7040)))    # other photos' vectors, their ids
    put(s3, bucket, hostile, PHONE)
    base = f"s3a://{bucket}/{ROOT}"
    cfg = dict(inputs=[f"{base}/vectors/"], output=f"{base}/pca", k=4, plots=False)
    run(spark, JobConfig(**cfg, run_id="one", incremental=True))
    put(s3, bucket, {k: v[160:] for k, v in honest.items()}, "laptop-2")
    refreshed = run(spark, JobConfig(**cfg, run_id="two", incremental=True))
    s = refreshed.summary
    assert s["contributions"]["replaced_counted"] == 40 and s["incremental"]["rows_total"] == 200
    full = run(spark, JobConfig(**cfg, run_id="full")).model
    np.testing.assert_allclose(refreshed.model.mean_, full.mean_, rtol=1e-9)
    np.testing.assert_allclose(refreshed.model.explained_variance_ratio_, full.explained_variance_ratio_, atol=1e-9)
    assert FruitsPCAModel.load(spark, f"{base}/pca/run=two/model").model_id_ == refreshed.model.model_id_


@pytest.mark.slow
def test_evaluate_and_featurize_set_a_devices_bad_objects_aside(spark, s3, bucket, photos, model_path):
    """A 0-byte object in a device's vectors folder and junk under raw/ stop nobody's evaluate or featurize (before:
    evaluate always refused bad files; only --skip-bad-files, which the EMR chain never passed, went on)."""
    from cloud_pca.evaluate import evaluate

    honest = contract_rows(120)
    honest["label"] = [f"c{i % 3}" for i in range(120)]
    put(s3, bucket, honest, "laptop-1")
    s3.put_object(Bucket=bucket, Key=f"{ROOT}/vectors/model={SHA}/day={layout.upload_day()}/client={PHONE}/part-{'1' * 32}.parquet", Body=b"")
    ev = evaluate(spark, [f"s3a://{bucket}/{ROOT}/vectors/"], ks=(2,), test_fraction=0.25)
    assert ev.n_train + ev.n_test == 120
