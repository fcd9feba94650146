"""What ``publish`` fits for the devices to identify a fruit: per-label prototypes in a whitened cosine space, and
"unknown" / "not sure" thresholds calibrated on rows held out by film (:class:`contract.projection.ReferenceIndex`).

Chosen by measurement on real Fruits-360 photos (``./run bench identify``; docs/benchmarks.md has the table). On the same
32 components, against a nearest centroid per label (what was published before) and 1-NN among all rows:

- **cosine, not Euclidean**: with thresholds that refuse the same share of held-out known photos, a cosine
  distance to the nearest reference refused ~0.85 of the photos of never-sent fruits, a Euclidean one ~0.6;
- **whitened by the labels' pooled within-label spread** (shrunk 10% toward round): a photo's distance counts the
  directions that separate labels, not those along which photos of one fruit vary (precision 0.994 vs 0.989);
- **prototypes, not every row**: 32 per label (spherical k-means of the label's rows, at most 2,048 sampled rows
  per label, so each label counts alike) answer as 1-NN among all rows does, and what a phone downloads stays
  bounded (at most 4,096 prototypes: 512 kB at k=32);
- **thresholds from held-out rows, never fitted ones**: rows are split into 4 folds by *film* (the photo's folder,
  the name before its first number and that number // 40: neighbouring frames of one film, or a burst of one
  phone, stay on one side); each fold's rows are identified by prototypes fitted without it, and the thresholds
  are set on those answers: the "not sure" ratio so that 1% of right answers become "not sure", the "unknown"
  distance so that 5% of held-out known photos are refused in all (:data:`REFUSAL`). Calibrating on the fitted
  rows (1.5 x their 99th percentile, as before) refused almost nothing: 94% of never-sent fruits got a name.

All of it runs in Spark where the run is large (the sample per label by a hash of the image id; moments,
prototypes and the held-out answers per label and per batch in Python tasks; the driver receives k x k moments per
label and fold, the prototypes and two distances per sampled row) and in the driver with the same functions where
the run's projections are one task's worth.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import numpy as np

from contract.projection import ReferenceIndex, unit_rows

FRAME_RUN = 40                 # frames of one film within this many numbers stay on one side of the split
FOLDS = 4
PROTOTYPES_PER_LABEL = 32
MAX_PROTOTYPES = 4096          # what a phone downloads: at most this many k-d float32 vectors
SAMPLE_PER_LABEL = 2048        # rows per label the prototypes and the calibration see (class-balanced)
REFUSAL = 0.05                 # stated false-refusal rate on held-out photos of known fruits (unknown + not sure)
NOT_SURE_SHARE = 0.01          # of the held-out right answers, this share becomes "not sure: A or B"
SHRINK = 0.1                   # the within-label spread is shrunk this much toward a round one before whitening
KMEANS_ITERATIONS = 20
MIN_CALIBRATION_ROWS = 20      # fewer held-out rows by film than this: held out by photo instead (and said so)
PER_LABEL = True               # each label its own unknown distance (label_thresholds)
THRESHOLD_PRIOR = 20           # held-out rows' worth of the one unknown distance in each label's own
CONFIDENCE_BINS = 5            # bins of a named answer's margin in the index's confidence table
MIN_CONFIDENCE_ROWS = 50       # fewer held-out named answers than this: no confidence table (no number is shown)
_DIGITS = re.compile(r"\d{1,15}")


# ------------------------------------------------------------------------------------------------ the split
def film_of(source: str | None, image_id: str, run: int = FRAME_RUN) -> str:
    """The film a photo belongs to, from its source path: its folder, the name before the first number and that
    number // ``run`` (Fruits-360's ``Apple/r_326_100.jpg`` -> ``Apple/r_#8``; a phone's ``IMG_1234.JPG`` ->
    ``IMG_#30``). A name without a number, or no source, is a film of its own.

    >>> film_of("Apple Braeburn/r_326_100.jpg", "x"), film_of("IMG_0012.JPG", "x"), film_of(None, "ab")
    ('Apple Braeburn/r_#8', 'IMG_#0', 'id:ab')
    """
    if not source:
        return f"id:{image_id}"
    path = source.replace("\\", "/")
    folder, _, name = path.rpartition("/")
    stem = name.rsplit(".", 1)[0] if "." in name else name
    m = _DIGITS.search(stem)
    if not m:
        return f"{folder}/{stem}" if folder else stem
    return f"{folder + '/' if folder else ''}{stem[:m.start()]}#{int(m.group()) // run}"


def _hash64(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("\0".join(parts).encode("utf-8", "surrogatepass")).digest()[:8], "big")


def fold_of(label: str, film: str, folds: int = FOLDS) -> int:
    """The fold of a film (by a hash of the label and film: the same on every machine and run)."""
    return _hash64(label, film) % folds


def sample_key(image_id: str) -> float:
    """A number in [0, 1) from the image id: a label's rows are sampled by keeping those below ``cap / rows``."""
    return _hash64(image_id) / 2.0**64


# ------------------------------------------------------------------------------------------------ per label
def label_moments(y: np.ndarray, fold: np.ndarray, folds: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One label's rows per fold: counts (F,), sums (F, k), sums of outer products (F, k, k)."""
    k = y.shape[1]
    n, s, ss = np.zeros(folds), np.zeros((folds, k)), np.zeros((folds, k, k))
    for f in range(folds):
        part = y[fold == f]
        n[f], s[f], ss[f] = len(part), part.sum(axis=0), part.T @ part
    return n, s, ss


def whitenings(moments: list[tuple[np.ndarray, np.ndarray, np.ndarray]], folds: int) -> np.ndarray:
    """(F + 1, k, k): the whitening of each fold's fit (every fold but that one) and, last, of all rows, from the
    labels' moments: the pooled within-label covariance, shrunk by :data:`SHRINK`, to the power -1/2."""
    k = moments[0][1].shape[1]
    out = []
    for v in range(folds + 1):
        keep = np.arange(folds) != v
        within, rows, labels = np.zeros((k, k)), 0.0, 0
        for n, s, ss in moments:
            nv = n[keep].sum()
            if nv == 0:
                continue
            sv = s[keep].sum(axis=0)
            within += ss[keep].sum(axis=0) - np.outer(sv, sv) / nv
            rows, labels = rows + nv, labels + 1
        cov = within / max(1.0, rows - labels)
        cov = (1 - SHRINK) * cov + SHRINK * max(np.trace(cov) / k, 1e-12) * np.eye(k)
        values, vectors = np.linalg.eigh((cov + cov.T) / 2)
        out.append(vectors / np.sqrt(np.clip(values, 1e-12, None)) @ vectors.T)   # symmetric: the same for any basis
    return np.stack(out)


def row_keys(image_ids) -> np.ndarray:
    """A 64-bit key per row from its image id: what :func:`spherical_kmeans` draws its start with."""
    return np.array([_hash64(i) for i in image_ids], np.uint64)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer on uint64 arrays (wrapping arithmetic): a key turned into another, evenly spread."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _uniform(keys: np.ndarray, seed: int, step: int) -> np.ndarray:
    """A number in (0, 1) per row for draw ``step``: a function of the row's key alone."""
    salt = _mix64(np.array([seed * 1_000_003 + step], np.uint64))
    return ((_mix64(keys ^ salt) >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0**53


def start_rows(u: np.ndarray, m: int, seed: int, keys: np.ndarray) -> list[int]:
    """The k-means++ start of :func:`spherical_kmeans`: ``m`` rows of ``u``, each drawn with probability
    proportional to its distance from those drawn before, as the row with the smallest ``E / distance`` (``E`` an
    exponential number from the row's key and the draw). A row that is not drawn changes no draw: leave it out and
    the same rows are drawn."""
    picks = [int(np.argmin(-np.log(_uniform(keys, seed, 0))))]
    far = 1.0 - u @ u[picks[0]]
    for step in range(1, m):
        p = np.clip(far, 0.0, None)
        e = -np.log(_uniform(keys, seed, step))
        picks.append(int(np.argmin(np.where(p > 0, e / np.where(p > 0, p, 1.0), np.inf))) if (p > 0).any()
                     else int(np.argmin(e)))
        far = np.minimum(far, 1.0 - u @ u[picks[-1]])
    return picks


def spherical_kmeans(u: np.ndarray, m: int, seed: int, keys: np.ndarray) -> np.ndarray:
    """``m`` unit vectors summing up the unit rows ``u`` (k-means on the sphere, k-means++ start, a fixed number of
    rounds); all of ``u`` when it has no more than ``m`` rows.

    The start is drawn row by row, not by position: each k-means++ draw (a row with probability proportional to its
    distance from the centers so far) is the row with the smallest ``E / distance``, ``E`` an exponential number
    from the row's own key (``keys``, from its image id) and the draw. A row more or less in the label changes a draw
    only where that row would have been drawn, so a few rows more or less leave the other prototypes where they were
    (``./run bench identify --stability 5``: 20 of 1,048 training rows left out, the chain refitted, changed 1.5% of
    the test answers with the start drawn by position from a seeded generator, 0.9% drawn by key)."""
    if len(u) <= m:
        return u.copy()
    c = u[start_rows(u, m, seed, keys)]
    for _ in range(KMEANS_ITERATIONS):
        nearest = np.argmax(u @ c.T, axis=1)
        sums = np.zeros_like(c)
        np.add.at(sums, nearest, u)
        filled = np.bincount(nearest, minlength=m) > 0
        c[filled] = unit_rows(sums[filled])
    return c


def label_prototypes(label: str, y: np.ndarray, fold: np.ndarray, whiten: np.ndarray, m: int,
                     image_ids) -> list[np.ndarray]:
    """One label's prototypes for each variant (the fit without fold v, ..., and last the fit on every row): the
    rows in that variant's identification space, summed up by :func:`spherical_kmeans` (its draws keyed by the rows'
    image ids, so the same rows give the same prototypes in any order, on every path)."""
    seed = _hash64(label) % (2**31)
    keys = row_keys(image_ids)
    out = []
    for v in range(len(whiten)):
        at = fold != v if v < len(whiten) - 1 else np.ones(len(y), bool)
        out.append(spherical_kmeans(unit_rows(y[at] @ whiten[v]), m, seed + v, keys[at]) if at.any()
                   else np.zeros((0, y.shape[1])))
    return out


def prototypes_per_label(labels: int) -> int:
    return max(1, min(PROTOTYPES_PER_LABEL, MAX_PROTOTYPES // max(1, labels)))


# ------------------------------------------------------------------------------------------------ calibration
@dataclass
class Variant:
    """The prototypes of one fit (one fold left out, or all rows), grouped by label, in that fit's space."""

    whiten: np.ndarray
    prototypes: np.ndarray
    owner: np.ndarray

    def nearest_two(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per row: the nearest label's index and distance, and the runner-up label's distance (the labels this fit
        has; ``inf`` where it has fewer than two)."""
        u = unit_rows(y @ self.whiten)
        present = np.unique(self.owner)
        starts = np.searchsorted(self.owner, present)
        d = 1.0 - np.maximum.reduceat(u @ self.prototypes.T, starts, axis=1)
        order = np.argsort(d, axis=1, kind="stable")
        rows = np.arange(len(u))
        second = d[rows, order[:, 1]] if d.shape[1] > 1 else np.full(len(u), np.inf)
        return present[order[:, 0]], d[rows, order[:, 0]], second


def held_out_answers(y: np.ndarray, label: np.ndarray, fold: np.ndarray, variants: list[Variant]
                     ) -> dict[str, np.ndarray]:
    """Each row identified by the fit that did not see its fold: nearest and runner-up distances, whether the
    nearest label is its own, and whether it can count (its label was in that fit at all)."""
    n = len(y)
    d1, d2 = np.full(n, np.nan), np.full(n, np.nan)
    right, usable = np.zeros(n, bool), np.zeros(n, bool)
    nearest = np.full(n, -1, np.int64)
    for v, variant in enumerate(variants):
        at = fold == v
        if not at.any() or not len(variant.owner):
            continue
        best, first, second = variant.nearest_two(y[at])
        d1[at], d2[at] = first, second
        nearest[at] = best
        right[at] = best == label[at]
        usable[at] = np.isin(label[at], variant.owner)
    return {"d1": d1, "d2": d2, "right": right, "usable": usable, "nearest": nearest}


def calibrate(d1: np.ndarray, d2: np.ndarray, right: np.ndarray, *, refusal: float = REFUSAL,
              not_sure: float = NOT_SURE_SHARE) -> tuple[float, float, dict]:
    """The thresholds from held-out answers: the not-sure ratio is the ``1 - not_sure`` quantile of the right
    answers' distance ratios; the unknown distance the smallest one that refuses (unknown or not sure) at most
    ``refusal`` of the rows. Returns (unknown distance, not-sure ratio, what they give on these rows)."""
    n = len(d1)
    ratio = np.where(d2 > 0, d1 / np.where(d2 > 0, d2, 1.0), 0.0)
    rho = float(np.quantile(ratio[right], 1 - not_sure, method="inverted_cdf")) if not_sure > 0 and right.any() \
        else float("inf")
    unsure = ratio > rho
    budget = int(np.floor(refusal * n + 1e-9)) - int(unsure.sum())
    candidates = np.sort(d1[~unsure])[::-1]
    if budget < 0 or not len(candidates):
        t = float(candidates[0]) if len(candidates) else 2.0
    else:
        t = float(candidates[min(budget, len(candidates) - 1)])
    t = min(max(t, 0.0), 2.0)
    unknown = d1 > t
    named = ~unknown & ~unsure
    figures = {"held_out": n, "named_right": _share(named & right, n), "wrong": _share(named & ~right, n),
               "unknown": _share(unknown, n), "not_sure": _share(~unknown & unsure, n),
               "precision": round(float((named & right).sum() / max(1, named.sum())), 4)}
    return t, (rho if np.isfinite(rho) else 1e9), figures


def _share(mask: np.ndarray, n: int) -> float:
    return round(float(mask.sum()) / max(1, n), 4)


# ------------------------------------------------------------------------------------------------ the fit
def fit_arrays(y: np.ndarray, labels: list[str], sources: list, image_ids: list[str], projection_id: str, *,
               refusal: float = REFUSAL, folds: int = FOLDS, species_of=None) -> ReferenceIndex:
    """The index from labelled rows (their first k projected values ``y``), in this process: the same functions the
    Spark path (:func:`fit`) runs per label and per batch."""
    y = np.asarray(y, np.float64)
    names = sorted(set(labels))
    at = {name: j for j, name in enumerate(names)}
    label_idx = np.array([at[x] for x in labels], np.int64)
    keep = _sampled(label_idx, image_ids, len(names))
    y, label_idx = y[keep], label_idx[keep]
    ids = [image_ids[i] for i in np.flatnonzero(keep)]
    srcs = [sources[i] for i in np.flatnonzero(keep)]
    split = "film"
    fold = np.array([fold_of(names[j], film_of(s, i), folds) for j, s, i in zip(label_idx, srcs, ids)])
    for attempt in ("film", "photo"):
        if attempt == "photo":
            split = "photo"
            fold = np.array([fold_of(names[j], f"id:{i}", folds) for j, i in zip(label_idx, ids)])
        order = np.lexsort((np.array(ids), label_idx))
        per_label = [(j, order[label_idx[order] == j]) for j in range(len(names))]
        moments = [label_moments(y[rows], fold[rows], folds) for _, rows in per_label]
        whiten = whitenings(moments, folds)
        m = prototypes_per_label(len(names))
        protos = [label_prototypes(names[j], y[rows], fold[rows], whiten, m, [ids[i] for i in rows])
                  for j, rows in per_label]
        variants = [_variant(whiten[v], [(j, p[v]) for j, p in enumerate(protos)]) for v in range(folds + 1)]
        answers = held_out_answers(y, label_idx, fold, variants[:folds])
        if answers["usable"].sum() >= MIN_CALIBRATION_ROWS:
            break
    counts = np.bincount(label_idx, minlength=len(names))
    return _index(names, counts, variants[folds], answers, projection_id, refusal=refusal, folds=folds, split=split,
                  m=m, rows=len(labels), species_of=species_of)


def _sampled(label_idx: np.ndarray, image_ids: list[str], n_labels: int) -> np.ndarray:
    counts = np.bincount(label_idx, minlength=n_labels)
    frac = np.minimum(1.0, SAMPLE_PER_LABEL / np.maximum(counts, 1))
    return np.array([sample_key(i) < frac[j] for j, i in zip(label_idx, image_ids)], bool)


def _variant(whiten: np.ndarray, per_label: list[tuple[int, np.ndarray]]) -> Variant:
    parts = [(j, p) for j, p in per_label if len(p)]
    protos = np.concatenate([p for _, p in parts]) if parts else np.zeros((0, whiten.shape[0]))
    owner = np.concatenate([np.full(len(p), j) for j, p in parts]) if parts else np.zeros(0, np.int64)
    return Variant(whiten, protos, owner.astype(np.int64))


def label_thresholds(d1: np.ndarray, nearest: np.ndarray, right: np.ndarray, t: float, labels: int
                     ) -> np.ndarray:
    """Each label's unknown distance: the ``1 - REFUSAL`` quantile of the distances of the held-out photos it named
    right, shrunk toward the index's one distance ``t`` by :data:`THRESHOLD_PRIOR` rows (a label with few held-out rows
    keeps about ``t``). A label whose photos lie close together (frames of one film) gets a tighter threshold than one
    photographed in every light (piles in shops): a photo of a fruit never sent that lies near the former is refused,
    as far from it as its own photos never are."""
    out = np.full(labels, float(t))
    for j in range(labels):
        mine = d1[(nearest == j) & right]
        if len(mine):
            q = float(np.quantile(mine, 1 - REFUSAL, method="inverted_cdf"))
            out[j] = (len(mine) * q + THRESHOLD_PRIOR * t) / (len(mine) + THRESHOLD_PRIOR)
    return np.clip(out, 0.0, 2.0)


def confidence_table(ratio: np.ndarray, right: np.ndarray, bins: int = CONFIDENCE_BINS) -> dict | None:
    """What a named answer's margin says of it: held-out named answers in ``bins`` bins of their ratio (the nearest
    label's distance over the runner-up's; as many answers in each), each bin's share right, made non-increasing with
    the ratio (adjacent bins pooled where a wider margin did worse: a closer call is never shown as surer); None with
    fewer than :data:`MIN_CONFIDENCE_ROWS` answers."""
    ratio, right = np.asarray(ratio, np.float64), np.asarray(right, bool)
    if len(ratio) < MIN_CONFIDENCE_ROWS:
        return None
    order = np.argsort(ratio, kind="stable")
    parts = [p for p in np.array_split(order, min(bins, len(order) // 10 or 1)) if len(p)]
    blocks = [[float(ratio[p].max()), float(right[p].sum()), len(p)] for p in parts]   # upper, right, rows
    merged: list = []
    for b in blocks:                        # pool adjacent violators: shares right non-increasing with the ratio
        merged.append(b)
        while len(merged) > 1 and merged[-1][1] / merged[-1][2] > merged[-2][1] / merged[-2][2]:
            last = merged.pop()
            merged[-1] = [last[0], merged[-1][1] + last[1], merged[-1][2] + last[2]]
    return {"ratio_upper": [round(u, 6) for u, _, _ in merged], "right": [round(r / n, 4) for _, r, n in merged],
            "rows": [int(n) for _, _, n in merged]}


def _index(names, counts, final: Variant, answers: dict, projection_id: str, *, refusal: float, folds: int,
           split: str, m: int, rows: int, species_of=None) -> ReferenceIndex:
    ok = answers["usable"]
    t, rho, figures = calibrate(answers["d1"][ok], answers["d2"][ok], answers["right"][ok], refusal=refusal)
    d1, d2, right = answers["d1"][ok], answers["d2"][ok], answers["right"][ok]
    ratio = np.where(d2 > 0, d1 / np.where(d2 > 0, d2, 1.0), 0.0)
    named = (d1 <= t) & (ratio <= rho)
    calibration = {"refusal": refusal, "not_sure_share": NOT_SURE_SHARE, "folds": folds, "split": split,
                   "frame_run": FRAME_RUN, **figures, "not_calibrated": int((~ok).sum()), "rows": int(rows),
                   "prototypes_per_label": m, "sample_per_label": SAMPLE_PER_LABEL, "shrink": SHRINK,
                   "space": "cosine, whitened by the pooled within-label spread"}
    species = [(species_of(n) if species_of else None) or (n.split()[0] if n.split() else n) for n in names]
    per_label = label_thresholds(d1, answers["nearest"][ok], right, t, len(names)) if PER_LABEL else None
    if per_label is not None:
        named = (d1 <= per_label[np.clip(answers["nearest"][ok], 0, None)]) & (ratio <= rho)
    return ReferenceIndex(list(names), final.prototypes, final.owner, final.whiten, counts.astype(np.int64),
                          projection_id, t, rho, calibration, species, confidence_table(ratio[named], right[named]),
                          per_label)


def fit(spark, projections, k: int, projection_id: str, *, refusal: float = REFUSAL, folds: int = FOLDS,
        species_of=None) -> ReferenceIndex:
    """The index from a run's projections (a Spark DataFrame with image_id, label, source and pca), fitted in
    Spark: per label a sample of at most :data:`SAMPLE_PER_LABEL` rows (by a hash of the image id), its moments and
    prototypes in Python tasks (``applyInPandas`` by label), the held-out answers per batch (``mapInArrow``)."""
    import pandas as pd
    import pyarrow as pa
    from pyspark.sql import functions as F

    rows = projections.filter(F.col("label").isNotNull()).select("image_id", "label", "source",
                                                                  F.slice("pca", 1, k).alias("y"))
    counts = {r["label"]: int(r["count"]) for r in rows.groupBy("label").count().collect()}
    if not counts:
        raise ValueError("no labelled rows: nothing to identify with")
    names = sorted(counts)
    at = {name: j for j, name in enumerate(names)}
    frac = {name: min(1.0, SAMPLE_PER_LABEL / n) for name, n in counts.items()}
    total = sum(counts.values())

    def sample(batches, split: str):
        for batch in batches:
            d = batch.to_pydict()
            keep = [i for i, (lab, iid) in enumerate(zip(d["label"], d["image_id"])) if sample_key(iid) < frac[lab]]
            yield pa.RecordBatch.from_pydict({
                "label": [d["label"][i] for i in keep], "image_id": [d["image_id"][i] for i in keep],
                "fold": [fold_of(d["label"][i], film_of(d["source"][i], d["image_id"][i]) if split == "film"
                                 else f"id:{d['image_id'][i]}", folds) for i in keep],
                "y": [d["y"][i] for i in keep]}, schema=pa.schema([("label", pa.string()), ("image_id", pa.string()),
                                                                    ("fold", pa.int32()),
                                                                    ("y", pa.list_(pa.float32()))]))

    def moments_of(pdf: pd.DataFrame) -> pd.DataFrame:
        pdf = pdf.sort_values("image_id")
        n, s, ss = label_moments(np.stack(pdf["y"].to_numpy()).astype(np.float64), pdf["fold"].to_numpy(), folds)
        return pd.DataFrame({"label": [pdf["label"].iloc[0]], "n": [n.tolist()], "s": [s.ravel().tolist()],
                             "ss": [ss.ravel().tolist()]})

    for split in ("film", "photo"):
        data = rows.mapInArrow(lambda b, split=split: sample(b, split),
                               "label string, image_id string, fold int, y array<float>").persist()
        try:
            got = {r["label"]: (np.array(r["n"]), np.array(r["s"]).reshape(folds, k), np.array(r["ss"]).reshape(folds, k, k))
                   for r in data.groupBy("label").applyInPandas(
                       moments_of, "label string, n array<double>, s array<double>, ss array<double>").collect()}
            whiten = whitenings([got[name] for name in names], folds)
            m = prototypes_per_label(len(names))

            found = {(r["label"], r["variant"]): np.array(r["p"]).reshape(-1, k) for r in data.groupBy("label")
                     .applyInPandas(_prototypes_task(whiten, m), "label string, variant int, p array<double>").collect()}
            variants = [_variant(whiten[v], [(at[name], found[(name, v)]) for name in names]) for v in range(folds + 1)]
            scored = data.mapInArrow(_answers_task(variants[:folds], at, k),
                                     "d1 double, d2 double, right boolean, usable boolean, nearest long").toPandas()
        finally:
            data.unpersist()
        answers = {key: scored[key].to_numpy() for key in ("d1", "d2", "right", "usable", "nearest")}
        if answers["usable"].sum() >= MIN_CALIBRATION_ROWS:
            break
    return _index(names, np.array([counts[name] for name in names]), variants[folds], answers, projection_id,
                  refusal=refusal, folds=folds, split=split, m=m, rows=total, species_of=species_of)


def _prototypes_task(whiten: np.ndarray, m: int):
    """``applyInPandas`` over one label's sampled rows: its prototypes for every variant."""
    def prototypes_of(pdf):
        import pandas as pd

        pdf = pdf.sort_values("image_id")
        label = pdf["label"].iloc[0]
        out = label_prototypes(label, np.stack(pdf["y"].to_numpy()).astype(np.float64), pdf["fold"].to_numpy(),
                               whiten, m, pdf["image_id"].tolist())
        return pd.DataFrame({"label": [label] * len(out), "variant": list(range(len(out))),
                             "p": [p.ravel().tolist() for p in out]})
    return prototypes_of


def _answers_task(held: list[Variant], at: dict[str, int], k: int):
    """``mapInArrow`` over sampled rows: each identified by the fit that did not see its fold."""
    def answers(batches):
        import pyarrow as pa

        for batch in batches:
            d = batch.to_pydict()
            y = np.array(d["y"], np.float64).reshape(-1, k)
            a = held_out_answers(y, np.array([at[x] for x in d["label"]], np.int64), np.array(d["fold"]), held)
            yield pa.RecordBatch.from_pydict({key: a[key] for key in ("d1", "d2", "right", "usable", "nearest")})
    return answers
