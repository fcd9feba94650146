"""``fruits-edge``: vectorize photos on the device and upload only the vectors.

A thin layer over :mod:`edge_client.vectorize` and :mod:`edge_client.upload`; user errors become one
``Error: ...`` line and exit code 1.  Exit code 3 means "done, but some photos were rejected".
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

from contract import ContractError
from models import model_path
from edge_client.vectorize import Summary, UserError, default_client_id, find_photos, vectorize

EXIT_REJECTS = 3


def _add_s3_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--endpoint-url", default=os.environ.get("FRUITS_S3_ENDPOINT"),
                   help="S3-compatible endpoint (a local server, MinIO); default: AWS")
    p.add_argument("--profile", help="AWS profile for the credentials")
    p.add_argument("--region", help="AWS region (default: the profile's, else us-east-1)")
    p.add_argument("--manifest", type=Path, help="where confirmed uploads are recorded (default ~/.fruits/)")
    p.add_argument("--retries", type=int, default=8, help="attempts per request, with backoff (default 8)")
    p.add_argument("--rows-per-object", type=int, default=5000, help="rows per S3 object (default 5000)")


def _add_vectorize_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, help="a .tflite with its model card (default: the committed fp32 model)")
    p.add_argument("--threads", type=int, default=None,
                   help="parallel workers, each decoding and running a 1-thread interpreter (default: cores + 2, "
                        "so a core stays busy while a worker waits for Python's GIL)")
    p.add_argument("--label", help="label for every photo (default: the parent folder's name)")
    p.add_argument("--client-id", default=None, help="who vectorized (default: FRUITS_CLIENT_ID or edge-<host>)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fruits-edge", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("vectorize", help="photos -> Parquet of 1280-d vectors",
                       description="Vectorize photos with LiteRT into a Parquet file of the data contract.\n\n"
                                   "example: fruits-edge vectorize ~/DCIM/fruits --out vectors.parquet",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("photos", nargs="+", help="folders (recursive) or photo files")
    p.add_argument("--out", type=Path, required=True, help="the Parquet file to write")
    _add_vectorize_options(p)

    p = sub.add_parser("upload", help="upload vectors files to S3 (idempotent, resumable)",
                       description="Upload vectors under s3://BUCKET/PREFIX/vectors/model=<sha256>/...\n\n"
                                   "example: fruits-edge upload vectors.parquet s3://fruits-data/team-a",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", type=Path, help="vectors Parquet files")
    p.add_argument("dest", help="s3://BUCKET[/PREFIX]")
    p.add_argument("--client-id", default=None, help="override the files' client id in the key")
    _add_s3_options(p)

    p = sub.add_parser("sync", help="vectorize new photos and upload their vectors",
                       description="Vectorize the photos not uploaded yet (by content) and upload them.\n\n"
                                   "example: fruits-edge sync ~/DCIM/fruits s3://fruits-data/team-a",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("photos", nargs="+", help="folders or photo files")
    p.add_argument("dest", help="s3://BUCKET[/PREFIX]")
    p.add_argument("--keep", type=Path, help="also keep the vectors file here")
    p.add_argument("--project", action="store_true",
                   help="upload k-d projections instead of 1280-d vectors, with the projection published under "
                        "PREFIX/models/ for this model (fruits-cloud publish)")
    _add_vectorize_options(p)
    _add_s3_options(p)

    p = sub.add_parser("upload-raw", help="upload the photos themselves (for the server-side fallback)",
                       description="For devices that cannot vectorize: upload photos under PREFIX/raw/.\n\n"
                                   "example: fruits-edge upload-raw ~/DCIM/fruits s3://fruits-data/team-a",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("photos", nargs="+", help="folders or photo files")
    p.add_argument("dest", help="s3://BUCKET[/PREFIX]")
    p.add_argument("--label", help="label for every photo (default: the parent folder's name)")
    p.add_argument("--client-id", default=None)
    _add_s3_options(p)

    p = sub.add_parser("identify", help="the most likely fruit in a photo, from the published reference index",
                       description="Vectorize one photo, project it with the published projection and rank the "
                                   "labels of the reference index (per-class centroids).\n\n"
                                   "example: fruits-edge identify apple.jpg --from s3://fruits-data/team-a\n"
                                   "         fruits-edge identify apple.jpg --projection p.npz --index i.npz",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("photo", type=Path)
    p.add_argument("--from", dest="source", help="s3://BUCKET[/PREFIX] where the projection and index are published")
    p.add_argument("--projection", type=Path, help="a local projection-<id>.npz (instead of --from)")
    p.add_argument("--index", type=Path, help="a local index-<id>.npz (instead of --from)")
    p.add_argument("--top", type=int, default=3)
    p.add_argument("--model", type=Path, help="the .tflite (default: the committed fp32 model)")
    p.add_argument("--endpoint-url")
    p.add_argument("--profile")
    p.add_argument("--region")

    return parser


def _s3(args):
    from edge_client.upload import Manifest, default_manifest_path, parse_s3_uri, s3_client

    bucket, root = parse_s3_uri(args.dest)
    client = s3_client(endpoint_url=args.endpoint_url, profile=args.profile, region=args.region,
                       retries=args.retries)
    return client, bucket, root, Manifest(args.manifest or default_manifest_path())


def _report(summary: Summary) -> int:
    print(f"vectorized: {summary.line()}")
    if summary.rejects:
        print(f"rejected {summary.rejected} photo(s), listed in {summary.rejects_file}:", file=sys.stderr)
        for source, reason in summary.rejects[:10]:
            print(f"  {source}: {reason}", file=sys.stderr)
        if len(summary.rejects) > 10:
            print(f"  ... and {len(summary.rejects) - 10} more", file=sys.stderr)
        return EXIT_REJECTS
    return 0


def cmd_vectorize(args) -> int:
    summary = Summary()
    photos = find_photos(args.photos, label=args.label, summary=summary)
    if not photos:
        raise UserError(f"no photos found in {', '.join(args.photos)}")
    vectorize(photos, args.out, model_path=args.model or model_path(), threads=args.threads, client_id=args.client_id,
              progress=not args.quiet, summary=summary)
    print(f"wrote {summary.ok} vectors to {args.out}")
    return _report(summary)


def cmd_upload(args) -> int:
    from edge_client.upload import upload_vectors

    client, bucket, root, manifest = _s3(args)
    try:
        s = upload_vectors(client, args.files, bucket, root, manifest=manifest, client_id=args.client_id,
                           rows_per_object=args.rows_per_object, endpoint_url=args.endpoint_url,
                           progress=not args.quiet)
    finally:
        manifest.close()
    print(f"uploaded: {s.line()}")
    return 0


def cmd_sync(args) -> int:
    from featurizer.runtime import Model
    from edge_client.upload import upload_vectors, check_bucket

    client, bucket, root, manifest = _s3(args)
    try:
        check_bucket(client, bucket, args.endpoint_url)  # before spending minutes on inference
        model = Model(args.model or model_path(), threads=1)
        summary = Summary()
        photos = find_photos(args.photos, label=args.label, summary=summary)
        if not photos:
            raise UserError(f"no photos found in {', '.join(args.photos)}")
        projection = None
        if args.project:
            from edge_client.project import fetch_projection

            projection = fetch_projection(client, bucket, root, model.sha256, endpoint_url=args.endpoint_url)
            print(f"projection {projection.projection_id}: {projection.k} components (run {projection.run})")
        kind = f"projected:{projection.projection_id}" if projection else "vectors"
        known = manifest.uploaded_ids(bucket, root, kind, model.sha256)
        with tempfile.TemporaryDirectory() as tmp:
            out = args.keep or Path(tmp) / "vectors.parquet"
            vectorize(photos, out, model_path=model.path, threads=args.threads,
                      client_id=args.client_id or default_client_id(), skip_ids=known,
                      progress=not args.quiet, summary=summary,
                      rejects_path=(Path.cwd() / "sync.rejects.csv") if not args.keep else None)
            code = _report(summary)
            if summary.ok:
                if projection is not None:
                    from edge_client.project import project_file

                    projected = Path(tmp) / "projected.parquet"
                    project_file(out, projection, projected)
                    out = projected
                s = upload_vectors(client, [out], bucket, root, manifest=manifest,
                                   rows_per_object=args.rows_per_object, endpoint_url=args.endpoint_url,
                                   progress=not args.quiet,
                                   projection_id=projection.projection_id if projection else None)
                print(f"uploaded: {s.line()}")
            else:
                print("uploaded: nothing new")
    finally:
        manifest.close()
    return code


def cmd_upload_raw(args) -> int:
    from edge_client.upload import upload_raw

    photos = find_photos(args.photos, label=args.label)
    if not photos:
        raise UserError(f"no photos found in {', '.join(args.photos)}")
    client, bucket, root, manifest = _s3(args)
    try:
        s = upload_raw(client, photos, bucket, root, manifest=manifest,
                       client_id=args.client_id or default_client_id(), endpoint_url=args.endpoint_url,
                       progress=not args.quiet)
    finally:
        manifest.close()
    print(f"uploaded photos: {s.line()}")
    return 0


def cmd_identify(args) -> int:
    from edge_client.project import fetch_index, fetch_projection, identify, load_local
    from featurizer.runtime import Model

    model = Model(args.model or model_path(), threads=1)
    if args.source:
        from edge_client.upload import parse_s3_uri, s3_client

        bucket, root = parse_s3_uri(args.source)
        client = s3_client(endpoint_url=args.endpoint_url, profile=args.profile, region=args.region)
        projection = fetch_projection(client, bucket, root, model.sha256, endpoint_url=args.endpoint_url)
        index = fetch_index(client, bucket, root, projection.projection_id, endpoint_url=args.endpoint_url)
    elif args.projection and args.index:
        projection, index = load_local(args.projection, "projection"), load_local(args.index, "index")
    else:
        raise UserError("give --from s3://BUCKET/PREFIX, or both --projection and --index")
    for label, score in identify(args.photo, model, projection, index, top=args.top):
        print(f"{score:6.3f}  {label}")
    return 0


COMMANDS = {"vectorize": cmd_vectorize, "upload": cmd_upload, "sync": cmd_sync, "upload-raw": cmd_upload_raw,
            "identify": cmd_identify}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return COMMANDS[args.command](args)
    except (UserError, ContractError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("Error: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
