"""The fruit catalog: what a person reads about the fruit a photo shows, published with the index.

One JSON document (format 1) the operator keeps at ``ROOT/models/catalog.json``; ``publish`` copies the version it
used, content-named, to ``ROOT/models/catalog-<id>.json`` and names it in the pointer, so a phone's names, index and
information always come from one publish. Every value carries its source (a key of ``sources``, each with its name,
version and licence); a value no source gives is left out, never filled in::

    {"format": 1, "version": "2026-12-05",
     "sources": {"ifct2017": {"name": ..., "version": ..., "licence": ..., "url": ..., "note": ...}, ...},
     "fruits": [{"id": "apple",
                 "labels": {"Apple Braeburn": "Braeburn", "Apple Red": {"en": "Red", "fr": "rouge"}},
                                                        # label -> variety ("" if none; one text, or texts by language)
                 "name": {"en": {"value": "Apple", "source": "editorial"}, "fr": {...}},
                 "scientific_name": {"value": "Malus domestica", "source": "ifct2017"},
                 "description": {"en": {...}, "fr": {...}}, "season": {...}, "storage": {...},
                 "nutrition": {"food": {"value": "E001 Apple, big", "source": "ifct2017"},
                               "per_100g": {"energy_kj": {"value": 261, "source": "ifct2017"}, ...}}}]}

:func:`check_catalog` is the one definition of a good catalog (``fruits-cloud catalog check``); the page applies the
same rules (``web/src/catalog.js``), with the same messages: one line per problem, naming where it is.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass

from contract.errors import ContractError, one_line
from contract.labels import check_label, control_in

CATALOG_FORMAT = 1
LANGUAGES = ("en", "fr")                      # every name and description is in these; others are welcome
NUTRIENTS = {                                 # per 100 g of the edible part: the unit, and the largest value allowed
    "energy_kj": ("kJ", 4000), "energy_kcal": ("kcal", 1000), "water_g": ("g", 100), "sugars_g": ("g", 100),
    "fibre_g": ("g", 100), "vitamin_c_mg": ("mg", 3000), "potassium_mg": ("mg", 5000)}
MAX_BYTES = 1_000_000
MAX_FRUITS = 2000
TEXT_LIMITS = {"name": 80, "scientific_name": 120, "description": 600, "season": 300, "storage": 300, "food": 120}
_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")         # (fullmatch: "$" would let a final newline through)
_SOURCE_ID = re.compile(r"[a-z0-9][a-z0-9.-]{0,39}")
_LANG = re.compile(r"[a-z]{2}")
_URL = re.compile(r"https?://[!#-;=?-~]+")            # printable ASCII but space " < > (the page: the same class)
_JS_SPACE = "\t\n\x0b\x0c\r \xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
_TOP = {"format", "version", "sources", "fruits"}
_SOURCE_KEYS = {"name", "version", "licence", "url", "note"}
_FRUIT_KEYS = {"id", "labels", "name", "scientific_name", "description", "season", "storage", "nutrition"}


class CatalogError(ContractError):
    """A catalog that breaks the rules; the message lists every problem, one a line."""


def _bad_text(text: str) -> str | None:
    """Why a text cannot be shown as it is (control, invisible or bidi-control characters: the same table the page
    judges by, :func:`contract.labels.control_in`), or None."""
    ch = control_in(text)
    return None if ch is None else f"holds the character U+{ord(ch):04X}"


def _strip(text: str) -> str:
    """White space off both ends, as the page's ``strip`` (JavaScript's ``\\s``: Python's ``str.strip`` also takes
    U+001C-U+001F and U+0085, and leaves U+FEFF)."""
    return text.strip(_JS_SPACE)


def _number(value) -> bool:
    """A JSON number as the page sees one (never a boolean: ``True == 1`` in Python)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_catalog(data) -> list[str]:
    """Every problem of a parsed catalog, one line each (``where: what``); [] for a good catalog."""
    out: list[str] = []
    if not isinstance(data, dict):
        return ["the catalog is not a JSON object"]
    for key in sorted(set(data) - _TOP):
        out.append(f"{key}: not a catalog field (fields: {', '.join(sorted(_TOP))})")
    if not _number(data.get("format")) or data.get("format") != CATALOG_FORMAT:
        out.append(f"format: must be {CATALOG_FORMAT}")
    if "version" in data and not (isinstance(data["version"], str) and len(data["version"]) <= 100):
        out.append("version: must be text of at most 100 characters")
    sources = data.get("sources")
    if not isinstance(sources, dict) or not sources:
        out.append("sources: must be an object naming at least one source")
        sources = {}
    for sid in sorted(sources):
        where = f"sources.{sid}"
        if not _SOURCE_ID.fullmatch(sid):
            out.append(f"{where}: a source id is 1-40 of a-z 0-9 . - (starting with a letter or digit)")
        src = sources[sid]
        if not isinstance(src, dict):
            out.append(f"{where}: must be an object")
            continue
        for key in sorted(set(src) - _SOURCE_KEYS):
            out.append(f"{where}.{key}: not a source field (fields: {', '.join(sorted(_SOURCE_KEYS))})")
        for key in ("name", "version", "licence"):
            if not (isinstance(src.get(key), str) and _strip(src[key])):
                out.append(f"{where}.{key}: missing")
        for key in sorted(_SOURCE_KEYS & set(src)):
            if isinstance(src[key], str) and (len(src[key]) > 300 or _bad_text(src[key])):
                out.append(f"{where}.{key}: at most 300 characters, no control characters")
        url = src.get("url", "")
        if url not in ("", None) and not (isinstance(url, str) and _URL.fullmatch(url)):
            out.append(f"{where}.url: must be an http(s) address")
    fruits = data.get("fruits")
    if not isinstance(fruits, list) or not fruits:
        out.append("fruits: must be a list of at least one fruit")
        return out
    if len(fruits) > MAX_FRUITS:
        out.append(f"fruits: {len(fruits)} fruits, at most {MAX_FRUITS}")
    ids: dict[str, int] = {}
    owner: dict[str, str] = {}
    for i, fruit in enumerate(fruits):
        fid = fruit.get("id") if isinstance(fruit, dict) else None
        where = f"fruits[{i}]" + (f" ({fid})" if isinstance(fid, str) else "")
        if not isinstance(fruit, dict):
            out.append(f"{where}: must be an object")
            continue
        for key in sorted(set(fruit) - _FRUIT_KEYS):
            out.append(f"{where}.{key}: not a fruit field (fields: {', '.join(sorted(_FRUIT_KEYS))})")
        if not (isinstance(fid, str) and _ID.fullmatch(fid)):
            out.append(f"{where}.id: 1-40 of a-z 0-9 - (starting with a letter or digit)")
        elif fid in ids:
            out.append(f"{where}.id: also the id of fruits[{ids[fid]}]")
        else:
            ids[fid] = i
        labels = fruit.get("labels")
        if not isinstance(labels, dict) or not labels:
            out.append(f"{where}.labels: must map at least one label to its variety (\"\" for none)")
            labels = {}
        for label in sorted(labels):
            variety = labels[label]
            canonical, problem = check_label(label)   # the rules of every label (contract.labels)
            if problem or canonical != label:
                why = problem or f"not in its canonical form {json.dumps(canonical, ensure_ascii=False)}"
                out.append(f"{where}.labels: {json.dumps(label, ensure_ascii=False)} is not a label ({why})")
            elif label in owner:
                out.append(f"{where}.labels: {json.dumps(label, ensure_ascii=False)} is also a label of {owner[label]}")
            else:
                owner[label] = where
            if not _good_variety(variety):
                out.append(f"{where}.labels.{json.dumps(label, ensure_ascii=False)}: the variety must be text of at "
                           f"most 60 characters, or an object of such texts by language (en at least)")
        for field in ("name", "description"):
            out += _check_texts(fruit.get(field), f"{where}.{field}", TEXT_LIMITS[field], sources, required=True)
        for field in ("season", "storage"):
            if field in fruit:
                out += _check_texts(fruit[field], f"{where}.{field}", TEXT_LIMITS[field], sources, required=False)
        if "scientific_name" in fruit:
            out += _check_sourced(fruit["scientific_name"], f"{where}.scientific_name", sources,
                                  limit=TEXT_LIMITS["scientific_name"])
        if "nutrition" in fruit:
            out += _check_nutrition(fruit["nutrition"], f"{where}.nutrition", sources)
    return out


def _good_variety(variety) -> bool:
    """A variety: one text for every language (a cultivar's name: "Granny Smith"), or texts by language ({"en": "in
    its husk", "fr": "dans son calice"}), English at least; each at most 60 characters, no control character."""
    def text(v) -> bool:
        return isinstance(v, str) and len(v) <= 60 and not _bad_text(v)

    if isinstance(variety, dict):
        return "en" in variety and all(isinstance(k, str) and _LANG.fullmatch(k) and text(v) for k, v in variety.items())
    return text(variety)


def variety_in(variety, lang: str) -> str:
    """A variety (:func:`_good_variety`) in ``lang``: its text for that language, else English, else the one text."""
    return (variety.get(lang) or variety["en"]) if isinstance(variety, dict) else variety


def _check_texts(value, where: str, limit: int, sources: dict, *, required: bool) -> list[str]:
    if value is None and not required:
        return []
    if not isinstance(value, dict):
        return [f"{where}: must be an object of languages ({', '.join(LANGUAGES)} at least)"]
    out = [f"{where}.{lang}: missing" for lang in LANGUAGES if lang not in value]
    for lang in sorted(value):
        if not _LANG.fullmatch(lang):
            out.append(f"{where}.{lang}: a language is two letters a-z")
            continue
        out += _check_sourced(value[lang], f"{where}.{lang}", sources, limit=limit)
    return out


def _check_sourced(item, where: str, sources: dict, *, limit: int | None = None, number_max: float | None = None
                   ) -> list[str]:
    """A value with its source: {"value": ..., "source": a key of sources}."""
    if not isinstance(item, dict) or set(item) != {"value", "source"}:
        return [f"{where}: must be {{\"value\": ..., \"source\": ...}}"]
    out = []
    if not isinstance(item["source"], str):
        out.append(f"{where}: the source must be text (a key of sources)")
    elif item["source"] not in sources:
        out.append(f"{where}: source {json.dumps(item['source'], ensure_ascii=False)} is not in sources")
    value = item["value"]
    if number_max is None:
        if not isinstance(value, str) or not _strip(value):
            out.append(f"{where}: the value must be text")
        elif len(value) > limit:
            out.append(f"{where}: {len(value)} characters, at most {limit}")
        elif _bad_text(value):
            out.append(f"{where}: the value {_bad_text(value)}")
    elif not _number(value) or not math.isfinite(value) \
            or not 0 <= value <= number_max:
        out.append(f"{where}: the value must be a number from 0 to {number_max:g}")
    return out


def _check_nutrition(value, where: str, sources: dict) -> list[str]:
    if not isinstance(value, dict) or not {"food", "per_100g"} >= set(value) or "per_100g" not in value:
        return [f"{where}: must be {{\"food\": ..., \"per_100g\": {{...}}}}"]
    out = _check_sourced(value["food"], f"{where}.food", sources, limit=TEXT_LIMITS["food"]) if "food" in value \
        else [f"{where}.food: missing (which food of the source the numbers are)"]
    per = value["per_100g"]
    if not isinstance(per, dict) or not per:
        return out + [f"{where}.per_100g: must be an object of nutrients ({', '.join(NUTRIENTS)})"]
    for key in sorted(per):
        if key not in NUTRIENTS:
            out.append(f"{where}.per_100g.{key}: not a nutrient ({', '.join(NUTRIENTS)})")
        else:
            out += _check_sourced(per[key], f"{where}.per_100g.{key}", sources, number_max=NUTRIENTS[key][1])
    return out


# -------------------------------------------------------------------------------------------------- reading
def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def canonical_bytes(data: dict) -> bytes:
    """The catalog as published: sorted keys, ASCII, no spaces (its id is the sha256 of these bytes)."""
    return json.dumps(data, sort_keys=True, ensure_ascii=True, separators=(",", ":")).encode()


def catalog_id_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


@dataclass
class Catalog:
    """A checked catalog. ``lookup(label)`` gives the fruit and variety a label is."""

    data: dict

    @classmethod
    def from_bytes(cls, raw: bytes, origin: str = "<catalog>", catalog_id: str | None = None) -> "Catalog":
        """A catalog from its JSON bytes, checked; given ``catalog_id`` (the name it was fetched by), the bytes must
        be that catalog. Every problem is one line of the CatalogError."""
        if len(raw) > MAX_BYTES:
            raise CatalogError(f"{origin}: {len(raw):,} bytes, at most {MAX_BYTES:,}")
        if catalog_id is not None and catalog_id_of(raw) != catalog_id:
            raise CatalogError(f"{origin}: content does not match its catalog id {catalog_id}")
        try:   # as the page reads it: UTF-8 only (json.loads would take UTF-16 too), no NaN or Infinity
            text = raw.decode("utf-8")
            data = json.loads(text[1:] if text.startswith("\ufeff") else text, parse_constant=_no_constant)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise CatalogError(f"{origin}: not JSON ({one_line(exc)[:200]})") from None
        problems = check_catalog(data)
        if problems:
            raise CatalogError(f"{origin}: {len(problems)} problem(s): " + "; ".join(problems))
        return cls(data)

    def to_bytes(self) -> bytes:
        return canonical_bytes(self.data)

    @property
    def catalog_id(self) -> str:
        return catalog_id_of(self.to_bytes())

    @property
    def labels(self) -> dict[str, tuple[dict, str]]:
        return {label: (fruit, variety) for fruit in self.data["fruits"] for label, variety in fruit["labels"].items()}

    def lookup(self, label: str) -> tuple[dict, str] | None:
        return self.labels.get(label)

    def species_name(self, species: str, lang: str = "en") -> str:
        """A species (a fruit's id) as a person reads it, in ``lang``; the id itself when the catalog lacks it."""
        fruit = next((f for f in self.data["fruits"] if f["id"] == species), None)
        return _in(fruit["name"], lang) if fruit else species

    def species(self, label: str) -> str | None:
        """The fruit a label is a variety of (its catalog id: "Granny-Smith" and "Apple Braeburn" -> "apple"), or
        None when the catalog does not have it."""
        found = self.lookup(label)
        return found[0]["id"] if found else None

    def name(self, label: str, lang: str = "en", *, with_label: bool = False) -> str:
        """How a person reads a label: ``Apple (Braeburn)``; the label itself when the catalog does not have it.
        ``with_label``: the label kept in brackets, ``Apple (Braeburn) [Apple Braeburn]``."""
        found = self.lookup(label)
        if found is None:
            return label
        fruit, variety = found
        variety = variety_in(variety, lang)
        text = _in(fruit["name"], lang) + (f" ({variety})" if variety else "")
        return f"{text} [{label}]" if with_label and text != label else text

    def line(self, label: str, lang: str = "en") -> str:
        """One line about a label's fruit: its name, scientific name and the description's first sentence."""
        found = self.lookup(label)
        if found is None:
            return ""
        fruit, _ = found
        sci = fruit.get("scientific_name", {}).get("value")
        first = _in(fruit["description"], lang).split(". ")[0].rstrip(".")
        return f"{self.name(label, lang)}" + (f", {sci}" if sci else "") + f": {first}."

    def missing(self, labels) -> list[str]:
        """Of ``labels``, those the catalog has no entry for (shown as themselves)."""
        have = self.labels
        return sorted(lab for lab in set(labels) if lab not in have)


def _in(texts: dict, lang: str) -> str:
    return (texts.get(lang) or texts["en"])["value"]


