"""``./run web``: build and serve the web app (the phone's client), or use it as a device from a script.

    ./run web                                   build, then serve on http://127.0.0.1:8000/ (Ctrl-C stops)
    ./run web serve --host 0.0.0.0 --https      for a phone on the LAN (self-signed certificate)
    ./run web serve --bucket B --prefix P --identity-pool REGION:UUID [--region R] [--endpoint-url URL]
    ./run web vectorize PHOTOS --out vectors.parquet    headless Chromium picks the photos in the page and
                                                        saves the Parquet file the page made
    ./run web build [--out DIR]

example: ./run web vectorize photos/ --out out/web-vectors.parquet
"""
from __future__ import annotations

import csv
import socket
import sys
import time
from pathlib import Path

from contract.errors import FruitsError, add_command, main_parser, run_cli


def _config_args(p) -> None:
    p.add_argument("--config", type=Path, help="the page's settings as JSON (bucket, prefix, region, identityPoolId, endpoint)")
    p.add_argument("--bucket")
    p.add_argument("--prefix", default="", help="dataset root in the bucket")
    p.add_argument("--identity-pool", help="Cognito identity pool id (REGION:UUID): the devices' credentials")
    p.add_argument("--region")
    p.add_argument("--endpoint-url", help="an S3-compatible endpoint (tests, the demo); real S3 needs none")
    p.add_argument("--workers", type=int, help="model workers in the page (default: the device's cores, at most 4)")
    p.add_argument("--model", type=Path, help="a .tflite with its card (default: the committed model, models.DEFAULT_MODEL)")


def build_parser():
    parser = main_parser("./run web", __doc__.split("\n\n", 1)[1].replace("``", ""))
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    b = add_command(sub, "build", help="build the app into web/dist (npm packages from package-lock.json)",
                    example="./run web build")
    b.add_argument("--out", type=Path)
    b.add_argument("--model", type=Path)
    s = add_command(sub, "serve", help="build and serve the app", example="./run web serve --host 0.0.0.0 --https")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: the LAN; default loopback)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--https", action="store_true", help="TLS with a self-signed certificate (a phone needs a secure "
                                                        "context for the offline cache and exact decoding)")
    _config_args(s)
    v = add_command(sub, "vectorize", help="vectorize photos in the page, in headless Chromium, and save its Parquet file",
                    example="./run web vectorize photos/ --out out/web-vectors.parquet")
    v.add_argument("photos", type=Path, help="a folder (labels from sub-folders, as fruits-edge) or one photo")
    v.add_argument("--out", type=Path, required=True, help="the Parquet file to write")
    v.add_argument("--label", help="label for photos without a parent folder")
    v.add_argument("--profile", type=Path, help="Chromium profile folder to keep (the page's queue and caches)")
    _config_args(v)
    return parser


def _config(args) -> dict:
    from web.server import load_config, page_config

    if args.config:
        return load_config(args.config)
    return page_config(bucket=args.bucket, prefix=args.prefix, region=args.region, identity_pool=args.identity_pool,
                       endpoint_url=args.endpoint_url, workers=args.workers)


def cmd_build(args) -> int:
    from web.build import build

    print(build(args.out, model_path=args.model, force=True))
    return 0


def _lan_addresses() -> list[str]:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))   # no packet is sent: this only picks the outgoing interface
            return [s.getsockname()[0]]
    except OSError:
        return []


def cmd_serve(args) -> int:
    from web.build import build
    from web.server import WebServer, self_signed

    config = _config(args)
    say = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    say("[web] building the app (npm packages from package-lock.json)")
    dist = build(model_path=args.model)
    tls = None
    lan = _lan_addresses() if args.host in ("0.0.0.0", "::") else []
    if args.https:
        from web.build import WEB

        tls = self_signed(WEB.parent / ".cache" / "web-tls", ["127.0.0.1", "localhost", *lan])
    try:
        server = WebServer(dist, config, host=args.host, port=args.port, tls=tls).start()
    except OSError as exc:
        raise FruitsError(f"cannot listen on {args.host}:{args.port} ({exc.strerror or exc}); try --port") from None
    scheme = "https" if tls else "http"
    print(f"serving {dist} on {server.url}")
    for ip in lan:
        print(f"on a phone on this network: {scheme}://{ip}:{server.port}/" +
              ("" if tls else "  (plain http: no offline cache, approximate decoding; add --https)"))
    if config.get("bucket"):
        print(f"contributing to s3://{config['bucket']}/{config.get('prefix', '')} with pool {config['identityPoolId']}")
    else:
        print("no bucket configured: the page vectorizes and saves files; identification needs --bucket and --identity-pool")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


def cmd_vectorize(args) -> int:
    from web.build import build
    from web.device import Chromium
    from web.server import WebServer

    if not args.photos.exists():
        raise FruitsError(f"{args.photos} does not exist")
    if args.out.suffix.lower() != ".parquet":
        raise FruitsError(f"--out {args.out}: the vectors file must end with .parquet")
    config = _config(args)
    dist = build(model_path=args.model)
    with WebServer(dist, config) as server, Chromium(args.profile) as browser:
        phone = browser.open(server.url)
        if args.photos.is_dir():
            summary = phone.pick(args.photos, folder=True, label=args.label)
        else:
            summary = phone.pick([args.photos], label=args.label)
        if summary["rows"]:
            phone.save(args.out)
        if config.get("bucket"):
            phone.wait_uploaded()
    problems = summary["rejects"] + summary["skipped"]
    rejects_path = args.out.with_name(args.out.stem + ".rejects.csv")
    if problems:
        with open(rejects_path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["source", "reason"])
            w.writerows((p["source"], p["reason"]) for p in problems)
    else:
        rejects_path.unlink(missing_ok=True)
    rate = summary["imagesPerS"]
    print(f"{summary['rows']} ok, {len(summary['rejects'])} rejected, {summary['duplicates']} duplicates in "
          f"{summary['seconds']:.1f} s ({rate:.0f} images/s, in the page)" +
          (f" -> {args.out}" if summary["rows"] else " (no file written)"))
    if problems:
        print(f"rejects and skipped files: {rejects_path}")
    return 3 if summary["rejects"] else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].startswith("--") and argv[0] not in ("--help", "-h"):
        argv = ["serve", *argv]          # `./run web` alone serves
    return run_cli(build_parser(), {"build": cmd_build, "serve": cmd_serve, "vectorize": cmd_vectorize}, argv)


if __name__ == "__main__":
    sys.exit(main())
