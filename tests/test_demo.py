"""The README's main command, small: every stage runs, the report is written, nothing is left running."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_demo_end_to_end_small(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "demo", "--per-class", "5", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "report:" in proc.stdout and "local S3 server stopped" in proc.stdout
    summary = json.loads((out / "demo-summary.json").read_text())
    # 50 photos: 2 per class held out of every upload (identified at the end); of the other 30, dealt in rounds
    # of 20 (4 raw, 4 to the web app, 12 to the Python edge): 14 by the Python edge and 8 by the web app in
    # Chromium sent as vectors, 8 sent raw and featurized by Spark; all projected, each kind counted.
    assert summary["storage"]["edge_images"] == 22 and summary["photos"]["ok"] == 8
    assert summary["projected"] == 30 and summary["reconciles"]
    kinds = {d["device kind"].split(" (")[0]: d["rows fitted"] for d in summary["storage"]["devices"]}
    assert kinds == {"Python edge": 14, "phone web app": 8, "server-side featurization of raw photos": 8}
    held = {r["photo"].split("/")[0] for r in summary["identified"]["rows"]}
    assert len(summary["identified"]["rows"]) == 20 and len(held) == 10, "the held-out photos are DIR's own classes"
    html = (out / "report.html").read_text()
    assert html.count("<img alt=") == 5 and "Rows" in html  # 3 PCA plots + 2 evaluation plots
    assert "Plotly.newPlot(\"pca3d\"" in html and "fruits-cloud report" in html   # the run's report, made as after any run
    assert "How little must we store?" in html and "Identification on the device" in html
    assert "The demo&#x27;s devices" in html and (out / "browser-phone.png").stat().st_size > 10_000
    assert "store:    knn5: storing" in proc.stdout and "identify: " in proc.stdout
    assert {p.name for p in (out / "results" / "plots").iterdir()} == {"scree.png", "pca_2d.png", "pca_3d.png"}
    assert (out / "results" / "_SUCCESS.json").exists()
