"""``fruits-cloud report``: the page a data scientist opens after any run, from the run's own files only.

    fruits-cloud report --run s3://BUCKET/PREFIX/pca/run=<id> [--out report.html]

One self-contained HTML file (it opens offline, from a laptop or the bucket): counts (rows in = projected +
rejected + duplicates, the rejects' reasons grouped), the model fingerprint and the share of each kind of
device, k and why, the scree curve, evaluate's results where the run has them (``evaluation/``), the published
projection and identify's calibration where this run was published, timings and driver bytes, the incremental
state where incremental, and the photos on the first three components as an interactive 3-D view (rotate,
zoom, hover for label, source and device, click a legend entry to hide a fruit) on a sample stratified by
label. Nothing is recomputed from the vectors: it reads ``summary.json``, ``explained_variance.json``,
``plots/``, ``rejects/`` and ``projections/`` (two aggregations and a bounded sample).

The 3-D view uses plotly.js, embedded from the pinned ``plotly`` Python package's own copy (nothing from a
CDN); the static matplotlib PNG stays in the page as the fallback. :class:`Report` is the HTML builder the
demo and the benchmarks share.
"""
from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path
from typing import Iterable, Sequence

from contract.errors import FruitsError, one_line
from cloud_pca.storage import small_table
DEFAULT_POINTS = 3000            # points in the 3-D view (a stratified sample beyond)

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; padding: 0 1em; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.6em 0; } td, th { border: 1px solid #ccc; padding: 4px 10px; }
th { background: #f3f3f3; text-align: left; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.4em 0; } .note { color: #666; font-size: 0.92em; }
.grid { display: grid; grid-template-columns: 1fr 1fr; gap: 12px; } .plot { width: 100%; height: 620px; }
.scree { width: 100%; height: 360px; } .ok { color: #1b7f2a; } .bad { color: #b3261e; font-weight: 600; }
"""


class ReportError(FruitsError):
    """A run that cannot be reported (no summary: not a run folder, or not finished)."""


class Report:
    """A self-contained HTML page (and optionally Markdown) built section by section."""

    def __init__(self, title: str, subtitle: str = ""):
        self.parts = [f"<h1>{html.escape(title)}</h1>"]
        if subtitle:
            self.parts.append(f"<p class='note'>{html.escape(subtitle)}</p>")
        self.title = title
        self.head: list[str] = []
        self.markdown = [f"# {title}", "", subtitle, ""] if subtitle else [f"# {title}", ""]

    def heading(self, text: str) -> None:
        self.parts.append(f"<h2>{html.escape(text)}</h2>")
        self.markdown += [f"## {text}", ""]

    def text(self, text: str, note: bool = False, cls: str = "") -> None:
        classes = " ".join(c for c in ("note" if note else "", cls) if c)
        self.parts.append(f"<p{f' class={chr(39)}{classes}{chr(39)}' if classes else ''}>{html.escape(text)}</p>")
        self.markdown += [text, ""]

    def table(self, rows: Sequence[dict], columns: Iterable[str] | None = None) -> None:
        if not rows:
            return
        cols = list(columns or rows[0].keys())

        def cell(v):
            if isinstance(v, float):
                v = f"{v:,.4g}" if abs(v) < 1000 else f"{v:,.0f}"
            elif isinstance(v, int) and not isinstance(v, bool):
                v = f"{v:,}"
            return "" if v is None else str(v)

        head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
        body = "".join("<tr>" + "".join(
            f"<td class='{'n' if isinstance(r.get(c), (int, float)) and not isinstance(r.get(c), bool) else ''}'>"
            f"{html.escape(cell(r.get(c)))}</td>" for c in cols) + "</tr>" for r in rows)
        self.parts.append(f"<table><tr>{head}</tr>{body}</table>")
        self.markdown += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        self.markdown += ["| " + " | ".join(cell(r.get(c)) for c in cols) + " |" for r in rows]
        self.markdown.append("")

    def images(self, pngs: Sequence[tuple[str, bytes]]) -> None:
        tags = "".join(f"<figure><img alt='{html.escape(name)}' src='data:image/png;base64,"
                       f"{base64.b64encode(png).decode()}'><figcaption class='note'>{html.escape(name)}"
                       f"</figcaption></figure>" for name, png in pngs)
        self.parts.append(f"<div class='grid'>{tags}</div>")
        self.markdown += [f"![{name}]({name})" for name, _ in pngs] + [""]

    def raw(self, markup: str) -> None:
        """Markup of our own making (a plot's container and its script)."""
        self.parts.append(markup)

    def script_in_head(self, js: str) -> None:
        self.head.append(f"<script>{js}</script>")

    def html(self) -> str:
        return (f"<!doctype html><html><head><meta charset='utf-8'>"
                f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
                f"<title>{html.escape(self.title)}</title><style>{_STYLE}</style>{''.join(self.head)}</head>"
                f"<body>{''.join(self.parts)}</body></html>\n")

    def write(self, path: str | Path, markdown: bool = False) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.html(), encoding="utf-8")
        if markdown:
            path.with_suffix(".md").write_text("\n".join(self.markdown) + "\n", encoding="utf-8")
        return path


# ------------------------------------------------------------------------------------------ plotly
def plotly_js() -> str:
    """plotly.js from the pinned ``plotly`` package (its ``package_data/plotly.min.js``): embedded, never fetched."""
    from importlib import resources

    try:
        return resources.files("plotly").joinpath("package_data/plotly.min.js").read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise ReportError(f"the interactive views need the plotly package ({exc}): pip install 'fruits[cloud]'") from None


def _json_for_script(obj) -> str:
    """JSON safe inside a <script> element whatever its strings hold: every ``<``, ``>`` and ``&`` as a \\u escape
    (JSON reads them back the same), so a label ``<!--<script>`` or ``</script>`` cannot change how the HTML parser
    reads the script (before: one such label hid the 3-D view and every section after it); U+2028/2029 too."""
    text = json.dumps(obj, separators=(",", ":"))
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"),
                    ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


def _plot(page: Report, div_id: str, cls: str, traces: list[dict], layout: dict) -> None:
    page.raw(f"<div id='{div_id}' class='{cls}'></div><script>Plotly.newPlot({json.dumps(div_id)}, "
             f"{_json_for_script(traces)}, {_json_for_script(layout)}, "
             f"{{displaylogo: false, responsive: true}});</script>")


# -------------------------------------------------------------------------------------- run's files
def _read_json(spark, uri: str):
    """A run file's JSON, None when it is not there; a file that cannot be read (a damaged local copy whose Hadoop
    .crc no longer matches, access denied) or is not JSON is one ReportError naming it."""
    from cloud_pca.inputs import java_reason
    from cloud_pca.storage import path_exists, read_bytes

    try:
        if not path_exists(spark, uri):
            return None
        data = read_bytes(spark, uri)
    except Exception as exc:  # Py4JJavaError: ChecksumException, AccessDenied, ...
        raise ReportError(f"{uri}: cannot be read ({java_reason(exc)})") from None
    try:
        return json.loads(data)
    except ValueError as exc:
        raise ReportError(f"{uri}: not JSON ({exc})") from None


# What summary.json's fields must be where present (a hand-edited or damaged file is refused with the field).
_SUMMARY_TYPES = {"rows_in": (int,), "projected": (int,), "rejected": (int,), "duplicates": (int,),
                  "already_counted": (int,), "files": (int,), "k": (int,), "cumulative_explained_variance": (int, float),
                  "reconciles": (bool,), "bad_files": (list,), "timings_s": (dict,), "rows_per_model": (dict,),
                  "driver_result_bytes": (dict,), "incremental": (dict,), "run_id": (str,), "model_sha256": (str,),
                  "k_reason": (str,), "solver": (str,), "finished_at": (str,), "contributions": (dict,)}


def check_summary(summary, uri: str) -> dict:
    """``summary`` as the report reads it: a JSON object whose known fields have their types (null allowed)."""
    if not isinstance(summary, dict):
        raise ReportError(f"{uri}: must be a JSON object (a run's summary), not {type(summary).__name__}")
    for key, types in _SUMMARY_TYPES.items():
        value = summary.get(key)
        if value is not None and (not isinstance(value, types) or (bool not in types and isinstance(value, bool))):
            raise ReportError(f"{uri}: {key} is {json.dumps(value)[:60]}, not a {'/'.join(t.__name__ for t in types)}")
    if any(not isinstance(b, dict) for b in summary.get("bad_files") or []):
        raise ReportError(f"{uri}: bad_files must be a list of objects")
    return summary


def _number(value, spec: str = ",", default: str = "?") -> str:
    return default if not isinstance(value, (int, float)) or isinstance(value, bool) else format(value, spec)


def _read_pngs(spark, folder: str) -> list[tuple[str, bytes]]:
    from cloud_pca.storage import list_files, read_bytes

    try:
        files = list_files(spark, folder, suffixes=(".png",))
    except Exception:  # no such folder
        return []
    return [(path.rsplit("/", 1)[1], read_bytes(spark, path)) for path, *_ in files]


def device_kind(client_id: str | None) -> str:
    """The kind of device behind a client id: the server's featurization, a phone's web app or Cognito device
    (its identity id, ``REGION:UUID``), or the Python edge."""
    cid = client_id or ""
    if cid.startswith("server"):
        return "server-side featurization of raw photos"
    if re.fullmatch(r"[a-z]{2}(-gov)?-[a-z]+-\d:[0-9a-f-]{36}", cid):
        return "phone (Cognito identity: the web app or fruits-edge --identity-pool)"
    if cid.startswith("web-"):
        return "web app (no identity pool)"
    return "Python edge (fruits-edge)"


REASON_PATTERNS = [(r"'[^']*'", "'…'"), (r"\b\d+\b", "N")]


def reason_groups(spark, rejects_uri: str) -> list[dict]:
    """The rejects' reasons grouped (quoted values and numbers generalized), counted in Spark."""
    from pyspark.sql import functions as F

    from cloud_pca.storage import path_exists

    if not path_exists(spark, rejects_uri):
        return []
    small = small_table(spark, rejects_uri, ["reason"])
    if small is not None:   # one task's worth: counted by the driver (no Spark job), as Spark would
        if "reason" not in small.column_names:
            return []
        counts: dict = {}
        for reason in small.column("reason").to_pylist():
            for pattern, repl in REASON_PATTERNS if reason is not None else ():
                reason = re.sub(pattern.replace(r"\d", "[0-9]"), repl, reason)   # Java's \d is ASCII
            counts[reason] = counts.get(reason, 0) + 1
        return [{"reason": r, "rows": n} for r, n in
                sorted(counts.items(), key=lambda kv: (-kv[1], kv[0] is None, kv[0] or ""))[:50]]
    df = spark.read.parquet(rejects_uri)
    if "reason" not in df.columns:
        return []
    reason = F.col("reason")
    for pattern, repl in REASON_PATTERNS:
        reason = F.regexp_replace(reason, pattern, repl)
    rows = df.groupBy(reason.alias("reason")).count().orderBy(F.desc("count")).limit(50).collect()
    return [{"reason": r["reason"], "rows": int(r["count"])} for r in rows]


def device_shares(spark, projections) -> list[dict]:
    from pyspark.sql import functions as F

    if hasattr(projections, "num_rows"):   # a small run's, read by the driver
        from collections import Counter

        rows = [{"client_id": c, "count": n} for c, n in
                Counter(projections.column("client_id").to_pylist()).most_common(1000)]
    else:
        rows = projections.groupBy("client_id").count().orderBy(F.desc("count")).limit(1000).collect()
    total = sum(r["count"] for r in rows) or 1
    kinds: dict[str, dict] = {}
    for r in rows:
        k = kinds.setdefault(device_kind(r["client_id"]), {"device kind": device_kind(r["client_id"]),
                                                           "devices": 0, "rows fitted": 0})
        k["devices"] += 1
        k["rows fitted"] += int(r["count"])
    for k in kinds.values():
        k["share"] = f"{k['rows fitted'] / total:.1%}"
    return sorted(kinds.values(), key=lambda k: -k["rows fitted"])


def sample_3d(spark, projections, max_points: int) -> tuple[list[dict], int, int]:
    """At most ``max_points`` rows of the first three components, stratified by label (each label gets its share,
    at most all its rows), chosen by a hash of the image id so the same run gives the same sample. Returns the
    rows, the rows in the run and the number of labels."""
    if hasattr(projections, "num_rows"):
        return _sample_3d_in_driver(projections, max_points)
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    label = F.coalesce(F.col("label"), F.lit("(no label)"))
    counts = {r["label"]: r["count"] for r in projections.select(label.alias("label")).groupBy("label").count().collect()}
    total = sum(counts.values())
    if not counts:
        return [], 0, 0
    quota = max(1, max_points // len(counts))
    cols = [label.alias("label"), F.slice("pca", 1, 3).alias("p"), "client_id"]
    if "source" in projections.columns:
        cols.append("source")
    w = Window.partitionBy("label").orderBy(F.xxhash64("image_id"))
    rows = (projections.select("image_id", *cols).withColumn("rn", F.row_number().over(w))
            .filter(F.col("rn") <= quota).drop("rn", "image_id").collect())
    return [r.asDict() for r in rows], total, len(counts)


def _sample_3d_in_driver(table, max_points: int) -> tuple[list[dict], int, int]:
    """:func:`sample_3d` of a small run's projections read by the driver: the same quota per label, the rows chosen by
    a hash of the image id (blake2b here, Spark's xxhash64 there: each run always gets the same sample)."""
    import hashlib

    cols = {c: table.column(c).to_pylist() for c in ("image_id", "label", "pca", "client_id", "source")
            if c in table.column_names}
    labels = ["(no label)" if lab is None else lab for lab in cols.get("label", [None] * table.num_rows)]
    if not labels:
        return [], 0, 0
    groups: dict[str, list[int]] = {}
    for i, lab in enumerate(labels):
        groups.setdefault(lab, []).append(i)
    quota = max(1, max_points // len(groups))

    def order(i: int) -> bytes:
        return hashlib.blake2b(str(cols["image_id"][i]).encode(), digest_size=8).digest()

    rows = []
    for lab, members in groups.items():
        for i in sorted(members, key=order)[:quota]:
            row = {"label": lab, "p": list(cols["pca"][i][:3]), "client_id": cols["client_id"][i]}
            if "source" in cols:
                row["source"] = cols["source"][i]
            rows.append(row)
    return rows, len(labels), len(groups)


# 24 colours far apart (Plotly's "Dark24"), then marker shapes: up to 192 fruits drawn each its own way (Plotly's
# default colorway has 10: on 21 real fruits, Apple Braeburn, Lemon Meyer and Walnut shared one blue).
PALETTE = ("#2E91E5", "#E15F99", "#1CA71C", "#FB0D0D", "#DA16FF", "#222A2A", "#B68100", "#750D86", "#EB663B",
           "#511CFB", "#00A08B", "#FB00D1", "#FC0080", "#B2828D", "#6C7C32", "#778AAE", "#862A16", "#A777F1",
           "#620042", "#1616A7", "#DA60CA", "#6C4516", "#0D2A63", "#AF0038")
SYMBOLS = ("circle", "square", "diamond", "cross", "x", "circle-open", "square-open", "diamond-open")


def marker_style(i: int) -> dict:
    """The i-th fruit's colour and marker shape in the 3-D view."""
    return {"color": PALETTE[i % len(PALETTE)], "symbol": SYMBOLS[(i // len(PALETTE)) % len(SYMBOLS)]}


def published_for(spark, run_uri: str, summary: dict, lang: str = "en") -> dict | None:
    """The projection published from this run, if the run lies in a dataset root (``ROOT/pca/run=<id>``) whose
    pointer names a projection made from it: its id, k, labels and identify's calibration."""
    from contract.catalog import Catalog
    from contract.layout import catalog_key, index_key, latest_projection_key, projection_key
    from contract.projection import Projection, ReferenceIndex, read_pointer
    from cloud_pca.storage import read_bytes

    m = re.match(r"^(.*)/pca/run=[^/]+/?$", run_uri)
    sha = summary.get("model_sha256")
    if not m or not sha:
        return None
    root = m.group(1)
    pointer = _read_json(spark, f"{root}/{latest_projection_key('', sha)}")
    if not isinstance(pointer, dict) or not isinstance(pointer.get("projection_id"), str):
        return None
    pid = pointer["projection_id"]
    try:
        named = read_pointer(json.dumps(pointer).encode(), latest_projection_key("", sha))
        pid, iid = named.projection_id, named.index_id
        projection = Projection.from_bytes(read_bytes(spark, f"{root}/{projection_key('', pid)}"), projection_key("", pid))
        index = ReferenceIndex.from_bytes(read_bytes(spark, f"{root}/{index_key('', iid)}"), index_key("", iid), iid)
        catalog = None
        if named.catalog_id:
            key = catalog_key("", named.catalog_id)
            catalog = Catalog.from_bytes(read_bytes(spark, f"{root}/{key}"), key, named.catalog_id)
    except Exception as exc:  # a damaged published file is reported, not fatal to the report
        return {"projection_id": pid, "error": one_line(exc)}
    if projection.run and projection.run != summary.get("run_id"):
        return {"projection_id": pid, "other_run": projection.run, "catalog": catalog}
    per_label = [int((index.owner == j).sum()) for j in range(len(index.labels))]
    return {"projection_id": pid, "index_id": iid, "k": projection.k, "run": projection.run,
            "unknown_distance": index.unknown_distance, "not_sure_ratio": index.not_sure_ratio,
            "calibration": index.calibration, "catalog": catalog,
            "bytes": len(projection.to_bytes()) + len(index.to_bytes()) + (len(catalog.to_bytes()) if catalog else 0),
            "labels": [{"fruit": catalog.name(lab, lang) if catalog else lab, "label": lab, "rows": int(n),
                        "prototypes": int(p)}
                       for lab, n, p in zip(index.labels, index.counts, per_label)]}


def contributions_tables(c: dict) -> list[tuple[str, list[dict]]]:
    """The trust model's account of a run (summary ``contributions``) as titled tables: the report's section and
    ``fruits-cloud contributions`` show the same."""
    counts = [{"what": what, "count": c.get(key, 0)} for key, what in (
        ("screened", "rows no photo gives (screened: beyond the model's feature radius)"),
        ("near_copies", "near-copies of other anonymous vectors (a dense cluster)"),
        ("conflicts", "conflicts: another vector for a photo already given"),
        ("replaced_counted", "counted rows replaced by a better-ranked copy"),
        ("influence", "rows of identities set aside for their influence on the components"),
        ("held_back", "objects held back (one anonymous device's daily cap, or set aside before)"),
        ("quarantined", "objects quarantined (unreadable, or off the layout)"))]
    tables = [("Set aside by the trust model", counts)]
    devices = [d for d in c.get("by_device") or [] if d.get("refused") or d.get("set_aside")]
    if devices:
        tables.append(("Devices with rows refused or set aside", [
            {"device": d["device"], "anonymous": "yes" if d.get("anonymous") else "no", "rows": d.get("rows"),
             "refused by the contract": d.get("refused"), "set aside": d.get("set_aside")} for d in devices[:30]]))
    if c.get("influence_set_aside"):
        tables.append(("Identities set aside for their influence (fruits-cloud contributions --restore DEVICE)", [
            {"device": d["device"], "rows": d["rows"], "share of the rows": f"{d['share_of_rows']:.2%}",
             "component": d["component"], "share of that component": f"{d['share_of_component']:.0%}",
             "angle without them": f"{d['angle_without_deg']:.0f} deg"} for d in c["influence_set_aside"][:200]]))
    if c.get("quarantined_objects"):
        tables.append(("Objects quarantined", c["quarantined_objects"][:50]))
    if c.get("held_back_objects"):
        tables.append(("Objects held back", [{k: h.get(k) for k in ("file", "device", "day", "rows")}
                                            for h in c["held_back_objects"][:50]]))
    if c.get("conflict_list"):
        tables.append(("Conflicts", [{"image_id": x["image_id"][:16] + "…", "kept": x["kept"], "refused": x["refused"],
                                      "cos": x.get("cos"), "why": x.get("why")} for x in c["conflict_list"][:50]]))
    return tables


def publish_tables(record: dict) -> tuple[list[str], list[tuple[str, list[dict]]]]:
    """What ``publish`` did with a run (its ``publish.json``: :mod:`cloud_pca.turn`, :mod:`cloud_pca.votes`) as lines
    and titled tables: the report's section and ``fruits-cloud contributions`` show the same."""
    t = record.get("turn") or {}
    lines = []
    if record.get("held"):
        lines.append(f"HELD, not published: {t.get('why', '')}")
    elif record.get("published"):
        lines.append(f"Published projection {record.get('projection_id')} and index {record.get('index_id')}"
                     + (" (a turn beyond the hold accepted by the operator)" if record.get("accepted_turn") else "") + ".")
    if t.get("turn_deg") is not None:
        lines.append(f"The top-{t.get('components')} components lie at most {t['turn_deg']:.2f} degrees outside the "
                     f"subspace the projection in force publishes (held beyond {t.get('hold_deg')}); the largest "
                     f"principal angle between the two top-{t.get('components')} subspaces: "
                     f"{t.get('subspace_angle_deg', float('nan')):.2f} degrees.")
    elif t.get("why"):
        lines.append(t["why"] + ".")
    if t.get("dk_bound_deg") is not None:
        lines.append(f"Anonymous rows are {t.get('anonymous_share', 0):.1%} of the fit; the Davis-Kahan bound on the turn "
                     f"they could cause: {t['dk_bound_deg']:.1f} degrees"
                     + (" (90: the bound says nothing here: the eigengap is small beside their weight)"
                        if t["dk_bound_deg"] >= 89.99 else "") + ".")
    tables = []
    if t.get("drivers") and t.get("turn_deg") is not None:
        tables.append(("Who pulled the components along the turn (share of the rows' energy along its direction)",
                       t["drivers"]))
    v = record.get("labels") or {}
    if v:
        lines.append(f"Labels: {v.get('counted', 0)} labelled rows counted for the index, {v.get('anonymous_counted', 0)} "
                     f"of the {v.get('anonymous_rows', 0)} anonymous ones; {v.get('identities_with_weight', 0)} of "
                     f"{v.get('identities', 0)} anonymous identities have earned the weight to count.")
        if v.get("anonymous_not_counted"):
            tables.append(("Anonymous labelled rows not counted", [
                {"why": why, "rows": n} for why, n in sorted(v["anonymous_not_counted"].items(), key=lambda kv: -kv[1])]))
        if v.get("held_for_operator"):
            tables.append(("Labels held for the operator (no trusted source knows them: add one to the catalog to "
                           "accept it)", v["held_for_operator"][:50]))
        if v.get("labels_refused"):
            tables.append(("Labels refused", v["labels_refused"][:50]))
        if v.get("disagreeing_identities"):
            tables.append(("Identities whose labels the trusted fit contradicts", v["disagreeing_identities"][:30]))
    if record.get("labels_without_card"):
        lines.append(f"{len(record['labels_without_card'])} label(s) published without a card in the catalog (phones "
                     f"show them as they are).")
        tables.append(("Labels published without a card (add them to the catalog)",
                       [{"label": label} for label in record["labels_without_card"][:200]]))
    return lines, tables


def publish_section(page: Report, record) -> None:
    if not isinstance(record, dict):
        return
    page.heading("Publish: the turn and the labels")
    lines, tables = publish_tables(record)
    for i, line in enumerate(lines):
        page.text(line, cls="bad" if i == 0 and record.get("held") else None)
    for title, rows in tables:
        page.text(title, note=True)
        page.table(rows)


def contributions_section(page: Report, c) -> None:
    if not isinstance(c, dict):
        return
    page.heading("Contributions")
    screened = (f"Anonymous rows were screened against the {c['screened_against']} (a vector farther than "
                f"{_number(c.get('screen_limit'), '.4g')} from its feature center is not what a photo gives)."
                if c.get("screened_against") else
                "The model's card states no feature radius: anonymous rows were not screened.")
    page.text(f"{_number(c.get('devices'))} devices sent rows, {_number(c.get('anonymous_devices'))} of them anonymous "
              f"(Cognito identities) with {_number(c.get('rows_from_anonymous'))} rows. {screened}")
    for title, rows in contributions_tables(c):
        page.text(title, note=True)
        page.table(rows)


# ---------------------------------------------------------------------------------------- the page
def history_section(page: Report, history) -> None:
    """The refreshes so far: rows added per refresh, the first components' explained variance over time, and how
    far the top-10 subspace moved since the previous refresh (the largest principal angle): drift shows here."""
    rows = [h for h in history or [] if isinstance(h, dict)]
    if not rows:
        return
    page.heading(f"History: {len(rows)} refresh{'es' if len(rows) != 1 else ''}")
    xs = [str(h.get("at", ""))[:19].replace("T", " ") for h in rows]
    first = [h.get("explained_first") if isinstance(h.get("explained_first"), list) else [] for h in rows]
    angles = [h.get("angle_top10_deg") for h in rows]
    moved = [a for a in angles if isinstance(a, (int, float))]
    page.text(f"{_number(rows[-1].get('rows_total'))} rows counted; the last refresh added "
              f"{_number(rows[-1].get('rows_added'))}" + (f"; its top-10 components moved {moved[-1]:.2f} degrees since "
                                                           f"the refresh before (largest: {max(moved):.2f})" if moved else "")
              + ". A steady model moves little per refresh; a jump is new data unlike the old (or a problem).")
    _plot(page, "history-rows", "scree", [
        {"type": "bar", "x": xs, "y": [h.get("rows_added") for h in rows], "name": "rows added",
         "marker": {"color": "#8fb996"}},
        {"type": "scatter", "mode": "lines", "x": xs, "y": [h.get("rows_total") for h in rows], "name": "rows in total",
         "yaxis": "y2", "line": {"color": "#2f7d32"}}],
        {"margin": {"t": 20}, "legend": {"orientation": "h"}, "xaxis": {"type": "category"},
         "yaxis": {"title": {"text": "rows added"}},
         "yaxis2": {"title": {"text": "in total"}, "overlaying": "y", "side": "right", "rangemode": "tozero"}})
    n = max((len(f) for f in first), default=0)
    _plot(page, "history-variance", "scree", [
        {"type": "scatter", "mode": "lines+markers", "x": xs, "y": [f[i] if i < len(f) else None for f in first],
         "name": f"PC{i + 1}"} for i in range(n)] + [
        {"type": "scatter", "mode": "lines+markers", "x": xs, "y": angles, "name": "angle since last (deg)",
         "yaxis": "y2", "line": {"color": "#b3261e", "dash": "dot"}}],
        {"margin": {"t": 20}, "legend": {"orientation": "h"}, "xaxis": {"type": "category"},
         "yaxis": {"title": {"text": "explained variance ratio"}},
         "yaxis2": {"title": {"text": "degrees"}, "overlaying": "y", "side": "right", "rangemode": "tozero"}})


def build_report(spark, run_uri: str, *, max_points: int = DEFAULT_POINTS, extra=None, lang: str = "en") -> Report:
    """The report of the run at ``run_uri``, its fruits named by the published catalog in ``lang``. ``extra(page)``
    adds sections after the run's own (the demo's devices and identification)."""
    run_uri = run_uri.rstrip("/")
    summary = _read_json(spark, f"{run_uri}/summary.json")
    if summary is None:
        raise ReportError(f"{run_uri}/summary.json is missing: not a run folder, or a run that did not finish")
    summary = check_summary(summary, f"{run_uri}/summary.json")
    try:
        return _page(spark, run_uri, summary, max_points=max_points, extra=extra, lang=lang)
    except ReportError:
        raise
    except Exception as exc:  # a Spark read of a damaged rejects/ or projections/ (not Parquet, a stale .crc)
        from cloud_pca.inputs import java_reason

        raise ReportError(f"{run_uri}: a run file cannot be read ({java_reason(exc)}); the run folder is damaged") from None


def _page(spark, run_uri: str, summary: dict, *, max_points: int, extra, lang: str = "en") -> Report:
    from cloud_pca.storage import path_exists

    marker = _read_json(spark, f"{run_uri}/_SUCCESS.json")
    explained = _read_json(spark, f"{run_uri}/explained_variance.json") or {}
    if not isinstance(explained, dict):
        raise ReportError(f"{run_uri}/explained_variance.json: must be a JSON object")
    s = summary
    page = Report(f"Fruits! PCA run {s.get('run_id', '?')}",
                  f"{run_uri} · model {str(s.get('model_sha256') or '?')[:12]}… · finished {s.get('finished_at', '?')}")
    page.script_in_head(plotly_js())

    page.heading("Rows")
    if marker is None:
        page.text("This run has no _SUCCESS.json: it did not complete (or is still running); what follows is what "
                  "it wrote.", cls="bad")
    reconciles = s.get("reconciles")
    page.table([
        {"figure": "rows in", "value": s.get("rows_in")},
        {"figure": "projected (unique image ids fitted)", "value": s.get("projected")},
        {"figure": "rejected", "value": s.get("rejected")},
        {"figure": "duplicates (same image_id)", "value": s.get("duplicates")},
        {"figure": "already counted (incremental)", "value": s.get("already_counted")},
        {"figure": "files read", "value": s.get("files")},
        {"figure": "bad files skipped", "value": len(s.get("bad_files") or [])},
    ])
    page.text(("rows in = projected + rejected + duplicates: yes" if reconciles else
               "rows in ≠ projected + rejected + duplicates: the counts do not reconcile"),
              cls="ok" if reconciles else "bad")
    reasons = reason_groups(spark, f"{run_uri}/rejects")
    if reasons:
        page.heading("Why rows were rejected")
        page.table(reasons)
        page.text("Quoted values and numbers are shown as '…' and N, so one kind of problem is one row.", note=True)
    if s.get("bad_files"):
        page.heading("Files skipped")
        page.table([{"file": b["file"], "reason": b["reason"]} for b in s["bad_files"][:100]])
    contributions_section(page, s.get("contributions"))

    projections = None
    if path_exists(spark, f"{run_uri}/projections"):   # a small run's read by the driver: no Spark job
        projections = small_table(spark, f"{run_uri}/projections", ["image_id", "label", "pca", "client_id", "source"])
        if projections is None:
            projections = spark.read.parquet(f"{run_uri}/projections")
    page.heading("Model and devices")
    page.table([{"model fingerprint (sha256 of the .tflite)": s.get("model_sha256"), "rows per model":
                 ", ".join(f"{str(k)[:12]}…: {_number(v)}" for k, v in (s.get("rows_per_model") or {}).items())}])
    if projections is not None:
        page.table(device_shares(spark, projections))

    page.heading(f"Components: k = {s.get('k')}")
    page.text(f"Why: {s.get('k_reason') or explained.get('why', '?')}. Cumulative explained variance at k: "
              f"{_number(s.get('cumulative_explained_variance'), '.4f')} ({s.get('solver') or '?'} solver, "
              f"{explained.get('n_rows', s.get('projected', '?'))} rows).")
    ratios, cum = explained.get("explained_variance_ratio") or [], explained.get("cumulative") or []
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in [*ratios, *cum]):
        raise ReportError(f"{run_uri}/explained_variance.json: its ratios must be lists of numbers")
    if ratios:
        n = min(len(ratios), max(50, int(s.get("k") or 0) + 10), 1280)
        xs = list(range(1, n + 1))
        _plot(page, "scree", "scree", [
            {"type": "bar", "x": xs, "y": [round(v, 6) for v in ratios[:n]], "name": "explained variance ratio",
             "marker": {"color": "#8fb996"}},
            {"type": "scatter", "mode": "lines", "x": xs, "y": [round(v, 6) for v in cum[:n]], "name": "cumulative",
             "yaxis": "y2", "line": {"color": "#2f7d32"}}],
            {"margin": {"t": 20}, "xaxis": {"title": {"text": "component"}},
             "yaxis": {"title": {"text": "ratio"}}, "legend": {"orientation": "h"},
             "yaxis2": {"title": {"text": "cumulative"}, "overlaying": "y", "side": "right", "range": [0, 1.02]},
             "shapes": [{"type": "line", "x0": s.get("k"), "x1": s.get("k"), "y0": 0, "y1": 1, "yref": "paper",
                         "line": {"dash": "dot", "color": "#b3261e"}}]})

    published = published_for(spark, run_uri, s, lang)
    catalog = (published or {}).get("catalog")

    def fruit(label: str) -> str:     # the catalog's name, the label kept in brackets; the label where none
        return catalog.name(label, lang, with_label=True) if catalog is not None else label

    if projections is not None and s.get("k", 0) >= 3:
        rows, total, n_labels = sample_3d(spark, projections, max_points)
        page.heading("The photos on the first three components")
        by_label: dict[str, list[dict]] = {}
        for r in rows:
            by_label.setdefault(r["label"], []).append(r)
        traces = []
        for i, lab in enumerate(sorted(by_label)):
            pts = by_label[lab]
            traces.append({
                "type": "scatter3d", "mode": "markers", "name": f"{fruit(lab)} ({len(pts)})",
                "x": [round(p["p"][0], 4) for p in pts], "y": [round(p["p"][1], 4) for p in pts],
                "z": [round(p["p"][2], 4) for p in pts],
                "marker": {"size": 3, "opacity": 0.85, **marker_style(i)},
                "text": [f"{html.escape(fruit(lab))}<br>{html.escape(p.get('source') or '(source not recorded)')}"
                         f"<br>device {html.escape(str(p['client_id']))}" for p in pts],
                "hoverinfo": "text"})
        page.text(f"{len(rows):,} of the run's {total:,} photos, a sample stratified by label (at most "
                  f"{max(1, max_points // max(n_labels, 1)):,} of each of the {n_labels} labels). Drag to turn, scroll "
                  f"to zoom, hover a point for its label, source file and device, click a legend entry to hide a "
                  f"fruit (double-click: only that fruit).", note=True)
        # (a top margin: Plotly's mode bar sits over the top right corner, where the legend starts; it took the
        # clicks meant for the first fruit)
        _plot(page, "pca3d", "plot", traces, {"margin": {"l": 0, "r": 0, "t": 40, "b": 0},
                                               "legend": {"itemsizing": "constant"},
                                               "scene": {"xaxis": {"title": {"text": "PC1"}}, "yaxis": {"title": {"text": "PC2"}},
                                                         "zaxis": {"title": {"text": "PC3"}}}})
    pngs = _read_pngs(spark, f"{run_uri}/plots")
    if pngs:
        page.heading("Static plots (the same run, as images)")
        page.images(pngs)

    evaluation = _read_json(spark, f"{run_uri}/evaluation/evaluation.json")
    if evaluation:
        page.heading("How little must we store? (evaluate)")
        for clf, a in (evaluation.get("answer") or {}).items():
            page.text(f"{clf}: {a.get('sentence', '')}.")
        rows = evaluation.get("results") or []
        if rows:
            page.table(rows[:60])
        page.images(_read_pngs(spark, f"{run_uri}/evaluation"))

    if published:
        page.heading("Published for the devices")
        if "error" in published:
            page.text(f"projection {published['projection_id']}: {published['error']}", cls="bad")
        elif "other_run" in published:
            page.text(f"The projection in force ({published['projection_id']}) comes from run {published['other_run']}, "
                      f"not this one.", note=True)
        else:
            cal = published["calibration"]
            page.text(f"Projection {published['projection_id']}: the first {published['k']} components of this run, "
                      f"and index {published['index_id']} of {len(published['labels'])} labels "
                      f"({_number(published['bytes'])} bytes for a phone to download). A photo is named by its "
                      f"nearest prototype (cosine, whitened space); 'unknown' beyond a distance of "
                      f"{published['unknown_distance']:.4f}, 'not sure: A or B' when the runner-up is within a "
                      f"ratio of {published['not_sure_ratio']:.4f}.")
            page.text(f"Calibrated on {_number(cal.get('held_out'))} rows held out by {cal.get('split')} "
                      f"({cal.get('folds')} folds; each identified by prototypes fitted without it) for a stated "
                      f"false-refusal rate of {cal.get('refusal', 0):.0%}. On those rows: named right "
                      f"{cal.get('named_right', 0):.1%}, wrong {cal.get('wrong', 0):.1%}, unknown "
                      f"{cal.get('unknown', 0):.1%}, not sure {cal.get('not_sure', 0):.1%}; precision of named "
                      f"answers {cal.get('precision', 0):.1%}.")
            page.table(published["labels"])

    publish_section(page, _read_json(spark, f"{run_uri}/publish.json"))

    page.heading("Time and driver traffic")
    page.table([{"stage": k, "seconds": v} for k, v in (s.get("timings_s") or {}).items()])
    traffic = s.get("driver_result_bytes") or {}
    if traffic:
        page.text(f"Bytes of task results the driver received: {_number(traffic.get('fit'))} for the fit, "
                  f"{_number(traffic.get('run'))} for the whole run; {s.get('partitions', '?')} partitions.")
    inc = s.get("incremental")
    if inc:
        page.heading("Incremental state")
        page.table([{"figure": k.replace("_", " "), "value": v} for k, v in inc.items() if k != "history"])   # (one
        # row of 16 columns was 2,500 px wide)
        history_section(page, inc.get("history"))
    if extra is not None:
        extra(page)
    page.text(f"Made by fruits-cloud report from {run_uri}: summary.json, explained_variance.json, plots/, rejects/, "
              f"projections/" + (", evaluation/" if evaluation else "") + (" and the published projection" if published else "")
              + ". Self-contained: it opens offline.", note=True)
    return page


def write_report(spark, run_uri: str, out: str | None = None, **kw) -> str:
    """Build the report and write it to ``out`` (a local path, or s3://...; default: ``<run>/report.html``)."""
    from cloud_pca.storage import write_bytes

    page = build_report(spark, run_uri, **kw)
    target = out or f"{run_uri.rstrip('/')}/report.html"
    if "://" in target and not target.startswith("file:"):
        write_bytes(spark, target, page.html().encode("utf-8"))
    else:
        page.write(target.replace("file://", "", 1) if target.startswith("file://") else target)
    return target
