"""Labels are votes, not facts: which labelled rows the published index is fitted on (``publish``).

Anyone can create anonymous identities and label any photo anything ("Banana" on an apple), so an anonymous label
counts only where the system can check it, and its weight is bounded:

1. **Text** (:mod:`contract.labels`): every label made canonical; one that breaks the rules is refused with its
   reason. An anonymous label that *looks like* a label a trusted source knows and is not it (the same
   :func:`contract.labels.skeleton`: "Аррlе" in Cyrillic for "Apple") is refused.
2. **Known labels**: the labels of trusted rows (the operator's devices) and of the operator's catalog
   (``ROOT/models/catalog.json``). An anonymous label no trusted source knows is **held for the operator**
   (listed in ``publish.json``, ``fruits-cloud contributions`` and the report), never published; the operator
   accepts a new fruit by adding it to the catalog (``fruits-cloud catalog publish``), and its photos count from the
   next publish on.
3. **Checked against the trusted fit**: an index fitted on the trusted rows alone answers each anonymous row. A
   row whose label the trusted fit contradicts (it names another fruit, sure of it) *disagrees*; one it names
   *agrees*; one it is not sure of, or does not know, *leans elsewhere* when its first choice is another fruit it
   knows (and the row's label is one it knows), else is *undecided*. Only agreeing and undecided rows may count: an
   anonymous label can add photos where the trusted fit already leans its way, or teach a fruit it does not know,
   never tip a close call between two fruits it knows.
4. **Each identity earns its weight** (as Pl@ntNet weighs its users by how often their labels agree with the
   validated ones): ``agree / (agree + DISAGREE_COST * disagree + PRIOR)``. A new identity weighs nothing; one that
   labels what the trusted fit knows, rightly, earns weight slowly (:data:`PRIOR` agreements more than
   disagreements to reach 1/2: 12 right labels, not 6); each disagreement costs :data:`DISAGREE_COST` agreements.
   Only rows of identities weighing at least :data:`MIN_WEIGHT` count, and never a row that disagrees.
5. **Bounded per identity and per label**: one identity's rows counted for a label are at most
   :data:`IDENTITY_FLOOR` or :data:`IDENTITY_SHARE` of the label's trusted rows, whichever is more; the anonymous rows
   counted for a label are at most :data:`ANON_SHARE` times its trusted rows (at least :data:`ANON_FLOOR`), the
   heaviest identities first.
6. **A fruit no trusted row shows takes several identities**: its rows count only when at least
   :data:`NEW_FRUIT_IDENTITIES` identities with earned weight send it (so adding a fruit, or renaming one the trusted
   fit cannot see, takes that many identities, each with :data:`PRIOR` right labels first, docs/trust.md),
   or when the operator has accepted the label (``fruits-cloud contributions --accept-label``: then one identity with
   earned weight is enough).
7. **At most** :data:`contract.labels.MAX_LABELS` labels in an index (the most trusted rows first).

What it bounds: label swaps from any number of new identities count for nothing, and identities that earned their
weight cannot tip a close call; they can still add rows where the trusted fit already leans wrong (reinforcing its
mistakes), or label a fruit it does not know, within the per-label bound (docs/trust.md).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from contract.labels import MAX_LABELS, check_label, skeleton

PRIOR = 12.0            # the weight's prior: an identity needs PRIOR more agreements than disagreements to reach 1/2
DISAGREE_COST = 2.0     # a disagreement weighs this many agreements
MIN_WEIGHT = 0.5        # an anonymous identity's rows count from this weight on
IDENTITY_FLOOR = 10     # one identity's rows counted per label: at most this many ...
IDENTITY_SHARE = 0.25   # ... or this share of the label's trusted rows, whichever is more
NEW_FRUIT_IDENTITIES = 5   # a label no trusted row has counts only when this many identities with weight send it
ANON_SHARE = 1.0        # anonymous rows counted per label: at most this many times its trusted rows
ANON_FLOOR = 200        # ... and at least this many (a fruit only the operator's catalog knows)
MIN_TRUSTED_LABELS = 2  # the trusted fit needs this many labels (else every anonymous row is undecided)
AGREE, DISAGREE, UNDECIDED = "agree", "disagree", "undecided"
LEANS = "leans elsewhere"   # not sure, and its first choice is another fruit of the fit
# why an anonymous row does not count (the record's categories, the same on both paths)
REFUSED = "its label is refused (the label rules, or a look-alike of a known label)"
HELD = "held for the operator: a label no trusted source knows"
CONTRADICTED = "the trusted fit names another fruit"
LEANS_ELSEWHERE = "the trusted fit is not sure of it and leans to another fruit"
WEIGHTLESS = "its identity has not earned the weight to count (too few labels agreeing with the trusted fit)"
OVER_CAP = "over the anonymous rows counted for its label"
OVER_IDENTITY = "over the rows one identity may add to a label"
FEW_IDENTITIES = (f"a fruit no trusted row shows, sent by fewer than {NEW_FRUIT_IDENTITIES} identities with earned "
                  f"weight")
OVER_LABELS = "over the labels an index holds"


def owner_of(client_id: str | None, source: str | None) -> str | None:
    """The device a row came from: its ``client_id``, or for photos featurized by the job, the uploader named by the
    ``client=`` folder of its raw key (``source``)."""
    if isinstance(source, str) and source.startswith("client="):
        return source[len("client="):].split("/", 1)[0]
    return client_id


@dataclass
class Votes:
    """What :func:`weigh` decided: which rows the index is fitted on (``counted``, with canonical ``labels``), and
    the record ``publish.json`` keeps (:meth:`record`)."""

    counted: np.ndarray                      # (n,) bool
    labels: list                             # (n,) canonical label or None
    anonymous: np.ndarray                    # (n,) bool
    verdict: list                            # (n,) agree / disagree / undecided / None (trusted or not checked)
    why: list                                # (n,) why a row does not count, or None
    weights: dict = field(default_factory=dict)          # anonymous identity -> (agree, disagree, weight)
    per_label: dict = field(default_factory=dict)        # canonical label -> {...}
    held: dict = field(default_factory=dict)             # label no trusted source knows -> {rows, identities}
    refused: dict = field(default_factory=dict)          # raw label -> reason
    trusted_fit: bool = False

    def record(self, limit: int = 200) -> dict:
        """The decisions, for ``publish.json`` and ``fruits-cloud contributions`` (lists cut at ``limit``)."""
        n_anon = int(self.anonymous.sum())
        reasons: dict[str, int] = {}
        for w, a in zip(self.why, self.anonymous):
            if w is not None and a:
                reasons[w] = reasons.get(w, 0) + 1
        ranked = sorted(self.weights.items(), key=lambda kv: (-kv[1][1], kv[1][2], kv[0]))
        return {
            "rules": {"prior": PRIOR, "disagree_cost": DISAGREE_COST, "min_weight": MIN_WEIGHT,
                      "identity_floor": IDENTITY_FLOOR, "identity_share": IDENTITY_SHARE,
                      "new_fruit_identities": NEW_FRUIT_IDENTITIES, "anonymous_share": ANON_SHARE,
                      "anonymous_floor": ANON_FLOOR, "max_labels": MAX_LABELS},
            "trusted_fit": self.trusted_fit,
            "rows": int(len(self.counted)), "counted": int(self.counted.sum()),
            "anonymous_rows": n_anon, "anonymous_counted": int((self.counted & self.anonymous).sum()),
            "anonymous_not_counted": reasons,
            "identities": len(self.weights),
            "identities_with_weight": sum(1 for _, _, w in self.weights.values() if w >= MIN_WEIGHT),
            "labels": {k: v for k, v in sorted(self.per_label.items())[:limit]},
            "held_for_operator": [{"label": k, **v} for k, v in sorted(self.held.items(), key=lambda kv: -kv[1]["rows"])
                                  [:limit]],
            "held_labels": len(self.held),
            "labels_refused": [{"label": k, "reason": v} for k, v in sorted(self.refused.items())[:limit]],
            "labels_refused_count": len(self.refused),
            "disagreeing_identities": [{"device": d, "agree": a, "disagree": b, "weight": round(w, 3)}
                                       for d, (a, b, w) in ranked if b > 0][:limit],
        }


def weight(agree: int, disagree: int) -> float:
    """An identity's weight from its labels the trusted fit judged (rule 4)."""
    return agree / (agree + DISAGREE_COST * disagree + PRIOR)


def identity_cap(trusted_rows: int) -> int:
    """One identity's rows counted for a label with ``trusted_rows`` trusted rows (rule 5)."""
    return max(IDENTITY_FLOOR, int(IDENTITY_SHARE * trusted_rows))


def verdicts(index, y: np.ndarray, labels: list) -> list:
    """The trusted fit's view of each row's label: agree (it names that label), disagree (it names another, sure of
    it), leans elsewhere (not sure or unknown, its first choice another label it knows, the row's label one it knows
    too), undecided (not sure or unknown, and its first choice that label, or a label it does not know)."""
    if index is None or not len(labels):
        return [UNDECIDED] * len(labels)
    d = index.distances(np.asarray(y, np.float64))
    d = d.reshape(len(labels), -1)
    order = np.argsort(d, axis=1, kind="stable")
    first = order[:, 0]
    d1 = d[np.arange(len(d)), first]
    if d.shape[1] > 1:
        d2 = d[np.arange(len(d)), order[:, 1]]
        unsure = (d2 > 0) & (d1 / np.where(d2 > 0, d2, 1.0) > index.not_sure_ratio)
    else:
        unsure = np.zeros(len(d), bool)
    named = (d1 <= index.unknown_distance) & ~unsure
    known = set(index.labels)
    return [(AGREE if index.labels[int(f)] == lab else DISAGREE) if ok
            else UNDECIDED if index.labels[int(f)] == lab or lab not in known else LEANS
            for lab, f, ok in zip(labels, first, named)]


def weigh(y: np.ndarray, raw_labels: list, client_ids: list, sources: list, image_ids: list, *,
          catalog_labels: set | None = None, accepted: set | None = None, fit=None) -> Votes:
    """The rules of the module on labelled rows (``y``: their first k projected values). ``fit(rows, labels)``: the index
    of the given rows with these (canonical) labels (the identifier's), for the trusted fit; ``accepted``: the labels
    the operator accepted (rule 6)."""
    from contract.layout import is_anonymous

    n = len(raw_labels)
    owners = [owner_of(c, s) for c, s in zip(client_ids, sources)]
    anonymous = np.array([is_anonymous(o) or is_anonymous(c) for o, c in zip(owners, client_ids)], bool)
    labels: list = [None] * n
    why: list = [None] * n
    refused: dict = {}
    checked: dict = {}
    for i, raw in enumerate(raw_labels):
        if raw not in checked:
            checked[raw] = check_label(raw)
        canonical, problem = checked[raw]
        if problem:
            refused[str(raw)[:100]] = problem
            why[i] = REFUSED
        labels[i] = canonical
    trusted_labels = {lab for lab, a in zip(labels, anonymous) if lab is not None and not a}
    known = trusted_labels | set(catalog_labels or ())
    looks = {skeleton(k): k for k in sorted(known)}
    held: dict = {}
    for i in np.flatnonzero(anonymous):
        lab = labels[i]
        if lab is None or lab in known:
            continue
        twin = looks.get(skeleton(lab))
        if twin is not None:
            refused[lab] = f"looks like the known label {twin!r}"
            why[i] = REFUSED
        else:
            h = held.setdefault(lab, {"rows": 0, "identities": set()})
            h["rows"] += 1
            h["identities"].add(owners[i])
            why[i] = HELD
        labels[i] = None
    # the trusted fit, and what it says of each anonymous row with a known label
    trusted_rows = np.flatnonzero(~anonymous & np.array([lab is not None for lab in labels], bool))
    index = None
    if len({labels[i] for i in trusted_rows}) >= MIN_TRUSTED_LABELS and fit is not None:
        index = fit(trusted_rows, labels)
    checkable = [i for i in np.flatnonzero(anonymous) if labels[i] is not None]
    verdict: list = [None] * n
    for i, v in zip(checkable, verdicts(index, y[checkable] if checkable else y[:0],
                                         [labels[i] for i in checkable])):
        verdict[i] = v
    # An identity's weight: its labels the trusted fit could judge (labels it has). A disagreement on a fruit it has
    # never seen (one only the catalog knows) does not count against the identity: the fit names the nearest fruit it
    # knows, sure of it, for a plum now and then; the row itself does not count.
    in_fit = set(index.labels) if index is not None else set()
    weights: dict = {}
    for i in checkable:
        a, b, _ = weights.get(owners[i], (0, 0, 0.0))
        weights[owners[i]] = (a + (verdict[i] == AGREE), b + (verdict[i] == DISAGREE and labels[i] in in_fit), 0.0)
    weights = {o: (a, b, weight(a, b)) for o, (a, b, _) in weights.items()}
    counted = np.array([lab is not None for lab in labels], bool) & ~anonymous
    candidates: dict[str, list[int]] = {}
    for i in checkable:
        if verdict[i] == DISAGREE:
            why[i] = CONTRADICTED
        elif verdict[i] == LEANS:
            why[i] = LEANS_ELSEWHERE
        elif weights[owners[i]][2] < MIN_WEIGHT:
            why[i] = WEIGHTLESS
        else:
            candidates.setdefault(labels[i], []).append(i)
    trusted_count: dict[str, int] = {}
    for i in trusted_rows:
        trusted_count[labels[i]] = trusted_count.get(labels[i], 0) + 1
    from cloud_pca.identifier import sample_key

    for lab, rows in candidates.items():
        trusted = trusted_count.get(lab, 0)
        if not trusted and lab not in (accepted or ()) and len({owners[i] for i in rows}) < NEW_FRUIT_IDENTITIES:
            for i in rows:
                why[i] = FEW_IDENTITIES
            continue
        rows.sort(key=lambda i: (-weights[owners[i]][2], sample_key(image_ids[i])))
        per_identity, mine, kept = identity_cap(trusted), {}, []
        for i in rows:
            mine[owners[i]] = mine.get(owners[i], 0) + 1
            if mine[owners[i]] > per_identity:
                why[i] = OVER_IDENTITY
            else:
                kept.append(i)
        cap = max(int(ANON_SHARE * trusted), ANON_FLOOR)
        for i in kept[:cap]:
            counted[i] = True
        for i in kept[cap:]:
            why[i] = OVER_CAP
    # at most MAX_LABELS labels: the ones with the most trusted rows, then the most rows counted
    per: dict[str, list[int]] = {}
    for i in np.flatnonzero(counted):
        per.setdefault(labels[i], []).append(i)
    if len(per) > MAX_LABELS:
        order = sorted(per, key=lambda lab: (-trusted_count.get(lab, 0), -len(per[lab]), lab))
        for lab in order[MAX_LABELS:]:
            for i in per.pop(lab):
                counted[i] = False
                why[i] = OVER_LABELS
    per_label = {}
    for lab, rows in per.items():
        anon = [i for i in rows if anonymous[i]]
        per_label[lab] = {"trusted_rows": len(rows) - len(anon), "anonymous_rows": len(anon),
                          "anonymous_identities": len({owners[i] for i in anon})}
    held = {k: {"rows": v["rows"], "identities": len(v["identities"])} for k, v in held.items()}
    return Votes(counted, labels, anonymous, verdict, why, weights, per_label, held, refused, index is not None)


# ------------------------------------------------------------------------------------------- in Spark
def weigh_in_spark(spark, rows, k: int, projection_id: str, *, catalog_labels: set | None = None,
                   accepted: set | None = None):
    """:func:`weigh` for projections too large for the driver: ``rows`` a DataFrame of labelled projections (image_id,
    label, source, client_id, pca). The same decisions, made in Spark where they are per row (the trusted fit's
    verdicts, the per-label bound) and in the driver where they are per label or per identity (a few numbers each).
    Returns (the DataFrame of counted rows with canonical labels, for :func:`cloud_pca.identifier.fit`, the record)."""
    import pyarrow as pa
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from cloud_pca import identifier
    from contract.layout import _COGNITO_ID_RE

    owner = F.when(F.col("source").startswith("client="),
                   F.regexp_extract("source", r"^client=([^/]+)", 1)).otherwise(F.col("client_id"))
    anon = (F.coalesce(owner.rlike(_COGNITO_ID_RE.pattern), F.lit(False))
            | F.coalesce(F.col("client_id").rlike(_COGNITO_ID_RE.pattern), F.lit(False)))
    rows = rows.select("image_id", "label", "source", "client_id", F.slice("pca", 1, k).alias("pca"),
                       owner.alias("owner"), anon.alias("anonymous"))
    # per distinct label and tier (a few rows each): the text rules, known labels, look-alikes, held labels
    per = rows.groupBy("label", "anonymous").agg(F.count(F.lit(1)).alias("n"),
                                                 F.countDistinct("owner").alias("owners")).collect()
    canonical, refused = {}, {}
    for r in per:
        if r["label"] not in canonical:
            c, problem = check_label(r["label"])
            canonical[r["label"]] = c
            if problem:
                refused[str(r["label"])[:100]] = problem
    trusted_labels = {canonical[r["label"]] for r in per if not r["anonymous"] and canonical[r["label"]]}
    known = trusted_labels | set(catalog_labels or ())
    looks = {skeleton(x): x for x in sorted(known)}
    held: dict = {}
    usable = {}                                 # raw label -> canonical, for the rows that may count
    for r in per:
        c = canonical[r["label"]]
        if c is None:
            continue
        if not r["anonymous"] or c in known:
            usable[r["label"]] = c
            continue
        twin = looks.get(skeleton(c))
        if twin is not None:
            refused[c] = f"looks like the known label {twin!r}"
        else:
            h = held.setdefault(c, {"rows": 0, "identities": 0})
            h["rows"] += int(r["n"])
            h["identities"] += int(r["owners"])
    mapping = spark.createDataFrame(sorted(usable.items()), "label string, canon string")
    rows = rows.join(F.broadcast(mapping), "label").withColumn("label", F.col("canon")).drop("canon").persist()
    try:
        trusted = rows.filter(~F.col("anonymous"))
        index = None
        if len(trusted_labels) >= MIN_TRUSTED_LABELS:
            index = identifier.fit(spark, trusted.select("image_id", "label", "source", "pca"), k, projection_id)
        in_fit = set(index.labels) if index is not None else set()

        def judged(batches):
            for batch in batches:
                d = batch.to_pydict()
                y = np.array(d["pca"], np.float64).reshape(-1, k) if d["pca"] else np.zeros((0, k))
                v = verdicts(index, y, d["label"])
                yield pa.RecordBatch.from_pydict({
                    "image_id": d["image_id"], "owner": d["owner"], "label": d["label"], "verdict": v,
                    "counts_against": [x == DISAGREE and lab in in_fit for x, lab in zip(v, d["label"])]})

        judged_df = rows.filter(F.col("anonymous")).select("image_id", "owner", "label", "pca").mapInArrow(
            judged, "image_id string, owner string, label string, verdict string, counts_against boolean").persist()
        heavy_ok = None
        try:
            w = {r["owner"]: (int(r["a"]), int(r["b"])) for r in judged_df.groupBy("owner").agg(
                F.sum((F.col("verdict") == AGREE).cast("int")).alias("a"),
                F.sum(F.col("counts_against").cast("int")).alias("b")).collect()}
            weights = {o: (a, b, weight(a, b)) for o, (a, b) in w.items()}
            heavy = spark.createDataFrame([(o, float(x[2])) for o, x in weights.items() if x[2] >= MIN_WEIGHT],
                                          "owner string, weight double")
            trusted_count = {r["label"]: int(r["count"]) for r in trusted.groupBy("label").count().collect()}
            caps = spark.createDataFrame([(lab, max(int(ANON_SHARE * trusted_count.get(lab, 0)), ANON_FLOOR),
                                           identity_cap(trusted_count.get(lab, 0)),
                                           trusted_count.get(lab, 0) or int(lab in (accepted or ())))
                                          for lab in known | set(trusted_count)],
                                         "label string, cap int, per_identity int, trusted int")
            key = F.udf(identifier.sample_key, "double")
            order = (F.col("weight").desc(), key("image_id"), F.col("image_id"))
            heavy_ok = (judged_df.filter(~F.col("verdict").isin(DISAGREE, LEANS)).join(F.broadcast(heavy), "owner")
                        .join(F.broadcast(caps), "label")
                        .withColumn("_ids", F.size(F.collect_set("owner").over(Window.partitionBy("label"))))
                        .persist())
            few = heavy_ok.filter((F.col("trusted") == 0) & (F.col("_ids") < NEW_FRUIT_IDENTITIES))
            mine = (heavy_ok.filter((F.col("trusted") > 0) | (F.col("_ids") >= NEW_FRUIT_IDENTITIES))
                    .withColumn("_m", F.row_number().over(Window.partitionBy("label", "owner").orderBy(*order))))
            ranked = (mine.filter(F.col("_m") <= F.col("per_identity"))
                      .withColumn("_r", F.row_number().over(Window.partitionBy("label").orderBy(*order))))
            counted_anon = ranked.filter(F.col("_r") <= F.col("cap")).select("image_id", "label")
            by_verdict = {r["verdict"]: int(r["count"]) for r in judged_df.groupBy("verdict").count().collect()}
            reasons = {CONTRADICTED: by_verdict.get(DISAGREE, 0), LEANS_ELSEWHERE: by_verdict.get(LEANS, 0)}
            n_judged = sum(by_verdict.values())
            n_heavy_ok = heavy_ok.count()
            n_few = few.count()
            n_ranked = ranked.count()
            n_counted_anon = counted_anon.count()
            reasons[WEIGHTLESS] = n_judged - reasons[CONTRADICTED] - reasons[LEANS_ELSEWHERE] - n_heavy_ok
            reasons[FEW_IDENTITIES] = n_few
            reasons[OVER_IDENTITY] = n_heavy_ok - n_few - n_ranked
            reasons[OVER_CAP] = n_ranked - n_counted_anon
            reasons[HELD] = sum(h["rows"] for h in held.values())
            reasons[REFUSED] = sum(int(r["n"]) for r in per if r["anonymous"] and r["label"] not in usable) - reasons[HELD]
            anon_rows = rows.filter(F.col("anonymous")).join(counted_anon, ["image_id", "label"], "left_semi")
            chosen = trusted.unionByName(anon_rows).select("image_id", "label", "source", "pca", "anonymous", "owner")
            per_label_rows = chosen.groupBy("label").agg(
                F.sum((~F.col("anonymous")).cast("int")).alias("t"), F.sum(F.col("anonymous").cast("int")).alias("a"),
                F.countDistinct(F.when(F.col("anonymous"), F.col("owner"))).alias("ids")).collect()
            per_label = {r["label"]: {"trusted_rows": int(r["t"]), "anonymous_rows": int(r["a"]),
                                      "anonymous_identities": int(r["ids"])} for r in per_label_rows}
            if len(per_label) > MAX_LABELS:
                keep = sorted(per_label, key=lambda lab: (-per_label[lab]["trusted_rows"],
                                                          -per_label[lab]["anonymous_rows"] - per_label[lab]["trusted_rows"],
                                                          lab))[:MAX_LABELS]
                reasons[OVER_LABELS] = sum(per_label[x]["anonymous_rows"] for x in per_label if x not in keep)
                chosen = chosen.join(F.broadcast(spark.createDataFrame([(x,) for x in keep], "label string")),
                                     "label", "left_semi")
                per_label = {x: per_label[x] for x in keep}
            n_anon = sum(int(r["n"]) for r in per if r["anonymous"])
            counted_total = sum(v["trusted_rows"] + v["anonymous_rows"] for v in per_label.values())
            v = Votes(np.zeros(0, bool), [], np.zeros(0, bool), [], [], weights, per_label,
                      held, refused, index is not None)
            record = v.record()
            record.update({"rows": int(sum(int(r["n"]) for r in per)),
                           "counted": int(counted_total), "anonymous_rows": int(n_anon),
                           "anonymous_counted": int(sum(x["anonymous_rows"] for x in per_label.values())),
                           "anonymous_not_counted": {r: int(n) for r, n in reasons.items() if n}})
            return chosen.select("image_id", "label", "source", "pca").persist(), record
        finally:
            judged_df.unpersist()
            if heavy_ok is not None:
                heavy_ok.unpersist()
    finally:
        rows.unpersist()
