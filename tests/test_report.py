"""`fruits-cloud report`: one self-contained page from a run's own files, checked in a real browser (headless
Chromium): it opens with no console error and no network request, and its 3-D view has one trace per label with
the sampled points."""
from __future__ import annotations

import json
import shutil

import pytest

from web.device import have_browser

K = 8


@pytest.fixture(scope="module")
def reported_run(tmp_path_factory, vectors_file, spark):
    """A run (60 photos, 6 labels, one bad row), its evaluation and its published projection, as EMR leaves them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cloud_pca.evaluate import evaluate, write_evaluation
    from cloud_pca.job import JobConfig, run
    from cloud_pca.publish import publish

    base = tmp_path_factory.mktemp("report")
    (base / "in").mkdir()
    shutil.copy(vectors_file, base / "in" / "v.parquet")
    table = pq.read_table(vectors_file).slice(0, 2)
    bad = table.set_column(table.schema.get_field_index("image_id"), "image_id", pa.array(["not-a-sha", "x" * 70]))
    pq.write_table(bad, base / "in" / "bad.parquet")
    result = run(spark, JobConfig(inputs=[f"file://{base}/in"], output=f"file://{base}/root/pca", k=K, run_id="r1"))
    ev = evaluate(spark, [f"file://{base}/in"], ks=(2, 4, 8))
    write_evaluation(spark, ev, f"{result.run_uri}/evaluation")
    publish(spark, result.run_uri, f"file://{base}/root", k=4)
    return base, result


def test_report_from_the_run_files_only(reported_run, spark, tmp_path, capsys):
    from bootstrap.cli import main as cloud_main

    base, result = reported_run
    out = tmp_path / "report.html"
    assert cloud_main(["--quiet", "report", "--run", str(base / "root" / "pca" / "run=r1"), "--out", str(out)]) == 0
    page = out.read_text()
    s = result.summary
    assert s["rows_in"] == 62 and s["rejected"] == 2 and s["projected"] == 60
    assert "rows in = projected + rejected + duplicates: yes" in page
    assert "image_id &#x27;…&#x27; is not a sha256" in page, "the two rejects' reasons grouped into one"
    assert "Python edge (fruits-edge)" in page and "100.0%" in page
    assert f"k = {K}" in page and "Plotly.newPlot(\"scree\"" in page and "Plotly.newPlot(\"pca3d\"" in page
    assert "How little must we store?" in page and "Published for the devices" in page and "first 4 components" in page
    assert page.count("<img alt=") == 5      # the run's 3 static plots + evaluate's 2


def test_a_folder_that_is_not_a_run_is_one_error(tmp_path, spark, capsys):
    from bootstrap.cli import main as cloud_main

    assert cloud_main(["--quiet", "report", "--run", str(tmp_path), "--out", str(tmp_path / "r.html")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("Error: ") and "summary.json is missing" in err[0]


@pytest.mark.skipif(not have_browser(), reason="no Chromium (./run setup installs it)")
def test_the_report_in_a_browser(reported_run, spark, tmp_path):
    """Opened from disk (file://), as a person opens a report they downloaded: no console error, no request but
    the file itself, one 3-D trace per label with its points, a legend click hides a fruit; a screenshot is kept."""
    from cloud_pca.report import write_report
    from web.device import Chromium

    base, result = reported_run
    out = tmp_path / "report.html"
    write_report(spark, result.run_uri, str(out), max_points=30)     # 5 per label: the sample is bounded
    with Chromium(viewport={"width": 1200, "height": 900}) as browser:
        page = browser.context.new_page()
        errors, requests = [], []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: requests.append(r.url))
        page.goto(out.as_uri())
        page.wait_for_function("document.getElementById('pca3d') && document.getElementById('pca3d').data")
        traces = page.evaluate("""() => document.getElementById('pca3d').data.map(t => ({name: t.name, type: t.type,
            n: t.x.length, text: t.text[0]}))""")
        page.click("#pca3d .legendtoggle >> nth=0")   # plotly waits out the double-click delay before it hides
        page.wait_for_function("document.getElementById('pca3d').data[0].visible === 'legendonly'", timeout=5000)
        hidden = page.evaluate("document.getElementById('pca3d').data[0].visible")
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    assert errors == [] and requests == [out.as_uri()], (errors, requests)
    assert len(traces) == 6 and all(t["type"] == "scatter3d" and t["n"] == 5 for t in traces), traces
    assert traces[0]["text"].startswith("Apple Red<br>Apple Red/") and "device test-phone" in traces[0]["text"]
    assert hidden == "legendonly"
    assert "30 of the run&#x27;s 60 photos" in out.read_text()
    assert (tmp_path / "report.png").stat().st_size > 50_000


def test_an_incremental_run_reports_its_state(spark, tmp_path, vectors_file):
    from cloud_pca.job import JobConfig, run
    from cloud_pca.report import build_report

    (tmp_path / "in").mkdir()
    shutil.copy(vectors_file, tmp_path / "in" / "v.parquet")
    r = run(spark, JobConfig(inputs=[f"file://{tmp_path}/in"], output=f"file://{tmp_path}/pca", k=3, run_id="i1",
                             plots=False, incremental=True))
    html = build_report(spark, r.run_uri).html()
    assert "Incremental state" in html and json.dumps(r.summary["incremental"]["generation"])[1:-1] in html


# -------------------------------------------------------------------------- damaged runs, hostile labels
def copy_run(reported_run, tmp_path):
    base, result = reported_run
    run = tmp_path / "run=r1"
    shutil.copytree(base / "root" / "pca" / "run=r1", run)
    return run


def hadoop_crc(data: bytes, chunk: int = 512) -> bytes:
    """The ``.NAME.crc`` Hadoop's local filesystem writes beside a file: magic, bytes per checksum, a CRC32 each."""
    import struct
    import zlib

    return b"crc\0" + struct.pack(">i", chunk) + b"".join(
        struct.pack(">I", zlib.crc32(data[i:i + chunk])) for i in range(0, len(data), chunk))


def write(run, name: str, text: str, *, keep_crc: bool = False) -> None:
    """Replace a run file; without its Hadoop .crc unless ``keep_crc``: then the checksum of the file as Hadoop
    wrote it stays (the job writes local files directly, without one: made here as Hadoop would) and no longer
    matches."""
    crc = run / f".{name}.crc"
    if keep_crc and not crc.exists():
        crc.write_bytes(hadoop_crc((run / name).read_bytes()))
    (run / name).write_text(text)
    if not keep_crc:
        (run / f".{name}.crc").unlink(missing_ok=True)


@pytest.mark.parametrize("damage, message", [
    (lambda run: write(run, "summary.json", "[1, 2, 3]"), "summary.json: must be a JSON object"),
    (lambda run: write(run, "summary.json", json.dumps({"rows_in": None, "k": "eight"})),
     "summary.json: k is \"eight\", not a int"),
    (lambda run: write(run, "summary.json", "{not json"), "summary.json: not JSON"),
    (lambda run: write(run, "summary.json", json.dumps({**json.loads((run / "summary.json").read_text()),
                                                       "rows_in": 1}), keep_crc=True),
     "summary.json: cannot be read (ChecksumException"),            # edited by hand: Hadoop's .crc no longer matches
    (lambda run: (run / "projections" / "part-00000-junk.parquet").write_bytes(b"not parquet at all"),
     "a run file cannot be read"),
    (lambda run: write(run, "explained_variance.json", '{"explained_variance_ratio": ["a"]}'),
     "explained_variance.json: its ratios must be lists of numbers"),
])
def test_every_damaged_run_file_is_one_error_line(reported_run, spark, tmp_path, capsys, damage, message):
    """A damaged run folder is one `Error:` line naming the file, never a traceback (before: ChecksumException,
    TypeError or Spark's stack for each of these)."""
    from bootstrap.cli import main as cloud_main

    run = copy_run(reported_run, tmp_path)
    damage(run)
    assert cloud_main(["--quiet", "report", "--run", str(run), "--out", str(tmp_path / "r.html")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("Error: ") and message in err[0], err


def test_labels_cannot_break_the_page(spark, tmp_path):
    """Labels that look like markup (`<!--<script>`, `</script>`, `<img onerror>`) are data everywhere in the page:
    the 3-D view still draws every label and the sections after it are there (before: one `<!--<script>` label hid
    the view and everything after it)."""
    import pyarrow.parquet as pq

    from cloud_pca.job import JobConfig, run
    from cloud_pca.report import build_report
    from vectors_for_tests import contract_table

    labels = ["<!--<script>", "</script><b>x</b>", "<img src=x onerror=alert(1)>"]
    table = contract_table(90, seed=3)
    table = table.set_column(table.schema.get_field_index("label"), "label",
                             __import__("pyarrow").array([labels[i % 3] for i in range(90)]))
    (tmp_path / "in").mkdir()
    pq.write_table(table, tmp_path / "in" / "v.parquet")
    result = run(spark, JobConfig(inputs=[f"file://{tmp_path}/in"], output=f"file://{tmp_path}/pca", k=4, run_id="x"))
    html = build_report(spark, result.run_uri).html()
    scripts = html.split("<script>")[1:]
    assert all("<!--" not in part.split("</script>")[0] and "<script" not in part.split("</script>")[0]
               for part in scripts[1:]), "markup inside a script"
    assert "Time and driver traffic" in html.rsplit("</script>", 1)[1]
    if not have_browser():
        return
    from web.device import Chromium

    out = tmp_path / "report.html"
    out.write_text(html)
    with Chromium(viewport={"width": 1200, "height": 900}) as browser:
        page = browser.context.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("dialog", lambda d: (errors.append("a dialog opened"), d.dismiss()))
        page.goto(out.as_uri())
        page.wait_for_function("document.getElementById('pca3d') && document.getElementById('pca3d').data")
        names = page.evaluate("() => document.getElementById('pca3d').data.map(t => t.name)")
        headings = page.evaluate("() => Array.from(document.querySelectorAll('h2')).map(h => h.textContent)")
    assert errors == [] and sorted(n.rsplit(" (", 1)[0] for n in names) == sorted(labels), (errors, names)
    assert "Time and driver traffic" in headings
