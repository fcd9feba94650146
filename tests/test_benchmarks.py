"""Benchmarks cannot rot: every ``./run bench NAME`` runs at its ``--smoke`` size and writes its CSV and JSON.

Only that they complete and write their results is asserted (no timing: timings here are noise); each runs as
``./run bench`` runs it, a script in its own process."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from web.device import have_browser

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def bench(name: str, out: Path, *extra: str, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / f"bench_{name}.py"), "--smoke", "--out", str(out),
                           *extra], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "FRUITS_CACHE": str(out / "cache")})
    assert proc.returncode == 0, f"bench {name} --smoke failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def rows(out: Path, name: str) -> list[dict]:
    with open(out / f"{name}.csv", newline="") as f:
        from_csv = list(csv.DictReader(f))
    from_json = json.loads((out / f"{name}.json").read_text())
    assert from_csv and len(from_csv) == len(from_json), name
    return from_json


def test_edge_smoke(tmp_path):
    bench("edge", tmp_path)
    got = rows(tmp_path, "edge")
    assert {r["precision"] for r in got if r["measure"] == "edge"} == {"fp32", "fp16", "int8"}
    assert {r["precision"] for r in got if r["measure"] == "s3_upload"} == {"fp32", "int8"}


def test_featurize_smoke(tmp_path):
    bench("featurize", tmp_path)
    got = rows(tmp_path, "featurize")
    parity = next(r for r in got if r["measure"] == "parity")
    assert parity["same_image_ids"] is True


def test_pca_incremental_and_compare_smoke(tmp_path):
    """pca and incremental at their smoke sizes, then compare on top of their results (as it would run them)."""
    bench("pca", tmp_path)
    got = rows(tmp_path, "pca")
    assert [r["measure"] for r in got if r["measure"] != "extrapolated_100M"] == ["reference", "job"]
    assert (tmp_path / "pca.png").stat().st_size > 0
    bench("incremental", tmp_path)
    inc = rows(tmp_path, "incremental")
    assert {r["measure"] for r in inc} == {"session_start", "daily_refresh", "id_scan", "daily_refresh_cost"}
    assert all(float(r["cold_incremental_s"]) > 0 for r in inc if r["measure"] == "daily_refresh")   # a fresh process
    bench("compare", tmp_path, "--reuse-pca", "--reuse-incremental")
    assert {r["measure"] for r in rows(tmp_path, "compare")} >= {"pca_cost", "daily_refresh"}
    assert (tmp_path / "compare.html").exists() and (tmp_path / "compare.md").exists()


@pytest.mark.skipif(not have_browser() and not os.environ.get("FRUITS_REQUIRE_BROWSER"),
                    reason="no Chromium (./run setup installs it)")
def test_web_smoke(tmp_path):
    from web.device import ENGINES, missing

    engines = [e for e in ENGINES if not missing(e)] if not os.environ.get("FRUITS_REQUIRE_BROWSER") else list(ENGINES)
    bench("web", tmp_path, *[a for e in engines for a in ("--engine", e)])
    got = rows(tmp_path, "web")
    assert {r["measure"] for r in got} >= {"rate", "one_photo"}
    assert {r["engine"] for r in got if r["measure"] == "rate"} == set(engines)


@pytest.mark.skipif(not have_browser() and not os.environ.get("FRUITS_REQUIRE_BROWSER"),
                    reason="no Chromium (./run setup installs it)")
def test_web_first_visit_smoke(tmp_path):
    """The first visit over the app's paced link (a fast one here: only that it runs and says what it measured)."""
    bench("web", tmp_path, "--first-visit", "--mbit", "400", "--rtt-ms", "1")
    got = rows(tmp_path, "web-first-visit")
    assert [r["engine"] for r in got] == ["chromium"]
    assert 1e6 < got[0]["first_visit_bytes"] < 6e6 and got[0]["first_answer_s"] > 0, got


def test_refresh_smoke(tmp_path):
    """A year of refreshes at its smoke size (12 days of 200 vectors) on the local stack's S3."""
    bench("refresh", tmp_path)
    got = rows(tmp_path, "refresh")
    days = [r for r in got if r["measure"] == "refresh"]
    assert [r["day"] for r in days] == list(range(1, 13)) and days[-1]["rows_total"] == 12 * 200
    assert days[0]["state_objects_read"] == 0 and all(r["state_objects_read"] > 0 for r in days[1:])
    assert [r for r in got if r["measure"] == "summary"][0]["days"] == 12


def test_identify_smoke(tmp_path):
    """The identification bench on the project's real photos (the 8 fruits the model's fine-tuning never saw withheld),
    with the page in Chromium when it is there: each test set (lab frames of the film the training leaves out, shop val
    photos) reported apart with its baselines, then the training folders' photos of the withheld fruits as more
    never-sent photos (each folder apart, never fitted), the page gives Python's answers for all of them, what leaving
    20 training rows out changes, and the lab -> shop row."""
    from featurizer.preprocess import film_split

    engine = "chromium" if have_browser() else "none"
    bench("identify", tmp_path, "--engine", engine)
    got = rows(tmp_path, "identify")
    page = ["page"] if engine != "none" else []
    assert [r["measure"] for r in got] == ["identify"] * 4 + page + ["stability", "transfer"]
    lab, shop, lab_never, shop_never = got[:4]
    withheld = ["Aubergine", "Granadilla", "Kiwi", "Pineapple", "Pomegranate", "Raspberry", "Red-Beet", "Walnut"]
    assert lab["withheld"].split(";") == withheld
    for r, folder in ((lab_never, "fruits360/Training"), (shop_never, "grocery/train")):
        keep = film_split(ROOT / "data" / folder, "r_", False) or (lambda name: True)   # the lab training drops film r_
        photos = sum(keep(f.name) for c in withheld if (ROOT / "data" / folder / c).is_dir()
                     for f in (ROOT / "data" / folder / c).iterdir())
        assert r["set"] == f"{folder} (never-sent classes)" and r["test_photos"] == photos > 0
        assert r["species_known_photos"] == 0 and r["species_never_sent_photos"] == photos
        assert 0 <= r["species_never_sent_refused"] <= 1 and "1-NN species" not in r
    assert (lab["set"], shop["set"]) == ("fruits360/Test", "grocery/val") and lab["k"] == shop["k"] == 32
    assert (lab["test_photos"], shop["test_photos"]) == (147, 68) and 0 < lab["download_bytes"] < 1_000_000
    for r in (lab, shop):
        assert r["label_known_photos"] + r["label_never_sent_photos"] == r["test_photos"]
        assert {"1-NN species", "ridge species"} <= set(r) and 0 <= r["species_named_right"] <= 1
    steady, transfer = got[-2:]
    assert steady["leave_out"] == 20 and len(steady["changed"]) == 1 and 0 <= steady["changed"][0] <= 1
    assert transfer["set"] == "lab -> shop" and transfer["species_photos"] > 0
    if engine != "none":
        assert got[4]["page_answers_differing"] == 0 and got[4]["page_ms_per_photo"] > 0
        assert got[4]["page_photos"] == sum(r["test_photos"] for r in got[:4])


def test_the_identify_table_gives_each_share_its_interval_from_the_photos_behind_it(monkeypatch):
    """A share measured on few photos says how little it pins down: the table's 95% interval (Wilson) for named right,
    precision, among the candidates and never-sent refused, from the counts behind each share (textbook values: 0 of
    10 is 0-27.8%)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from bench_identify import counted, interval

    from edge_client.project import share_interval, wilson

    assert wilson(0, 10) == (0.0, pytest.approx(0.2775, abs=1e-4)) and wilson(0, 0) is None
    lo, hi = wilson(8, 24)
    assert lo == pytest.approx(0.1797, abs=1e-4) and hi == pytest.approx(0.5329, abs=1e-4)
    row = {"species_known_photos": 144, "species_never_sent_photos": 24, "species_named_right": round(119 / 144, 4),
           "species_wrong": round(9 / 144, 4), "species_precision": round(119 / 128, 4),
           "species_never_sent_refused": round(8 / 24, 4), "species_among_candidates": 0.986}
    assert counted(row, "species_named_right") == (119, 144) and counted(row, "species_precision") == (119, 128)
    assert counted(row, "species_never_sent_refused") == (8, 24) and counted(row, "species_among_candidates") == (142, 144)
    assert counted(row, "species_wrong") is None
    assert interval(row, "species_never_sent_refused") == " (18.0-53.3)" and interval(row, "1-NN species") == ""
    assert share_interval(row["species_never_sent_refused"], 24) == " (95% interval 18.0%-53.3%)"   # the demo's
    assert share_interval(None, 0) == share_interval(0.5, 0) == ""


def test_poisoning_smoke(tmp_path):
    """The poisoning bench on the project's real photos: an honest fit, a refused row, a label swap from new
    identities against its control (which changes no answer: their labels weigh nothing), crafted near-copy rows,
    a swapped state and damaged local-stack files (one error each)."""
    bench("poisoning", tmp_path, timeout=900)
    got = rows(tmp_path, "poisoning")
    honest = [r for r in got if r["measure"] == "honest"][0]
    assert honest["rows"] == 366 and honest["set_aside"] <= 3        # honest near-identical frames: 3 counted each
    junk = [r for r in got if r["measure"] == "attack" and r["attack"] == "one row of 1e30"]
    assert {r["mode"] for r in junk} == {"full", "incremental"} and all(r["rejected"] == 1 for r in junk), junk
    assert all(not r["held"] and r["turn_deg"] < 5 for r in junk), junk
    swap = [r for r in got if r["measure"] == "labels" and r["attack"].startswith("swap:")]
    assert len(swap) == 1 and swap[0]["changed"] == 0.0, swap
    crafted = [r for r in got if r["measure"] == "crafted"]
    assert len(crafted) == 3 and all(r["trust_s"] > 0 and r["near_copies"] > 0 for r in crafted), crafted
    broken = [r for r in got if r["measure"] in ("state", "stack")]
    assert len(broken) == 4 and all(r["rc"] == 1 and r["says"].startswith("Error: ") for r in broken), broken
