"""``fruits-edge``: vectorize photos on the device and upload only the vectors.

Each command is a thin layer over a library function (:mod:`edge_client.vectorize`, :mod:`edge_client.upload`,
:mod:`edge_client.sync`, :mod:`edge_client.project`); a refusal is one ``Error: ...`` line and exit code 1.
Exit code 3 means "done, but some photos were rejected" (listed with their reasons).
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from contract.errors import add_command, main_parser, run_cli
from edge_client.vectorize import Summary, UserError, default_client_id, find_photos, vectorize

EXIT_REJECTS = 3


def _add_s3_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--endpoint-url", default=os.environ.get("FRUITS_S3_ENDPOINT"),
                   help="S3-compatible endpoint (a local server, MinIO); default: AWS")
    p.add_argument("--profile", help="AWS profile for static credentials (laptops)")
    p.add_argument("--identity-pool", help="a Cognito identity pool id (REGION:UUID): per-device, short-lived "
                                           "credentials; the device's identity id becomes its client id")
    p.add_argument("--region", help="AWS region (default: the pool's or the profile's, else us-east-1)")
    p.add_argument("--manifest", type=Path, help="where confirmed uploads are recorded (default ~/.fruits/)")
    p.add_argument("--recheck", action="store_true",
                   help="ignore the manifest: send every object again, conditionally (S3 refuses what it has)")
    p.add_argument("--retries", type=int, default=8, help="attempts per request, with backoff (default 8)")
    p.add_argument("--rows-per-object", type=int, default=5000, help="rows per S3 object (default 5000)")


def _add_vectorize_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, help="a .tflite with its model card (default: the committed model, int8)")
    p.add_argument("--threads", type=int, default=None,
                   help="parallel workers, each decoding and running a 1-thread interpreter (default: cores + 2, "
                        "so a core stays busy while a worker waits for Python's GIL)")
    p.add_argument("--label", help="label for every photo (default: the parent folder's name)")
    p.add_argument("--client-id", default=None, help="who vectorized (default: FRUITS_CLIENT_ID or edge-<host>)")


def build_parser() -> argparse.ArgumentParser:
    parser = main_parser("fruits-edge", __doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = add_command(sub, "vectorize", help="photos -> Parquet of 1280-d vectors",
                    description="Vectorize photos with LiteRT into a Parquet file of the data contract.",
                    example="fruits-edge vectorize ~/DCIM/fruits --out vectors.parquet")
    p.add_argument("photos", nargs="+", help="folders (recursive) or photo files")
    p.add_argument("--out", type=Path, required=True, help="the Parquet file to write (.parquet)")
    _add_vectorize_options(p)

    p = add_command(sub, "upload", help="upload vectors files to S3 (idempotent, resumable)",
                    description="Upload vectors under s3://BUCKET/PREFIX/vectors/model=<sha256>/...",
                    example="fruits-edge upload vectors.parquet s3://fruits-data/team-a")
    p.add_argument("files", nargs="+", type=Path, help="vectors Parquet files")
    p.add_argument("dest", help="s3://BUCKET[/PREFIX]")
    p.add_argument("--client-id", default=None, help="override the files' client id in the key")
    _add_s3_options(p)

    p = add_command(sub, "sync", help="vectorize new photos and upload their vectors",
                    description="Vectorize the photos not uploaded yet (by content) and upload them.",
                    example="fruits-edge sync ~/DCIM/fruits s3://fruits-data/team-a --identity-pool eu-west-3:...")
    p.add_argument("photos", nargs="+", help="folders or photo files")
    p.add_argument("dest", help="s3://BUCKET[/PREFIX]")
    p.add_argument("--keep", type=Path, help="also keep the vectors file here")
    p.add_argument("--project", action="store_true",
                   help="upload k-d projections instead of 1280-d vectors, with the projection published under "
                        "PREFIX/models/ for this model (fruits-cloud publish)")
    _add_vectorize_options(p)
    _add_s3_options(p)

    p = add_command(sub, "upload-raw", help="upload the photos themselves (for the server-side fallback)",
                    description="For devices that cannot vectorize: upload photos under PREFIX/raw/.",
                    example="fruits-edge upload-raw ~/DCIM/fruits s3://fruits-data/team-a")
    p.add_argument("photos", nargs="+", help="folders or photo files")
    p.add_argument("dest", help="s3://BUCKET[/PREFIX]")
    p.add_argument("--label", help="label for every photo (default: the parent folder's name)")
    p.add_argument("--client-id", default=None)
    _add_s3_options(p)

    p = add_command(sub, "identify", help="name the fruit in photos, from the published projection and index",
                    description="Vectorize photos, project them with the published projection and answer with the "
                                "published index: a label, 'unknown' (no fruit it knows), or 'not sure: A or B'. "
                                "One line per photo (path, answer, score, runner-up); when the photos' folders "
                                "name their fruits, how right the answers were.",
                    example="fruits-edge identify apple.jpg --from s3://fruits-data/team-a\n"
                            "         fruits-edge identify Test/ --from out/published --csv answers.csv\n"
                            "         fruits-edge identify apple.jpg --projection p.npz --index i.npz")
    p.add_argument("photos", nargs="+", help="photo files or folders (recursive)")
    p.add_argument("--from", dest="source", help="where publish wrote: s3://BUCKET[/PREFIX] or a local folder (ROOT)")
    p.add_argument("--projection", type=Path, help="a local projection-<id>.npz (instead of --from)")
    p.add_argument("--index", type=Path, help="a local index-<id>.npz (instead of --from)")
    p.add_argument("--catalog", type=Path, help="with --projection and --index: a catalog JSON file for the names")
    p.add_argument("--csv", type=Path, help="also write the answers here (path, answer, label, score, runner_up, ...)")
    p.add_argument("--top", type=int, default=3, help="labels shown per photo (default 3)")
    p.add_argument("--lang", default="en", choices=("en", "fr"), help="fruit names in this language (default en)")
    p.add_argument("--threads", type=int, default=None, help="parallel workers (default: cores + 2)")
    p.add_argument("--model", type=Path, help="the .tflite (default: the committed model, int8)")
    p.add_argument("--endpoint-url", default=os.environ.get("FRUITS_S3_ENDPOINT"))
    p.add_argument("--profile")
    p.add_argument("--identity-pool")
    p.add_argument("--region")
    return parser


def _model(args) -> str:
    if args.model:
        return str(args.model)
    from models import model_path

    return str(model_path())


@dataclass
class Destination:
    client: object
    bucket: str
    root: str
    client_id: str | None       # the Cognito identity id when --identity-pool is given


def _destination(args, uri: str | None = None) -> Destination:
    from edge_client.upload import parse_s3_uri, s3_client

    bucket, root = parse_s3_uri(uri or args.dest)
    session, identity = None, None
    if getattr(args, "identity_pool", None):
        from edge_client.identity import device_identity

        identity = device_identity(args.identity_pool, region=args.region, endpoint_url=args.endpoint_url)
        session = identity.session
        if getattr(args, "client_id", None) and args.client_id != identity.identity_id:
            raise UserError(f"--client-id {args.client_id} conflicts with --identity-pool: the device's client id "
                            f"is its identity id {identity.identity_id}")
    client = s3_client(endpoint_url=args.endpoint_url, profile=args.profile, region=args.region,
                       retries=getattr(args, "retries", 8), session=session)
    return Destination(client, bucket, root, identity.identity_id if identity else None)


def _manifest(args):
    from edge_client.manifest import Manifest, default_manifest_path

    return Manifest(args.manifest or default_manifest_path(), endpoint_url=args.endpoint_url)


def _report(summary: Summary) -> int:
    print(f"vectorized: {summary.line()}")
    for line in summary.label_lines():
        print(line, file=sys.stderr)
    listed = summary.rejects + summary.skipped
    if listed:
        print(f"rejected {summary.rejected} photo(s), skipped {summary.skipped_not_image} other file(s); all listed "
              f"in {summary.rejects_file}:", file=sys.stderr)
        for source, reason in listed[:10]:
            print(f"  {source}: {reason}", file=sys.stderr)
        if len(listed) > 10:
            print(f"  ... and {len(listed) - 10} more", file=sys.stderr)
    return EXIT_REJECTS if summary.rejects else 0


def cmd_vectorize(args) -> int:
    summary = Summary()
    photos = find_photos(args.photos, label=args.label, summary=summary)
    if not photos:
        raise UserError(f"no photos found in {', '.join(args.photos)}")
    vectorize(photos, args.out, model_path=_model(args), threads=args.threads, client_id=args.client_id,
              progress=not args.quiet, summary=summary)
    print(f"wrote {summary.ok} vectors to {args.out}")
    return _report(summary)


def cmd_upload(args) -> int:
    from edge_client.upload import upload_vectors

    dest = _destination(args)
    with _manifest(args) as manifest:
        s = upload_vectors(dest.client, args.files, dest.bucket, dest.root, manifest=manifest,
                           client_id=dest.client_id or args.client_id, rows_per_object=args.rows_per_object,
                           endpoint_url=args.endpoint_url, progress=not args.quiet, recheck=args.recheck)
    print(f"uploaded: {s.line()}")
    return 0


def cmd_sync(args) -> int:
    from edge_client.sync import sync

    dest = _destination(args)
    with _manifest(args) as manifest:
        result = sync(args.photos, dest.client, dest.bucket, dest.root, manifest=manifest, model_path=_model(args),
                      client_id=dest.client_id or args.client_id or default_client_id(), threads=args.threads,
                      label=args.label, rows_per_object=args.rows_per_object, endpoint_url=args.endpoint_url,
                      progress=not args.quiet, project=args.project, keep=args.keep, recheck=args.recheck,
                      rejects_path=None if args.keep else Path.cwd() / "sync.rejects.csv", say=print)
    code = _report(result.vectorized)
    print(f"uploaded: {result.uploaded.line()}" if result.uploaded else "uploaded: nothing new")
    return code


def cmd_upload_raw(args) -> int:
    from edge_client.upload import upload_raw
    from edge_client.vectorize import write_rejects

    summary = Summary()
    photos = find_photos(args.photos, label=args.label, summary=summary)
    if not photos:
        raise UserError(f"no photos found in {', '.join(args.photos)}")
    dest = _destination(args)
    with _manifest(args) as manifest:
        s = upload_raw(dest.client, photos, dest.bucket, dest.root, manifest=manifest,
                       client_id=dest.client_id or args.client_id or default_client_id(),
                       endpoint_url=args.endpoint_url, progress=not args.quiet, recheck=args.recheck)
    summary.rejects += s.refused
    summary.rejected += len(s.refused)
    write_rejects(summary, Path.cwd() / "upload-raw.rejects.csv")
    print(f"uploaded photos: {s.line()}" + (f"; {summary.skipped_not_image} other file(s) skipped"
                                             if summary.skipped_not_image else ""))
    for line in summary.label_lines():
        print(line, file=sys.stderr)
    if summary.rejects or summary.skipped:
        print(f"refused {summary.rejected} photo(s), skipped {summary.skipped_not_image} other file(s); all listed "
              f"in {summary.rejects_file}", file=sys.stderr)
    return EXIT_REJECTS if summary.rejects else 0


def cmd_identify(args) -> int:
    from edge_client.project import Published, figures_text, identify_photos, load_local, write_answers
    from featurizer.runtime import Model

    if args.top < 1:
        raise UserError(f"--top {args.top} must be at least 1")
    if args.csv and args.csv.exists() and args.csv.is_dir():
        raise UserError(f"--csv {args.csv} is a folder")
    model = Model(_model(args), threads=1)
    catalog = load_local(args.catalog, "catalog") if args.catalog else None
    if args.source and args.source.startswith("s3://"):
        dest = _destination(args, args.source)
        published = Published(args.source, client=dest.client, endpoint_url=args.endpoint_url)
        projection, index, catalog = published.published(model.sha256)
    elif args.source:
        projection, index, catalog = Published(args.source).published(model.sha256)
    elif args.projection and args.index:
        projection, index = load_local(args.projection, "projection"), load_local(args.index, "index")
    else:
        raise UserError("give --from s3://BUCKET/PREFIX (or the local folder publish wrote), or both --projection "
                        "and --index")
    summary = Summary()
    photos = find_photos(args.photos, summary=summary)
    if not photos:
        raise UserError(f"no photos found in {', '.join(args.photos)}")
    answers = identify_photos(photos, model, projection, index, threads=args.threads, progress=not args.quiet,
                              top=args.top)
    lang = args.lang

    def name(label: str) -> str:
        return catalog.name(label, lang) if catalog is not None else label

    for a in answers:
        if a.answer is None:
            print(f"{a.path}: not read ({a.reason})")
            continue
        x = a.answer
        sure = "" if x.confidence is None else f"{x.confidence:.0%} of such answers right; "
        print(f"{a.path}: {name(x.label) if x.named else x.answer}  ({sure}candidates: "
              + ", ".join(f"{name(lab)} {d:.3f}" for lab, _, d in x.ranked) + ")")
        if catalog is not None and x.named and catalog.lookup(x.label):
            print(f"    {catalog.line(x.label, lang)}")
        elif x.answer != "unknown" and not x.named:
            print(f"    not sure: {name(x.label)} or {name(x.runner_up)}"
                  + (f" (both {catalog.species_name(x.species, lang) if catalog else x.species})" if x.species else ""))
    if args.csv:
        write_answers(answers, args.csv, catalog, lang)
    species = dict(zip(index.labels, index.species))
    report = figures_text([(a.truth, a.answer.answer, a.answer.candidates) for a in answers
                           if a.answer is not None and a.truth], set(index.labels),
                          lambda label: species.get(label) or (catalog.species(label) if catalog else None)
                          or label.split()[0])
    if report:
        print(report)
    return EXIT_REJECTS if summary.rejects or any(a.answer is None for a in answers) else 0


COMMANDS = {"vectorize": cmd_vectorize, "upload": cmd_upload, "sync": cmd_sync, "upload-raw": cmd_upload_raw,
            "identify": cmd_identify}


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), COMMANDS, argv, interrupted="interrupted; run the same command again to resume")


if __name__ == "__main__":
    sys.exit(main())
