"""Web client benchmark: the page's vectorizing rate against `fruits-edge vectorize` on the same photos and cores
(ratio in the same run), the model's start-up cold (first visit) and cached (second visit), and the bytes the
browser downloads on each visit. The page runs in each browser engine asked for (Debian's Chromium, Firefox ESR,
WebKitGTK; headless, driven as a person would: web/device.py), one after another on the same photos.

    ./run bench web [--engine chromium|firefox|webkit|all] [--thumbs 1000] [--phone 60] [--repeats 3]
    ./run bench web --first-visit [--engine all] [--mbit 10] [--rtt-ms 40]

Photos: 100x100 synthetic thumbnails (the Fruits-360 size; decoding is cheap, the model is most of the time)
and 12-megapixel synthetic phone photos (JPEG draft decode at 1/8 dominates). Each repeat runs the Python edge,
then the page on the same folder; the table gives medians and the ratio is the median of the repeats' ratios.
"one photo" is what a person waits for: pick one 12 MP photo -> its answer shown, in a warm page.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import Recorder, timed
from edge_client.vectorize import default_workers, find_photos, vectorize
from models import model_path
from models.synthetic import generate


def phone_photos(root: Path, n: int) -> Path:
    import numpy as np

    from models.synthetic import CLASSES, phone_photo

    rng = np.random.RandomState(5)
    for i in range(n):
        fruit = CLASSES[i % len(CLASSES)]
        d = root / fruit.name
        d.mkdir(parents=True, exist_ok=True)
        phone_photo(rng, fruit).save(d / f"{i}_12mp.jpg", quality=90)
    return root


def edge_rate(folder: Path, out: Path) -> float:
    summary = vectorize(find_photos([folder]), out, model_path=model_path(), progress=False)
    return summary.images_per_s


def python_steps(folder: Path, n: int = 100) -> dict:
    """The Python edge's per-photo steps on one core (median ms): decode + preprocess, and one-thread invoke."""
    from featurizer.preprocess import preprocess
    from featurizer.runtime import Model

    model = Model(model_path(), threads=1)
    files = sorted(folder.rglob("*.jpg"))[:n]
    pre, inv = [], []
    for f in files:
        data = f.read_bytes()
        t = time.perf_counter()
        x = preprocess(data, model.input_size)[0]
        t1 = time.perf_counter()
        model.features(x)
        inv.append((time.perf_counter() - t1) * 1000)
        pre.append((t1 - t) * 1000)
    return {"decode_preprocess": statistics.median(pre), "invoke": statistics.median(inv)}


def visit(server, engine: str, profile: Path, folders: dict[str, Path], repeats: int, edge: dict[str, list[float]],
          tmp: Path, rec: Recorder, which: str) -> dict:
    """One visit of the page (a browser of ``engine`` with ``profile``): start-up, bytes, and vectorizing rates."""
    from web.device import browser

    server.reset_counts()
    with browser(engine, profile) as b:
        phone = b.open(server.url)
        start = phone.evaluate("() => fruits.timings")
        wasm = phone.evaluate("() => fruits.engine && fruits.engine.wasm")
        downloaded = sum(server.bytes_sent.values())
        heavy = {k: v for k, v in server.bytes_sent.items() if k.startswith(("model/", "wasm/")) or k.endswith(".js")}
        out = {"engine": engine, "version": b.version, "wasm": wasm, "visit": which,
               "model_start_s": start["modelStartMs"] / 1000, "model_fetch_s": start["modelFetchMs"] / 1000,
               "workers": start["workers"], "bytes_downloaded": downloaded, "requests": sum(server.requests.values()),
               "model_wasm_js_bytes": sum(heavy.values())}
        rec.add(measure="visit", **out)
        print(f"{engine} {b.version} ({wasm} Wasm), {which} visit: model ready in {out['model_start_s']:.2f} s (fetch {out['model_fetch_s']:.2f} s), "
              f"{downloaded / 1e6:.2f} MB downloaded in {out['requests']} requests "
              f"(model + Wasm + code {out['model_wasm_js_bytes'] / 1e6:.2f} MB)", flush=True)
        if which != "first":
            return out
        for kind, folder in folders.items():
            ref = python_steps(folder)
            rec.add(measure="python_steps", engine=engine, kind=kind, **{f"python_ms_{k}": v for k, v in ref.items()})
            print(f"  {kind}: Python edge per photo on one core (median ms): decode+preprocess "
                  f"{ref['decode_preprocess']:.1f}, invoke {ref['invoke']:.1f}", flush=True)
            for r in range(repeats):
                e, _ = timed(f"edge {kind} {r}", lambda: edge_rate(folder, tmp / f"edge-{kind}-{r}.parquet"))
                edge[kind].append(e)
                summary = phone.pick(sorted(folder.rglob("*.jpg")))
                page_rate = summary["imagesPerS"]
                steps = summary["msPerPhoto"]
                rec.add(measure="rate", engine=engine, kind=kind, repeat=r, images=summary["rows"], edge_images_per_s=e,
                        page_images_per_s=page_rate, ratio=page_rate / e,
                        **{f"page_ms_{k}": v for k, v in steps.items()})
                print(f"  {kind} repeat {r}: edge {e:.1f} img/s, page {page_rate:.1f} img/s, ratio {page_rate / e:.2f}; "
                      f"page per photo (median ms, in a worker): " + ", ".join(f"{k} {v:.1f}" for k, v in steps.items()),
                      flush=True)
        one = sorted(folders["phone_12mp"].rglob("*.jpg"))[0] if "phone_12mp" in folders else None
        if one is not None:
            waits = [phone.pick([one])["seconds"] for _ in range(5)]
            out["one_photo_s"] = statistics.median(waits)
            rec.add(measure="one_photo", engine=engine, seconds=out["one_photo_s"], photo="12 MP JPEG")
            print(f"  one 12 MP photo, pick -> answer shown: median {out['one_photo_s']:.2f} s of 5", flush=True)
    return out


def first_visit(engines: list[str], tmp: Path, rec: Recorder, mbit: float, rtt_ms: float) -> None:
    """Per engine, an empty profile on an emulated mobile link (the app's server paces every answer: `mbit` Mbit/s
    shared by every connection, `rtt_ms` per request, so the page's workers see it too): from opening the page to the
    first answer for one 12 MP photo, the bytes per file and the time per step; then a second visit in the same
    browser (a new page load) and its bytes."""
    from web.build import build
    from web.device import browser
    from web.server import WebServer

    photo = sorted(phone_photos(tmp / "phone", 1).rglob("*.jpg"))[0]
    dist = build()
    print(f"\nfirst visit on a {mbit:g} Mbit/s link, {rtt_ms:g} ms a request; one 12 MP photo "
          f"({photo.stat().st_size / 1e6:.2f} MB)")
    for engine in engines:
        with WebServer(dist, {}, link=(mbit * 1e6, rtt_ms / 1000)) as server, browser(engine, tmp / f"fv-{engine}") as b:
            t0 = time.perf_counter()
            phone = b.open(server.url, timeout_s=300)
            ready_s = time.perf_counter() - t0
            summary = phone.pick([photo])
            answer_s = time.perf_counter() - t0
            timings = phone.evaluate("() => fruits.timings")
            files = dict(server.bytes_sent)
            first_bytes = sum(files.values())
            wasm = phone.evaluate("() => fruits.engine && fruits.engine.wasm")
            phone.close()
            server.reset_counts()
            second = b.open(server.url, timeout_s=300)
            second_bytes = sum(server.bytes_sent.values())
            second_requests = dict(server.requests)
            second.close()
        steps = summary["msPerPhoto"]
        row = {"engine": engine, "version": b.version, "wasm": wasm, "mbit": mbit, "rtt_ms": rtt_ms,
               "ready_s": round(ready_s, 2), "first_answer_s": round(answer_s, 2), "first_visit_bytes": first_bytes,
               "second_visit_bytes": second_bytes, "files": files, "second_visit_requests": second_requests,
               "model_fetch_ms": timings.get("modelFetchMs"), "model_sha256_ms": timings.get("modelShaMs"),
               "wasm_fetch_ms": timings.get("wasmFetchMs"), "wasm_compile_ms": timings.get("wasmCompileMs"),
               "workers_start_ms": timings.get("workersMs"), **{f"photo_{k}_ms": v for k, v in steps.items()}}
        rec.add(measure="first_visit", **row)
        print(f"{engine} {b.version} ({wasm}): ready {ready_s:.2f} s, first answer {answer_s:.2f} s after opening; "
              f"first visit {first_bytes / 1e6:.2f} MB, second visit {second_bytes / 1e3:.1f} kB "
              f"({', '.join(f'{k} {v}' for k, v in sorted(second_requests.items()))})")
        print("  steps (ms): " + ", ".join(f"{k} {row[k]:.0f}" for k in ("model_fetch_ms", "model_sha256_ms",
                                                                         "wasm_fetch_ms", "wasm_compile_ms",
                                                                         "workers_start_ms") if row[k] is not None)
              + "; the photo: " + ", ".join(f"{k} {v:.1f}" for k, v in steps.items()))
        print("  bytes: " + ", ".join(f"{k} {v / 1e3:.0f} kB" for k, v in sorted(files.items(), key=lambda kv: -kv[1])
                                       if v > 1000))


def parity(engines: list[str], photos: Path | None, tmp: Path, rec: Recorder) -> None:
    """Per engine: every shared test photo (web/parity.py) and every photo under ``photos`` picked in the page, its
    vector against the Python edge's: bit-identical or not, cosine, and whether the page flagged it."""
    import numpy as np

    from contract import read_vectors
    from contract.vectors import cosine
    from web.build import build
    from web.device import browser
    from web.parity import parity_photos
    from web.server import WebServer

    sets = {"shared test photos": parity_photos(tmp / "shared")}
    if photos is not None:
        sets[f"photos under {photos}"] = photos
    dist = build()
    print("\n| engine | photos | Wasm | exact decode | bit-identical | min cos (not flagged) | flagged | min cos (flagged) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, folder in sets.items():
        files = [p.path for p in find_photos([folder])]
        vectorize(find_photos([folder]), tmp / "parity.parquet", model_path=model_path(), progress=False)
        python = {r["image_id"]: np.asarray(r["features"], np.float32) for r in read_vectors(tmp / "parity.parquet").to_pylist()}
        for engine in engines:
            with WebServer(dist, {}) as server, browser(engine) as b:
                phone = b.open(server.url)
                phone.pick(files)
                rows = phone.vectors()
                wasm = phone.evaluate("() => fruits.engine.wasm")
            same = sum(bool(np.array_equal(r["features"], python[r["imageId"]])) for r in rows)
            plain = [cosine(r["features"], python[r["imageId"]]) for r in rows if not r["approximate"]]
            flagged = [cosine(r["features"], python[r["imageId"]]) for r in rows if r["approximate"]]
            rec.add(measure="parity", engine=engine, version=b.version, photos=name, n=len(rows), wasm=wasm,
                    exact=len(plain), bit_identical=same, min_cos=min(plain, default=None), flagged=len(flagged),
                    min_cos_flagged=min(flagged, default=None),
                    reasons=sorted({r["approximate"] for r in rows if r["approximate"]}))
            print(f"| {engine} {b.version} | {name} ({len(rows)}) | {wasm} | {len(plain)} | {same} | "
                  f"{min(plain, default=float('nan')):.10f} | {len(flagged)} | {min(flagged, default=float('nan')):.6f} |",
                  flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--thumbs", type=int, default=1000, help="100x100 thumbnails")
    ap.add_argument("--phone", type=int, default=60, help="12 MP phone photos")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--engine", action="append", choices=("chromium", "firefox", "webkit", "all"),
                    help="browser engine(s) to run the page in (repeatable; default chromium; all: the three)")
    ap.add_argument("--parity", action="store_true", help="instead of speed: each engine's vectors against the Python "
                                                           "edge's on the shared test photos (and --photos)")
    ap.add_argument("--photos", type=Path, help="with --parity: a folder of real photos to compare on too")
    ap.add_argument("--first-visit", action="store_true", help="instead of speed: an empty profile's first visit on an "
                                                                "emulated mobile link, to the first answer, and the "
                                                                "second visit's bytes")
    ap.add_argument("--mbit", type=float, default=10.0, help="with --first-visit: the link's Mbit/s (default 10)")
    ap.add_argument("--rtt-ms", type=float, default=40.0, help="with --first-visit: ms per request (default 40)")
    ap.add_argument("--out", type=Path, default=Path("out/benchmarks"))
    ap.add_argument("--smoke", action="store_true", help="10 thumbnails, 1 phone photo, one repeat: that it runs "
                                                            "and writes its results")
    args = ap.parse_args()
    if args.smoke:
        args.thumbs, args.phone, args.repeats = 10, 1, 1
    from web.build import build
    from web.device import ENGINES, missing
    from web.server import WebServer

    engines = list(ENGINES) if "all" in (args.engine or []) else list(dict.fromkeys(args.engine or ["chromium"]))
    for engine in engines:
        if missing(engine):
            print(f"Error: {engine}: {missing(engine)}", file=sys.stderr)
            return 1
    rec = Recorder("web-parity" if args.parity else "web-first-visit" if args.first_visit else "web", args.out)
    with tempfile.TemporaryDirectory(prefix="bench-web-") as t:
        tmp = Path(t)
        if args.parity:
            parity(engines, args.photos, tmp, rec)
            print(f"written: {rec.save()}")
            return 0
        if args.first_visit:
            first_visit(engines, tmp, rec, args.mbit, args.rtt_ms)
            print(f"written: {rec.save()}")
            return 0
        folders = {"thumbnail_100px": generate(tmp / "thumbs", per_class=max(1, args.thumbs // 10), seed=21)}
        if args.phone:
            folders["phone_12mp"] = phone_photos(tmp / "phone", args.phone)
        dist = build()
        counts = ", ".join(f"{k} {len(list(f.rglob('*.jpg')))}" for k, f in folders.items())
        print(f"photos: {counts}; Python edge with {default_workers()} workers; the page with one worker per core",
              flush=True)
        visits = {}
        with WebServer(dist, {}) as server:
            for engine in engines:
                edge = {k: [] for k in folders}
                profile = tmp / f"profile-{engine}"
                visits[engine] = [visit(server, engine, profile, folders, args.repeats, edge, tmp, rec, which)
                                  for which in ("first", "second")]
    print()
    print("| engine | photos | edge (img/s) | page (img/s) | page / edge | repeats |")
    print("| --- | --- | --- | --- | --- | --- |")
    for engine in engines:
        for kind in folders:
            rows = [r for r in rec.rows if r.get("measure") == "rate" and r["kind"] == kind and r["engine"] == engine]
            ratios = [r["ratio"] for r in rows]
            print(f"| {engine} | {kind} | {statistics.median(r['edge_images_per_s'] for r in rows):.1f} | "
                  f"{statistics.median(r['page_images_per_s'] for r in rows):.1f} | **{statistics.median(ratios):.2f}** | "
                  f"{' '.join(f'{x:.2f}' for x in ratios)} |")
    print()
    for engine, (first, second) in visits.items():
        print(f"{engine}: model start-up first visit {first['model_start_s']:.2f} s, second visit "
              f"{second['model_start_s']:.2f} s; bytes downloaded: first visit {first['bytes_downloaded'] / 1e6:.2f} MB, "
              f"second visit {second['bytes_downloaded'] / 1e3:.1f} kB (model + Wasm + code: "
              f"{second['model_wasm_js_bytes']} B)" + (f"; one 12 MP photo {first['one_photo_s']:.2f} s"
                                                       if "one_photo_s" in first else ""))
    print(f"written: {rec.save()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
