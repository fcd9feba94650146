"""Who may move the shared model, and how much: the job's trust model for contributions (docs/trust.md).

Anyone with the web app's address gets an anonymous Cognito identity that may write vectors, as many identities as
they like. The rules, applied on every path (pca full and incremental, in Spark tasks or in the driver):

1. **What the model can produce, and nothing else**: features outside [0, 6] (ReLU6 then average pooling) are
   refused by the contract itself (:func:`contract.vectors.conform_table`), on the devices before an upload too.
2. **Identity is where an object is**: a row whose ``client_id`` names another device than the ``client=`` folder
   it lies in is refused (``conform_table(owner=...)``). Tiers follow the folder: a Cognito identity id is
   *anonymous*; every other device folder was written with the operator's keys (a laptop uploader) and, with the
   job's own outputs and the operator's files, is *trusted*. Featurized photos keep their uploader's tier (from the
   ``client=`` folder of their raw key, in ``source``).
3. **Screening** (anonymous rows): a vector farther from the model card's ``feature_center`` than
   :data:`SCREEN_FACTOR` times the card's ``feature_radius`` (the export's calibration photos' largest distance) is
   not what a photo gives, and is quarantined. Measured with the fp32 model (radius 27.6): 800 synthetic photos at
   most 27.3, the web client's 30 test photos (noise, alpha, 16-bit, a portrait) at most 26.1, 63 real photos at
   most 35.3; uniform random vectors in [0, 6] at 110 and more. The screen is the model's, never the last fit's:
   screening against the published projection (tried first) quarantined what the fit had not seen yet -- a new
   fruit's photos lay at a median 32x (at most 293x) the fit's 99th-percentile residual, the web test photos at
   3,000x against a 6-fruit fit -- so a new fruit could never be learned.
4. **Bounded influence of one identity**: an anonymous device's objects count at most :data:`DAILY_ROWS` rows per
   day of upload (the store's clock); later objects of that day are held back (listed, never read).
5. **Bounded influence of many identities** (a Sybil attacker with free identities): anonymous vectors that are
   near-copies of each other (the same 32-bit half of a 64-bit SimHash signature: within about a degree) count at
   most :data:`NEAR_COPY_KEEP` times, whatever identities sent them; the rest are quarantined as a dense cluster.
   The signature's random planes are keyed by a secret of the deployment's state (``sig_key`` in the state's
   ``current.json``, which only the job may read), so rows cannot be crafted to share a half; and whatever a bucket
   holds, each row is compared with at most :data:`BUCKET_KEPT` kept signatures at once (numpy), so the rule's cost
   is linear in the rows even where the key is known (before: quadratic, 119 s for 4,000 rows built from the public
   seed to share one half).
6. **Duplicates and conflicts never trust what a device says**: copies of one ``image_id`` are ranked by tier, then
   by when the store received them, then by key, never by the device-supplied ``vectorized_at``. Copies that agree
   (cosine >= :data:`AGREE_COS`) are duplicates; a copy that disagrees is a *conflict*: it is refused, listed with
   both sides, and the ranked-first copy is fitted. The incremental state applies the same rule: a counted copy
   that loses to a new one is taken out of the statistics (read again from its object) and the new one counted.

Everything set aside is counted and listed (summary ``contributions``, the report, ``fruits-cloud contributions``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)
SIG_BITS = 64
SIG_SEED = 20261202             # the planes of a state from before keys (and of tests); a keyed state's come from its key
BUCKET_KEPT = 256               # kept signatures a bucket's later rows are compared with (the rule's cost stays linear)
AGREE_COS = 0.99                # two copies of one photo agree: an engine that decodes it differently (flagged) gives
                                # cosine >= 0.9937 with the int8 model (0.9994 with fp32); different photos far less
SIG_AGREE_BITS, SIG_CONFLICT_BITS = 2, 12   # Hamming distances sure enough to skip the exact cosine
NEAR_COPY_KEEP = 3              # anonymous near-copies counted per dense cluster
NEAR_BITS = 4                   # signatures this close are near-copies (about 11 degrees around the card's center)
SCREEN_FACTOR = 2.0             # x the card's feature_radius
DAILY_ROWS = 5000               # rows an anonymous device's objects may add per day of upload
TRUSTED, ANONYMOUS = 0, 1       # tier ranks: lower wins a conflict


_PLANES: dict[tuple, np.ndarray] = {}


def new_key() -> str:
    """A fresh secret for a state's signature planes (hex)."""
    import secrets

    return secrets.token_hex(32)


def _seed(key: str | None) -> int:
    if key is None:
        return SIG_SEED
    import hashlib

    return int.from_bytes(hashlib.sha256(b"fruits simhash planes " + key.encode()).digest()[:8], "little")


def signatures(x: np.ndarray, center: np.ndarray | None = None, key: str | None = None) -> np.ndarray:
    """64-bit SimHash signatures (int64) of the rows of ``x`` around ``center`` (the model card's mean feature vector):
    the signs of 64 random projections of ``x - center``, the planes drawn from ``key`` (the state's secret; None: the
    public seed). Two vectors at angle t (seen from the center) differ in about 64 t / pi bits: near-copies share most
    halves, different photos almost none. Without the center, every photo's vector points along the model's one strong
    mean direction and different photos look alike."""
    d = x.shape[1] if x.ndim == 2 else 0
    seed = _seed(key)
    if (d, seed) not in _PLANES:
        _PLANES[(d, seed)] = np.random.default_rng(seed).standard_normal((d, SIG_BITS)).astype(np.float64)
    if not len(x):
        return np.zeros(0, np.int64)
    z = np.asarray(x, np.float64)
    if center is not None and len(center) == d:
        z = z - center
    bits = (z @ _PLANES[(d, seed)]) > 0
    return np.packbits(bits, axis=1, bitorder="little").view("<i8").ravel().astype(np.int64)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bits that differ between signatures (broadcast)."""
    return np.bitwise_count(np.bitwise_xor(np.asarray(a, np.int64), np.asarray(b, np.int64)).view(np.uint64)) \
        .astype(np.int64)


def bands(sig: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two 32-bit halves of signatures: near-copies share one (a copy within a degree keeps a half whole with
    probability ~0.87 each), unrelated vectors almost never (2^-32)."""
    s = np.asarray(sig, np.int64).view(np.uint64)
    return (s & np.uint64(0xFFFFFFFF)).astype(np.int64), (s >> np.uint64(32)).astype(np.int64)


def load_center(card: dict | None, model_sha256: str | None = None) -> np.ndarray | None:
    """The card's ``feature_center``; None when it has none (signatures are then taken around the origin, and
    near-copies are found less well: said in the log)."""
    if card and card.get("feature_center"):
        return np.asarray(card["feature_center"], np.float64)
    if model_sha256:
        log.warning("no model card with a feature_center for %s: near-copy signatures around the origin", model_sha256)
    return None


# ------------------------------------------------------------------------------------------- screening
@dataclass
class Screen:
    """What a photo can give: a vector farther from the model card's ``feature_center`` than ``limit`` is not one."""

    card: str
    center: np.ndarray
    limit: float

    def residuals(self, x: np.ndarray) -> np.ndarray:
        """Distances from the center (what the scan records per row, and :func:`decide` compares with ``limit``)."""
        if not len(x):
            return np.zeros(0)
        return np.linalg.norm(np.asarray(x, np.float64) - self.center, axis=1)

    def params(self) -> tuple:
        return self.center, self.limit


def load_screen(card: dict | None, factor: float = SCREEN_FACTOR) -> Screen | None:
    """The plausibility screen of the card (``factor`` x its ``feature_radius``), or None for a card without one."""
    if not card or not card.get("feature_center") or not float(card.get("feature_radius") or 0) > 0:
        return None
    return Screen(str(card.get("name", card.get("sha256", "")[:12])), np.asarray(card["feature_center"], np.float64),
                  factor * float(card["feature_radius"]))


# ------------------------------------------------------------------------------- per-device daily cap
def hold_back(files: list, counted: list[dict] | None = None, cap: int = DAILY_ROWS, *,
              set_aside: dict | None = None) -> tuple[list, list[dict]]:
    """``files`` (InputFiles) without the objects an anonymous device uploaded beyond ``cap`` rows on one day (the
    store's clock), earliest first, and without any object of a device ``set_aside`` for its influence
    (:mod:`cloud_pca.influence`); the objects it counted before on that day (``counted``: state objects) count
    first. Returns (files kept, [{file, device, day, rows, reason}] held back)."""
    import datetime as dt

    def day(ms: int) -> str:
        return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%d")

    used: dict[tuple, int] = {}
    for o in counted or []:
        if o.get("anonymous") and o.get("owner"):
            key = (o["owner"], day(o.get("mtime", 0)))
            used[key] = used.get(key, 0) + int(o.get("rows") or 0)
    kept, held = [], []
    for f in sorted(files, key=lambda f: (f.mtime, f.path)):
        if f.reason is None and f.owner and f.owner in (set_aside or {}):
            held.append({"file": f.path, "device": f.owner, "day": day(f.mtime), "rows": int(f.rows or 0),
                         "reason": f"held back: device {f.owner} was set aside for its influence on the components "
                                   f"(run {set_aside[f.owner].get('run')}); fruits-cloud contributions --restore "
                                   f"{f.owner} counts it again from the next --full run"})
            continue
        if f.reason is None and f.anonymous and f.owner:
            key = (f.owner, day(f.mtime))
            rows = int(f.rows or 0)
            if used.get(key, 0) + rows > cap and used.get(key, 0) > 0 or rows > cap:
                held.append({"file": f.path, "device": f.owner, "day": key[1], "rows": rows,
                             "reason": f"held back: device {f.owner} already sent {used.get(key, 0)} rows on "
                                       f"{key[1]} (at most {cap} a day from one anonymous device)"})
                continue
            used[key] = used.get(key, 0) + rows
        kept.append(f)
    order = {f.path: i for i, f in enumerate(files)}
    return sorted(kept, key=lambda f: order[f.path]), held


# ------------------------------------------------------------------------------------------ decisions
@dataclass
class Decision:
    """What :func:`decide` made of the candidate rows: a reason per refused row id, the duplicates (agreeing copies
    left out), the counted copies a new row replaces, the conflicts (listed for the operator)."""

    refused: dict = field(default_factory=dict)          # rid -> reason (screened, near-copy, conflict)
    duplicates: set = field(default_factory=set)         # rids: agreeing copies of a row fitted now
    already: set = field(default_factory=set)            # rids: agreeing copies of a row counted before
    replaced: list = field(default_factory=list)         # [(counted path, counted row)] out of the statistics
    replaced_ids: list = field(default_factory=list)     # their image ids (the state drops them)
    conflicts: list = field(default_factory=list)        # [{image_id, kept, refused, cos}]
    screened: int = 0
    near_copies: int = 0


def decide(rows, files: list, *, counted=None, screen: Screen | None = None, read_features=None,
           keep: int = NEAR_COPY_KEEP) -> Decision:
    """Decisions on the valid rows of a run (``rows``: a pyarrow Table with rid, image_id, file, row, sig, screen,
    owner): screening, conflicts and duplicates, near-copies (the module's rules 3, 5, 6). ``counted`` (incremental):
    rows counted before, with image_id, sig, anonymous, mtime, path, row. ``read_features([(path, row)])`` gives the
    exact vectors where signatures leave the agreement in doubt."""
    out = Decision()
    n = rows.num_rows
    col = {name: rows.column(name).to_numpy(zero_copy_only=False) for name in rows.column_names}
    file_idx = col["file"].astype(np.int64)
    anon = np.array([bool(files[i].anonymous) for i in file_idx], dtype=bool) if n else np.zeros(0, bool)
    if "owner" in col:   # featurized rows: their uploader's tier
        from contract.layout import is_anonymous

        anon |= np.array([is_anonymous(o) for o in col["owner"]], dtype=bool) if n else np.zeros(0, bool)
    mtime = np.array([files[i].mtime for i in file_idx], dtype=np.int64) if n else np.zeros(0, np.int64)
    path = np.array([files[i].path for i in file_idx], dtype=object) if n else np.zeros(0, object)
    rid, ids, rownum, sig = col["rid"].astype(np.int64), col["image_id"].astype(object), col["row"], col["sig"]
    alive = np.ones(n, dtype=bool)

    # 3. screening
    if screen is not None and n:
        resid = col["screen"].astype(np.float64)
        bad = anon & (resid > screen.limit)
        for i in np.flatnonzero(bad):
            out.refused[int(rid[i])] = (f"quarantined: not what a photo gives (distance {resid[i]:.4g} from the "
                                        f"model's feature center > {screen.limit:.4g}, {SCREEN_FACTOR:g}x its "
                                        f"calibration photos' largest)")
        out.screened = int(bad.sum())
        alive &= ~bad

    # 5. near-copies among anonymous vectors (these rows and those counted before), whatever identity sent them:
    # counted per distinct image id (copies of one photo are duplicates, decided below), the earliest kept. Before the
    # duplicates are ranked, so a cluster that claims honest photos' ids cannot win them.
    if counted is not None and counted.num_rows:
        c = {name: counted.column(name).to_numpy(zero_copy_only=False) for name in counted.column_names}
    else:
        c = None
    pool = np.flatnonzero(alive & anon)
    if len(pool):
        lo, hi = bands(sig[pool])
        buckets: dict = {}     # (half, value) -> {image id: [(when, new row index or None, signature)]}
        if c is not None:
            for j in np.flatnonzero(c["anonymous"].astype(bool) & ~c.get("legacy", np.zeros(len(c["sig"]), bool))):
                when = (int(c["mtime"][j]), str(c["path"][j]), int(c["row"][j]))
                a, b = bands(np.array([c["sig"][j]], np.int64))
                for key in (("lo", int(a[0])), ("hi", int(b[0]))):
                    buckets.setdefault(key, {}).setdefault(c["image_id"][j], []).append((when, None, int(c["sig"][j])))
        for k, i in enumerate(pool):
            when = (int(mtime[i]), str(path[i]), int(rownum[i]))
            for key in (("lo", int(lo[k])), ("hi", int(hi[k]))):
                buckets.setdefault(key, {}).setdefault(ids[i], []).append((when, i, int(sig[i])))
        # A bucket (one shared signature half) only proposes candidates; near-copies are those within NEAR_BITS of
        # the whole signature (about 11 degrees), so photos of one fruit that happen to share a half are not flagged.
        # Each photo is compared with the photos kept before it, at most BUCKET_KEPT of them (numpy): the first
        # BUCKET_KEPT kept one at a time, all later ones at once against those; linear in the bucket's rows.
        over = set()
        for entries in buckets.values():
            if len(entries) <= keep:
                continue
            ordered = sorted(entries.values(), key=lambda copies: min(e[0] for e in copies))
            firsts = np.fromiter((copies[0][2] for copies in ordered), np.int64, len(ordered))
            kept = np.zeros(min(len(ordered), BUCKET_KEPT), np.int64)
            n_kept, at = 0, 0
            while at < len(ordered) and n_kept < BUCKET_KEPT:
                if int((hamming(kept[:n_kept], firsts[at]) <= NEAR_BITS).sum()) >= keep:
                    over.update(i for _, i, _ in ordered[at] if i is not None)
                else:
                    kept[n_kept] = firsts[at]
                    n_kept += 1
                at += 1
            for start in range(at, len(ordered), 4096):   # a bucket this crowded: the rest against the kept ones
                near = (hamming(firsts[start:start + 4096, None], kept[None, :n_kept]) <= NEAR_BITS).sum(axis=1) >= keep
                for j in np.flatnonzero(near):
                    over.update(i for _, i, _ in ordered[start + j] if i is not None)
        for i in sorted(over):
            out.refused[int(rid[i])] = (f"quarantined: a near-copy of other anonymous vectors (a dense cluster; the "
                                        f"first {keep} photos counted)")
            alive[i] = False
        out.near_copies = len(over)

    # 6. duplicates and conflicts: new rows and counted copies of the same image id, ranked
    members: dict[str, list] = {}
    for i in np.flatnonzero(alive):
        members.setdefault(ids[i], []).append(("new", i))
    if c is not None:
        for j in range(counted.num_rows):
            if c["image_id"][j] in members:
                members[c["image_id"][j]].append(("counted", j))

    def rank(m):
        kind, i = m
        if kind == "new":
            return (ANONYMOUS if anon[i] else TRUSTED, int(mtime[i]), str(path[i]), int(rownum[i]))
        return (ANONYMOUS if c["anonymous"][i] else TRUSTED, int(c["mtime"][i]), str(c["path"][i]), int(c["row"][i]))

    def where(m):
        kind, i = m
        return (str(path[i]), int(rownum[i])) if kind == "new" else (str(c["path"][i]), int(c["row"][i]))

    def signature(m):
        kind, i = m
        return int(sig[i]) if kind == "new" else int(c["sig"][i])

    doubtful, groups = [], []
    for image, group in members.items():
        if len(group) < 2:
            continue
        group.sort(key=rank)
        groups.append((image, group))
        for m in group[1:]:
            bits = int(hamming(np.array([signature(group[0])]), np.array([signature(m)]))[0])
            if SIG_AGREE_BITS < bits < SIG_CONFLICT_BITS:
                doubtful += [where(group[0]), where(m)]
    exact = {}
    if doubtful and read_features is not None:
        vectors = read_features(sorted(set(doubtful)))
        exact = {k: np.asarray(v, np.float64) for k, v in vectors.items()}

    def legacy(m) -> bool:   # a row counted by a state from before signatures: as before, it agrees
        return m[0] == "counted" and "legacy" in c and bool(c["legacy"][m[1]])

    def agree(a, b) -> tuple[bool, float | None]:
        if legacy(a) or legacy(b):
            return True, None
        bits = int(hamming(np.array([signature(a)]), np.array([signature(b)]))[0])
        if bits <= SIG_AGREE_BITS:
            return True, None
        if bits >= SIG_CONFLICT_BITS or where(a) not in exact or where(b) not in exact:
            return False, float(np.cos(np.pi * bits / SIG_BITS))
        x, y = exact[where(a)], exact[where(b)]
        cos = float(x @ y / max(np.linalg.norm(x) * np.linalg.norm(y), 1e-300))
        return cos >= AGREE_COS, cos

    for image, group in groups:
        winner = group[0]
        for m in group[1:]:
            ok, cos = agree(winner, m)
            kind, i = m
            if ok:
                if kind == "new":
                    (out.already if winner[0] == "counted" else out.duplicates).add(int(rid[i]))
                elif winner[0] == "new":   # a counted copy agrees with a new winner: the new row is counted already
                    out.already.add(int(rid[winner[1]]))
                continue
            why = ("kept the copy from a trusted device" if rank(winner)[0] < rank(m)[0]
                   else "kept the copy the store received first")
            conflict = {"image_id": image, "kept": where(winner)[0], "refused": where(m)[0],
                        "cos": None if cos is None else round(cos, 4), "why": why}
            out.conflicts.append(conflict)
            if kind == "new":
                out.refused[int(rid[i])] = (f"conflict: image {image[:12]}… has another vector in {where(winner)[0]} "
                                            f"(cos {cos:.3f}); {why}")
            else:   # a counted copy loses to a new one: out of the statistics, the new one in
                out.replaced.append(where(m))
                out.replaced_ids.append(image)
    for r in out.refused:
        alive[np.flatnonzero(rid == r)] = False
    for r in out.duplicates | out.already:
        alive[np.flatnonzero(rid == r)] = False

    return out
