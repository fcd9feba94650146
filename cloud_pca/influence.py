"""Who moves the components, and how far: anonymous identities whose rows pull a component out of all proportion to
their number are set aside before the fit is written (kept in the bucket, listed, reversible by the operator).

Why (docs/trust.md): one anonymous identity sent 3 vectors shifted 5 standard deviations in the columns where
photos vary least. Standardized, such a row weighs thousands of ordinary rows along one direction: it became a top-10
component, ``publish`` held the whole refresh (the turn rule), and since the rows stayed counted, the next days' honest
refreshes were held too. A rule that holds everything is a lever for anyone; so the rows that make such a component
are found and set aside, and the rest is published.

How, for the anonymous rows of a run (per identity, their energy along each of the fit's first
:data:`COMPONENTS` components, from the run's own projection of them):

1. **Concentration**: an identity *concentrates* on component ``j`` when its share of ``j``'s energy (the sum of its
   rows' squared values along ``j`` over all rows' sum, ``(n - 1) lambda_j``) is at least :data:`CONCENTRATION` times
   its share of the rows. Honest rows carry a component about in proportion to their number.
2. **Candidates**: the concentrating identities of a component, together, when they carry :data:`GROUP_SHARE` of its
   energy with at most :data:`MAX_SHARE` of the rows (one identity with 3 rows, or 60 identities of 1 row each: a
   Sybil group no identity explains alone); and one identity whose share along some direction of the first
   components (its rows may pull several at once) is :data:`CONCENTRATION` times what as many honest rows reach by
   chance.
3. **Influence, measured**: the fit without the candidates' rows (their statistics taken out of the total); a group
   moved the fit when its direction lies more than :data:`MOVED_DEG` degrees outside the span of the first
   :data:`SPAN` components of that fit (compared in one standardized space), and of it, the identities whose rows lie
   :data:`RESIDUAL` times farther off that span than its own rows do (a robust fit: honest photos that happened to
   concentrate lie where the others do) are set aside: the run's model, projections and statistics (and the
   incremental state's) are the fit without them, each is listed with its rows, its share of the component, the angle
   and its distance, and its later uploads are held back until the operator restores it (``fruits-cloud
   contributions --restore DEVICE``; its rows count again from the next ``--full`` run).

Trusted devices (the operator's keys) are never set aside here: what they send is the operator's growth (a new fruit
from a laptop publishes). A turn that no group explains is left to ``publish`` (:mod:`cloud_pca.turn`), which holds it
only when the trusted rows do not carry it either.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

COMPONENTS = 10          # the fit's components looked at (the turn's)
SPAN = 32                # ... against the span of this many components of the fit without the group
CONCENTRATION = 5.0      # an identity's share of a component's energy, over its share of the rows
GROUP_SHARE = 0.2        # the concentrating identities may explain a component when they carry this share of it
MAX_SHARE = 0.1          # ... with at most this share of the rows ("a handful", not the data)
MOVED_DEG = 20.0         # ... and when, without them, the component lies this far outside the rest's first SPAN
RESIDUAL = 4.0           # ... an identity of the group is set aside when its rows lie this many times farther off the
                         # rest's first SPAN components than the rest's own rows do on average
REASON = ("set aside: its identity pulls a component of the fit out of all proportion to its rows (influence); "
          "restore it with fruits-cloud contributions --restore")


@dataclass
class Screened:
    """What :func:`screen` found: the identities set aside (``owners``) and the record the run keeps."""

    owners: set = field(default_factory=set)
    record: dict = field(default_factory=dict)
    weighed: set = field(default_factory=set)     # the identities whose rows were read (``group_rows``' argument)


def energies(owners: list, anonymous: np.ndarray, y: np.ndarray, m: int) -> dict[str, list]:
    """{owner: [rows, their second moments along the first ``m`` components (m x m: the energy along any direction
    of that subspace)]} of the anonymous rows of ``y`` (their projected values)."""
    out: dict[str, list] = {}
    if not len(owners):
        return out
    y = np.asarray(y, np.float64)[:, :m]
    for i in np.flatnonzero(anonymous):
        d = out.setdefault(owners[i], [0, np.zeros((m, m))])
        d[0] += 1
        d[1] += np.outer(y[i], y[i])
    return out


def add_energies(a: dict, b: dict) -> dict:
    for o, (r, e) in b.items():
        d = a.setdefault(o, [0, np.zeros_like(e)])
        d[0] += r
        d[1] = d[1] + e
    return a


def groups(per_owner: dict, variances: np.ndarray, n: int) -> list[dict]:
    """For each component a group of anonymous identities may explain (rules 1-2): every identity concentrating on it,
    when together they carry :data:`GROUP_SHARE` of its energy with at most :data:`MAX_SHARE` of the rows:
    {component, owners, share_of_energy, share_of_rows}."""
    out = []
    m = len(variances)
    for j, lam in enumerate(variances):
        total = max((n - 1) * float(lam), 1e-12)
        members = sorted((o for o, (rows, g) in per_owner.items() if rows and float(g[j, j]) / total
                          >= CONCENTRATION * rows / n), key=lambda o: (-float(per_owner[o][1][j, j]), o))
        share = sum(float(per_owner[o][1][j, j]) for o in members) / total
        rows_in = sum(per_owner[o][0] for o in members)
        if members and share >= GROUP_SHARE and rows_in <= MAX_SHARE * n:
            direction = np.zeros(m)
            direction[j] = 1.0
            out.append({"component": j + 1, "owners": members, "share_of_energy": round(min(share, 1.0), 4),
                        "share_of_rows": round(rows_in / n, 4), "direction": direction})
    # One identity along any direction of the subspace (its rows may pull several components at once): its largest
    # share of the energy along a direction, against what as many honest rows reach by chance ((1 + sqrt(m/r))^2 times
    # their share of the rows, the top of a Wishart spectrum).
    scale = 1.0 / np.sqrt(np.maximum((n - 1) * np.asarray(variances, np.float64), 1e-12))
    for o, (rows, g) in sorted(per_owner.items()):
        if not rows or rows > MAX_SHARE * n:
            continue
        values, vectors = np.linalg.eigh(scale[:, None] * g * scale[None, :])
        share = float(values[-1])
        if share >= GROUP_SHARE and share * n / rows >= CONCENTRATION * (1 + np.sqrt(m / rows)) ** 2:
            d = vectors[:, -1] * scale
            out.append({"component": int(np.argmax(np.abs(vectors[:, -1]))) + 1, "owners": [o],
                        "share_of_energy": round(min(share, 1.0), 4), "share_of_rows": round(rows / n, 4),
                        "direction": d / np.linalg.norm(d)})
    return out


def outside(v: np.ndarray, scale_v: np.ndarray, basis: np.ndarray, scale_b: np.ndarray) -> float:
    """The angle (degrees) between the component ``v`` (a unit vector in the space standardized by ``scale_v``) and
    the span of ``basis``'s rows (standardized by ``scale_b``), compared in ``basis``'s space: the same linear function
    of a photo's features, ``v . (x - mean) / scale_v``, written for the other standardization."""
    from contract.vectors import safe_inverse

    w = np.asarray(v, np.float64) * np.asarray(scale_b, np.float64) * safe_inverse(np.asarray(scale_v, np.float64))
    norm = np.linalg.norm(w)
    if norm == 0:
        return 0.0
    inside = np.linalg.norm(np.asarray(basis, np.float64) @ (w / norm))
    return float(np.degrees(np.arccos(np.clip(inside, -1.0, 1.0))))


def residual_ratio(rest, x: np.ndarray) -> np.ndarray:
    """Each row's squared distance off ``rest``'s first components (its standardized space), over what a row of
    ``rest``'s own data has on average there (the variance its other components hold)."""
    from contract.vectors import safe_inverse

    z = (np.asarray(x, np.float64) - rest.mean_) * safe_inverse(rest.scale_)
    y = z @ rest.components_.T
    off = (z * z).sum(axis=1) - (y * y).sum(axis=1)
    spectrum = np.asarray(rest.spectrum_, np.float64)
    total = float(rest.explained_variance_[0] / spectrum[0]) if spectrum[0] > 0 else float((rest.scale_ > 0).sum())
    expected = max(total * float(spectrum[rest.n_components_:].sum()), 1e-12)
    return off / expected


def screen(model, sums, per_owner: dict, group_rows) -> tuple[Screened, object]:
    """Rules 1-3 on a fit (``model`` from ``sums``) and its anonymous rows' energies (``per_owner``, from
    :func:`energies` with ``model``'s first components). ``group_rows(owners)`` gives (each row's owner, the rows'
    features) of those identities' fitted rows. Returns (what was found, the statistics without the identities set
    aside: ``sums`` when none is)."""
    from cloud_pca.pca import FruitsPCAModel, GramSums

    m = min(COMPONENTS, model.n_components_)
    n = int(model.n_samples_)
    found = groups(per_owner, np.asarray(model.explained_variance_[:m]), n)
    record = {"rules": {"components": m, "span": SPAN, "concentration": CONCENTRATION, "group_share": GROUP_SHARE,
                        "max_share": MAX_SHARE, "moved_deg": MOVED_DEG, "residual": RESIDUAL},
              "anonymous_identities": len(per_owner), "groups": [], "set_aside": []}
    if not found:
        return Screened(set(), record), sums
    owners = sorted({o for g in found for o in g["owners"]})
    who, x = group_rows(set(owners))
    who = np.asarray(who, dtype=object)
    without = sums - GramSums.of(x)
    rest = FruitsPCAModel.from_moments(without.moments(), k=min(SPAN, without.d))
    ratio = residual_ratio(rest, x)
    off = {o: float(ratio[who == o].mean()) for o in owners}
    confirmed: set = set()
    for g in found:
        angle = outside(g.pop("direction") @ model.components_[:m], model.scale_, rest.components_, rest.scale_)
        outliers = [o for o in g["owners"] if off[o] >= RESIDUAL]
        g.update({"angle_without_deg": round(angle, 2), "outliers": len(outliers),
                  "set_aside": bool(angle > MOVED_DEG and outliers)})
        record["groups"].append({k: (v[:50] if k == "owners" else v) for k, v in g.items()})
        if g["set_aside"]:
            confirmed |= set(outliers)
    if not confirmed:
        return Screened(set(), record, set(owners)), sums
    if confirmed != set(owners):
        without = sums - GramSums.of(x[np.isin(who, sorted(confirmed))])
    for o in sorted(confirmed, key=lambda o: (-per_owner[o][0], o)):
        rows, e = per_owner[o]
        g = next(g for g in found if g["set_aside"] and o in g["owners"])
        j = g["component"] - 1
        record["set_aside"].append({
            "device": o, "rows": int(rows), "share_of_rows": round(rows / n, 5), "component": j + 1,
            "share_of_component": round(float(e[j, j]) / max((n - 1) * float(model.explained_variance_[j]), 1e-12), 4),
            "angle_without_deg": g["angle_without_deg"], "off_the_rest": round(off[o], 2), "reason": REASON})
    return Screened(confirmed, record, set(owners)), without
