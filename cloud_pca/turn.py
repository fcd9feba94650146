"""How far a publish would turn what phones project onto, and whether it is held for the operator.

Every refresh refits the components on everything counted; the anonymous tier's rows are in that fit. What bounds
their influence is stated and checked at ``publish`` (docs/trust.md):

- **The turn measured**: the largest angle between one of the new top-:data:`TURN_COMPONENTS` components and the
  subspace the projection in force publishes (its k components, 32 in the chains): how far the new components leave
  what phones project onto. Measured on real photos (1,332 honest rows): 60 honest photos 2.4°, the 56 photos of a
  new fruit 4.2°, the low-variance shift of issue 42 (60 rows) 59.5°, its slow drip (20 rows) 37°. The classic
  largest principal angle between the two top-10 subspaces is reported too (4.2°, 9.5°, 87°, 69° for the same), but
  it jumps when the 10th and 11th components swap (a small eigengap), which honest refreshes of small data do.
- **A bound on what the anonymous rows could do** (Davis–Kahan, in Yu, Wang and Samworth's form): with the anonymous
  rows a share ``w`` of the fit and ``m`` their mean squared length in the fit's standardized space,
  ``||E|| <= w (m + lambda_1) / (1 - w)`` bounds how far they move the correlation matrix, and
  ``sin(angle) <= 2 ||E|| / (lambda_k - lambda_{k+1})``. Reported beside the turn; on real photos the eigengap is small
  beside the anonymous tier's weight and the bound says little (often 90°): stated as it is.
- **Who turned it**: the new subspace's direction farthest from the published one, the part of it the published
  span does not hold, and each identity's share of the rows' energy along that part (the rows that pulled the
  components out of what phones project onto), the largest first. Measured on real photos with 100 shifted rows
  from 100 identities: the honest identities pull at most 0.34 times their share of the rows, the shifted ones at
  least 5.6 times (along the whole component, not only its new part: 0.83 and 1.02, too close to tell apart).
- **Explained by the operator's devices**: a turn beyond ``hold_deg`` that the trusted rows carry (their share of the
  energy along it at least their share of the rows: a new fruit from a laptop, the operator's own growth) is
  published and said so. Anonymous identities whose rows pull a component out of all proportion were set aside by
  the run itself (:mod:`cloud_pca.influence`), so a handful of rows no longer turns it.
- **Held**: a turn beyond ``hold_deg`` (default :data:`HOLD_TURN_DEG`) that no group of identities explains and the
  trusted rows do not carry is not published: the projection in force stays, ``publish.json`` in the run folder says
  why and lists every identity that pulled along it out of proportion to its rows, the report, ``fruits-cloud
  contributions`` and the EMR Serverless status show it, and ``fruits-cloud publish`` (and the refresh chains) exit
  with :data:`contract.errors.EXIT_HELD`; ``fruits-cloud publish --accept-turn`` publishes it once the operator has
  looked.
"""
from __future__ import annotations

import numpy as np

TURN_COMPONENTS = 10


def _largest_angle(a: np.ndarray, b: np.ndarray) -> float:
    from cloud_pca.pca import largest_angle

    return largest_angle(a, b)
HOLD_TURN_DEG = 20.0
DRIVERS = 10            # identities listed as turning the components, the largest shares first ...
OUT_OF_PROPORTION = 2.0  # ... and every identity whose share of the turn is this many times its share of the rows
MAX_LISTED = 200


def direction(new: np.ndarray, published: np.ndarray) -> tuple[float, np.ndarray]:
    """How far the new components leave what is published: (the largest angle in degrees between one of ``new``'s rows
    and the span of ``published``'s rows, the coefficients in ``new``'s basis of that component). Both orthonormal
    rows; ``published`` holds every published component (32), so two new components that only swap places near the
    10th (a small eigengap: honest refreshes do it) do not count as a turn, a direction the published ones do not
    hold at all does."""
    new = np.asarray(new, np.float64)
    inside = np.linalg.norm(new @ np.asarray(published, np.float64).T, axis=1)
    angles = np.degrees(np.arccos(np.clip(inside, -1.0, 1.0)))
    j = int(np.argmax(angles))
    a = np.zeros(len(new))
    a[j] = 1.0
    return float(angles[j]), a


def outward(new: np.ndarray, published: np.ndarray, j: int) -> np.ndarray:
    """The part of new component ``j`` that the published span does not hold, as coefficients on ``new``'s rows (all
    the run's components): a row's projections times these give its length along that part. Honest rows vary mostly
    inside what is published, so their energy along it is small; the rows that made the component leave it carry it."""
    new = np.asarray(new, np.float64)
    published = np.asarray(published, np.float64)
    b = -(new @ published.T) @ (published @ new[j])
    b[j] += 1.0
    return b


def _along(model, published, mm: int) -> tuple[float, np.ndarray]:
    """(the turn in degrees, the coefficients on the run's components of the direction rows are weighed along)."""
    angle, a = direction(model.components_[:mm], published)
    return angle, outward(model.components_, published, int(np.argmax(a)))


def dk_bound(model, anonymous_share: float, anonymous_sq: float, m: int) -> float | None:
    """The Davis–Kahan bound (degrees) on the turn of the top-``m`` subspace the anonymous rows could cause; None where
    the model does not tell its spectrum."""
    ratio = np.asarray(getattr(model, "spectrum_", []), np.float64)
    if len(ratio) <= m or ratio[0] <= 0:
        return None
    if not 0 <= anonymous_share < 1:
        return 90.0
    total = float(model.explained_variance_[0] / ratio[0])      # the trace: what the ratios are shares of
    lam = ratio * total
    gap = lam[m - 1] - lam[m]
    if gap <= 0:
        return 90.0
    e = anonymous_share * (anonymous_sq + lam[0]) / (1.0 - anonymous_share)
    return float(np.degrees(np.arcsin(min(1.0, 2.0 * e / gap))))


def measure(model, published, y: np.ndarray, owners: list, anonymous: np.ndarray, residual: np.ndarray | None,
            *, hold_deg: float = HOLD_TURN_DEG) -> dict:
    """The turn record of a publish (see the module): ``y`` every projected row (the run's k values), ``owners`` their
    devices, ``anonymous`` their tier, ``residual`` their squared distance off the k-d subspace (``|z|^2 - |y|^2``)."""
    m = min(TURN_COMPONENTS, model.n_components_)
    n = len(owners)
    share = float(anonymous.mean()) if n else 0.0
    sq = (np.asarray(residual, np.float64) + (y * y).sum(axis=1)) if residual is not None and n else np.zeros(n)
    mean_sq = float(sq[anonymous].mean()) if anonymous.any() else 0.0
    out = {"components": m, "hold_deg": hold_deg, "rows": n, "anonymous_share": round(share, 4),
           "dk_bound_deg": None, "turn_deg": None, "held": False, "drivers": []}
    bound = dk_bound(model, share, mean_sq, m)
    out["dk_bound_deg"] = None if bound is None else round(bound, 2)
    if published is None:
        out["why"] = "nothing published for this model yet: no turn to measure"
        return out
    pub = np.asarray(published.components, np.float64).T     # (k, d): the published projection's components
    mm = min(m, pub.shape[0])
    angle, b = _along(model, pub, mm)
    out["turn_deg"] = round(angle, 3)
    out["subspace_angle_deg"] = round(_largest_angle(model.components_[:mm], pub[:mm]), 3)
    out["components"] = mm
    if n:
        y = np.asarray(y, np.float64)
        kk = min(y.shape[1], len(b))
        score = (y[:, :kk] @ b[:kk]) ** 2
        total = float(score.sum()) or 1.0
        by: dict = {}
        for o, s, anon in zip(owners, score, anonymous):
            d = by.setdefault(o, [0.0, 0, bool(anon)])
            d[0] += float(s)
            d[1] += 1
        out["drivers"] = drivers(by, total, n)
        out["trusted"] = trusted_share(by, total, n)
    return _hold(out, angle, mm, hold_deg)


def trusted_share(by: dict, total: float, n: int) -> dict:
    """The trusted rows' share of the energy along the turn, and of the rows."""
    energy = sum(e for e, _, anon in by.values() if not anon)
    rows = sum(r for _, r, anon in by.values() if not anon)
    return {"share_of_turn": round(energy / total, 4) if total else 0.0, "share_of_rows": round(rows / max(1, n), 4)}


def _hold(out: dict, angle: float, m: int, hold_deg: float) -> dict:
    """The record held, and why, when the turn passes ``hold_deg`` and the trusted rows do not carry it."""
    t = out.get("trusted") or {}
    if angle > hold_deg and t.get("share_of_rows", 0) > 0 and t["share_of_turn"] >= t["share_of_rows"]:
        out["explained_by"] = "trusted devices"
        out["why"] = (f"one of the top-{m} components lies {angle:.1f} degrees outside what the projection in force "
                      f"publishes, and the operator's devices carry it ({t['share_of_turn']:.0%} of the energy along "
                      f"it, {t['share_of_rows']:.0%} of the rows): published")
        return out
    if angle > hold_deg:
        out["held"] = True
        out["why"] = (f"one of the top-{m} components would lie {angle:.1f} degrees outside what the projection in force "
                      f"publishes (more than {hold_deg:g}): held for the operator, who publishes it with --accept-turn "
                      f"once the devices listed have been looked at")
    return out


def drivers(by: dict, total: float, n: int, limit: int = DRIVERS) -> list[dict]:
    """The identities pulling the components along the turn: {device: [energy, rows, anonymous]} -> the ``limit``
    largest shares of the energy and every identity whose share is :data:`OUT_OF_PROPORTION` times its share of the
    rows (at most :data:`MAX_LISTED`), the largest first, with their share of the rows."""
    ranked = sorted(by.items(), key=lambda kv: (-kv[1][0], str(kv[0])))
    listed = [kv for i, kv in enumerate(ranked)
              if i < limit or kv[1][0] / total >= OUT_OF_PROPORTION * kv[1][1] / max(1, n)][:MAX_LISTED]
    return [{"device": o or "(operator files)", "anonymous": bool(a), "rows": int(r),
             "share_of_rows": round(r / max(1, n), 4), "share_of_turn": round(e / total, 4)}
            for o, (e, r, a) in listed]


def measure_in_spark(spark, model, published, proj, *, hold_deg: float = HOLD_TURN_DEG) -> dict:
    """:func:`measure` on projections too large for the driver (a DataFrame of image_id, client_id, source, pca,
    residual): per row in Python tasks, per device summed in Spark, a few numbers per device to the driver."""
    import pyarrow as pa
    from pyspark.sql import functions as F

    from cloud_pca.votes import owner_of
    from contract.layout import is_anonymous

    m = min(TURN_COMPONENTS, model.n_components_)
    a = None
    out_angle = None
    subspace = None
    if published is not None:
        pub = np.asarray(published.components, np.float64).T
        m = min(m, pub.shape[0])
        out_angle, a = _along(model, pub, m)
        subspace = _largest_angle(model.components_[:m], pub[:m])

    def per_row(batches):
        for batch in batches:
            d = batch.to_pydict()
            n = len(d["pca"])
            full = [np.asarray(v, np.float64) for v in d["pca"]]
            kk = min(len(full[0]), len(a)) if n and a is not None else 0
            y = np.array([v[:kk] for v in full], np.float64).reshape(n, kk) if n else np.zeros((0, kk))
            sq = np.array([float(r or 0.0) + float(v @ v) for r, v in zip(d["residual"], full)])
            owners = [owner_of(c, s) for c, s in zip(d["client_id"], d["source"])]
            yield pa.RecordBatch.from_pydict({
                "owner": owners, "anonymous": [is_anonymous(o) or is_anonymous(c) for o, c in zip(owners, d["client_id"])],
                "score": ((y @ a[:kk]) ** 2).tolist() if a is not None else [0.0] * n, "sq": sq.tolist()})

    cols = proj.select("client_id", "source", "pca", F.col("residual") if "residual" in proj.columns
                       else F.lit(None).cast("double").alias("residual"))
    rows = cols.mapInArrow(per_row, "owner string, anonymous boolean, score double, sq double").groupBy("owner").agg(
        F.sum("score").alias("score"), F.count(F.lit(1)).alias("rows"), F.max("anonymous").alias("anonymous"),
        F.sum(F.when(F.col("anonymous"), F.col("sq"))).alias("sq")).collect()
    n = sum(int(r["rows"]) for r in rows)
    n_anon = sum(int(r["rows"]) for r in rows if r["anonymous"])
    share = n_anon / n if n else 0.0
    mean_sq = sum(float(r["sq"] or 0.0) for r in rows if r["anonymous"]) / n_anon if n_anon else 0.0
    bound = dk_bound(model, share, mean_sq, m)
    out = {"components": m, "hold_deg": hold_deg, "rows": n, "anonymous_share": round(share, 4),
           "dk_bound_deg": None if bound is None else round(bound, 2), "turn_deg": None, "held": False, "drivers": []}
    if published is None:
        out["why"] = "nothing published for this model yet: no turn to measure"
        return out
    out["turn_deg"] = round(out_angle, 3)
    out["subspace_angle_deg"] = round(subspace, 3)
    total = sum(float(r["score"]) for r in rows) or 1.0
    by = {r["owner"]: [float(r["score"]), int(r["rows"]), bool(r["anonymous"])] for r in rows}
    out["drivers"] = drivers(by, total, n)
    out["trusted"] = trusted_share(by, total, n)
    return _hold(out, out_angle, m, hold_deg)
