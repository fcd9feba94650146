"""Keep the PCA fresh at the cost of the new data only.

The Gram solver's statistics (n, sum x, sum x x^T, column min and max: :class:`cloud_pca.pca.GramSums`) add
up, and uploaded objects are immutable and named by their content. So a refresh reads only the objects not
counted yet, leaves out image ids already counted (scanning only the counted ids, one column), adds the
new statistics to the kept ones and solves the 1280x1280 eigenproblem again.

State, one per model fingerprint, under ``OUTPUT/state/model=<sha256>/`` (``pca/state/...`` in the layout)::

    gen=<g>/moments.npz    the total statistics after generation g
    gen=<g>/objects.json   every object counted (path, size, version: ETag or modification time, how Spark reads it)
    gen=<g>/ids/           Parquet: the image ids generation g added
    current.json           the generation in force, and the ids folders of every generation up to it;
                           written last, so a run that fails leaves the previous state in force

Each generation has a name of its own (``g00007-3fa2c1``): a failed run's folder is never reused (it is
left behind, unreferenced; nothing is deleted, which the cluster's role may not do).

Objects are trusted by name only while they are what was counted: a run compares every counted object with
the listing (size, and ETag or modification time) and refuses, naming the object, when one is gone or was
rewritten (a lifecycle rule, ``featurize --overwrite``): its moments are still in the state, and only a
``--full`` run can take them out. Every state file is checked when it is loaded: a damaged one is one error
naming the file, never a traceback.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from contract.errors import FruitsError
from contract.layout import check_sha256
from cloud_pca.inputs import InputFile, check_files, list_inputs, open_files
from cloud_pca.pca import GramSums
from cloud_pca.spark import list_dirs, path_exists, read_bytes, write_bytes, write_rows

STATE = "state"
POINTER = "current.json"


class StateError(FruitsError, ValueError):
    """An incremental state that cannot be used (several models, a damaged file); says which and why."""


@dataclass
class State:
    uri: str                                   # OUTPUT/state/model=<sha256>
    model_sha256: str
    generation: str | None = None              # None: nothing counted yet
    number: int = 0
    sums: GramSums | None = None
    objects: list[dict] = field(default_factory=list)
    id_parts: list[str] = field(default_factory=list)

    @property
    def counted_paths(self) -> set[str]:
        return {o["path"] for o in self.objects}


@dataclass
class Batch:
    """What an incremental run reads: the state and the objects not counted yet."""

    state: State
    new: list[InputFile]
    listed: int

    @property
    def good(self) -> list[InputFile]:
        return [f for f in self.new if f.reason is None]

    @property
    def bytes_read(self) -> int:
        return sum(f.size for f in self.good)


def state_root(output: str) -> str:
    return f"{output.rstrip('/')}/{STATE}"


def load_state(spark, output: str, model_sha256: str | None) -> State | None:
    """The state of ``model_sha256`` (or of the only model that has one); None when there is none yet."""
    root = state_root(output)
    if model_sha256 is None:
        models = [d[len("model="):] for d in list_dirs(spark, root) if d.startswith("model=")]
        if not models:
            return None
        if len(models) > 1:
            raise StateError(f"{root} holds the state of {len(models)} models ({', '.join(m[:12] + '...' for m in models)}): "
                             f"select one with --model-sha256")
        model_sha256 = models[0]
    uri = f"{root}/model={check_sha256(model_sha256)}"
    if not path_exists(spark, f"{uri}/{POINTER}"):
        return State(uri, model_sha256)

    def damaged(where: str, what: str) -> StateError:
        return StateError(f"{where}: {what}; the incremental state is damaged: rebuild it with --full")

    def file(rel: str) -> bytes:
        if not path_exists(spark, f"{uri}/{rel}"):
            raise damaged(f"{uri}/{rel}", "missing")
        return read_bytes(spark, f"{uri}/{rel}")

    try:
        pointer = json.loads(file(POINTER))
    except ValueError as exc:
        raise damaged(f"{uri}/{POINTER}", f"not JSON ({exc})") from None
    gen, number, ids = (pointer.get("generation"), pointer.get("number"), pointer.get("ids", [])) \
        if isinstance(pointer, dict) else (None, None, None)
    if not isinstance(gen, str) or not isinstance(number, int) or not isinstance(ids, list) \
            or not all(isinstance(p, str) for p in ids):
        raise damaged(f"{uri}/{POINTER}", "needs a generation (text), a number and a list of ids folders")
    try:
        sums = GramSums.from_bytes(file(f"gen={gen}/moments.npz"))
    except StateError:
        raise
    except Exception as exc:  # not an .npz, wrong arrays
        raise damaged(f"{uri}/gen={gen}/moments.npz", f"unreadable ({str(exc).strip().splitlines()[0][:200]})") from None
    try:
        objects = json.loads(file(f"gen={gen}/objects.json"))
    except ValueError as exc:
        raise damaged(f"{uri}/gen={gen}/objects.json", f"not JSON ({exc})") from None
    if not isinstance(objects, list) or not all(isinstance(o, dict) and isinstance(o.get("path"), str)
                                                and isinstance(o.get("size"), int) for o in objects):
        raise damaged(f"{uri}/gen={gen}/objects.json", "must be a list of objects with a path and a size")
    state = State(uri, model_sha256, gen, number, sums, objects, [f"{uri}/{p}" for p in ids])
    check_ids(spark, state)
    return state


def check_ids(spark, state: State) -> None:
    """Every ids folder the pointer names exists and its Parquet files have readable footers (a missing or
    truncated one would otherwise fail deep in a Spark job)."""
    from cloud_pca.inputs import java_reason, read_footer
    from cloud_pca.spark import list_files

    for part in state.id_parts:
        try:
            files = list_files(spark, part)
        except Exception as exc:
            raise StateError(f"{part}: cannot be listed ({java_reason(exc)}); rebuild the state with --full") from None
        if not files:
            raise StateError(f"{part}: missing (the image ids a generation counted); the incremental state is "
                             f"damaged: rebuild it with --full")
        for path, size, _ in files:
            try:
                read_footer(spark, path, size)
            except Exception as exc:
                raise StateError(f"{path}: {exc if isinstance(exc, FruitsError) else java_reason(exc)}; the "
                                 f"incremental state is damaged: rebuild it with --full") from None


def check_counted(state: State, listed: list[tuple]) -> None:
    """Refuse when an object the state counted is gone from the listing or is not the version counted."""
    now = {item[0]: item for item in listed}
    gone, changed = [], []
    for o in state.objects:
        item = now.get(o["path"])
        if item is None:
            gone.append(o["path"])
        elif item[1] != o["size"] or (o.get("version") and len(item) > 2 and item[2] != o["version"]):
            changed.append(o["path"])
    if gone or changed:
        what = []
        if gone:
            what.append(f"{len(gone)} counted object(s) are gone (first: {gone[0]})")
        if changed:
            what.append(f"{len(changed)} counted object(s) were rewritten since they were counted (first: {changed[0]})")
        raise StateError("; ".join(what) + f". The state {state.uri} ({state.generation}) still holds their moments: "
                         f"rebuild it from what is there now with --full (or put the objects back)")


def plan_batch(spark, inputs: list[str], state: State | None, *, skip_bad_files: bool) -> tuple[list[InputFile], int]:
    """The objects under ``inputs`` not counted yet, their footers checked (the counted ones are not opened)."""
    listed = list_inputs(spark, inputs)
    if state is not None and state.objects:
        check_counted(state, listed)
    counted = state.counted_paths if state else set()
    new = [item for item in listed if item[0] not in counted]
    files = check_files(spark, new) if new else []
    bad = [f for f in files if f.reason]
    if bad and not skip_bad_files:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise StateError(f"{bad[0].path}: {bad[0].reason}{more}; fix or remove it, or pass --skip-bad-files")
    return files, len(listed)


def counted_ids(spark, state: State):
    """The image ids every committed generation added (one column), or None when there are none."""
    if not state.id_parts:
        return None
    # the schema given: Spark would otherwise start a job to read a footer for it
    return spark.read.schema("image_id STRING").parquet(*state.id_parts).select("image_id")


def counted_files(state: State) -> list[InputFile]:
    """The objects the state counted, as InputFiles (their footers were checked when they were counted)."""
    return [InputFile(**{k: v for k, v in o.items() if k in InputFile.__dataclass_fields__}) for o in state.objects]


def all_files(spark, state: State, new: list[InputFile]):
    """The rows of every counted object and of the new ones (for --reproject), without re-reading footers."""
    known = [InputFile(**{k: v for k, v in o.items() if k in InputFile.__dataclass_fields__}) for o in state.objects]
    return open_files(spark, known + [f for f in new if f.reason is None], skip_bad_files=True,
                      where=f"{state.uri} (counted) and the new objects")


def next_generation(state: State) -> str:
    """The name of the generation after ``state``'s: its number and a random part (never reused)."""
    return f"g{state.number + 1:05d}-{uuid.uuid4().hex[:6]}"


def commit(spark, state: State, gen: str, sums: GramSums, new_files: list[InputFile], unique, *, run_id: str) -> dict:
    """Write generation ``gen`` (its ids, moments and objects), then the pointer: the new total is in force."""
    number = int(gen[1:6])
    base = f"{state.uri}/gen={gen}"
    parts = [p[len(state.uri) + 1:] for p in state.id_parts]
    if unique is not None:
        write_rows(spark, f"{base}/ids", unique.select(["image_id"]))   # a DataFrame or a pyarrow Table
        parts.append(f"gen={gen}/ids")
    objects = state.objects + [asdict(f) for f in new_files if f.reason is None]
    write_bytes(spark, f"{base}/moments.npz", sums.to_bytes())
    write_bytes(spark, f"{base}/objects.json", json.dumps(objects).encode())
    pointer = {"generation": gen, "number": number, "previous": state.generation, "model_sha256": state.model_sha256,
               "rows": sums.n, "objects": len(objects), "ids": parts, "run_id": run_id,
               "committed_at": datetime.now(timezone.utc).isoformat()}
    write_bytes(spark, f"{state.uri}/{POINTER}", json.dumps(pointer, indent=1).encode())   # last
    return pointer
