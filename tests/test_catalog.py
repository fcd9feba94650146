"""The fruit catalog: the seed covers every fruit the project shows, its nutrition is the IFCT 2017 table's, the rules
are one definition applied alike by Python and the page, and a phone never mixes a catalog with another publish's
projection and index."""
from __future__ import annotations

import copy
import re
import json
import subprocess
from pathlib import Path

import pytest

from cloud_pca.cli import main as cloud_main
from contract.catalog import Catalog, CatalogError, check_catalog

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT / "data" / "catalog" / "catalog.json"


def seed() -> dict:
    return json.loads(SEED.read_text(encoding="utf-8"))


def fruits360_2018_classes() -> set[str]:
    """The 81 classes of Fruits-360's 2018 release (the shared data's CLASSES.md lists them; the same list is kept here
    for a machine without the shared data)."""
    listed = ROOT.parent / "shared" / "data" / "fruits360" / "CLASSES.md"
    if listed.is_file():
        part = listed.read_text().split("## Release 2018.09.07")[1].split("## Release 2020")[0]
        return {line.strip() for line in part.splitlines()[1:] if line.strip()}
    return set(json.loads((ROOT / "tests" / "fruits360_2018_classes.json").read_text()))


def test_the_seed_catalog_covers_every_label_the_system_can_name():
    """Every class of the project's data, of the shared lab and shop photos, the 81 of Fruits-360's 2018 release and the
    demo's synthetic fruits has a card; varieties grouped under their species."""
    from models.synthetic import class_names

    catalog = Catalog.from_bytes(SEED.read_bytes(), str(SEED))
    real = set()
    for folder in ("data/fruits360/Training", "data/grocery/train", "../shared/data/fruits360/Training",
                   "../shared/data/grocery/train", "../shared/data/grocery/val"):
        if (ROOT / folder).is_dir():
            real |= {d.name for d in (ROOT / folder).iterdir() if d.is_dir()}
    classes = fruits360_2018_classes()
    assert len(classes) == 81
    assert catalog.missing(real | classes | set(class_names())) == []
    assert catalog.species("Granny-Smith") == catalog.species("Apple Granny Smith") == "apple"
    assert catalog.species("Satsumas") == catalog.species("Mandarine") == "mandarin"
    assert catalog.name("Physalis with Husk", "fr") == "Physalis (coqueret du Pérou) (dans son calice)", "no English"
    assert catalog.name("Apple Braeburn") == "Apple (Braeburn)" and catalog.name("Apple Braeburn", "fr") == "Pomme (Braeburn)"
    assert catalog.name("Apple Braeburn", with_label=True) == "Apple (Braeburn) [Apple Braeburn]"
    assert catalog.name("Durian") == "Durian", "a label without an entry is shown as itself"
    for fruit in catalog.data["fruits"]:           # every value names a source the catalog describes
        for lang in ("en", "fr"):
            assert fruit["name"][lang]["source"] in catalog.data["sources"] and fruit["description"][lang]["value"]


def test_the_seed_nutrition_is_the_tables_own(capsys):
    """Nothing made up: every number of the seed comes from the IFCT 2017 or USDA SR28 row its fruit names
    (fill_nutrition would change nothing), a fruit neither table holds has no nutrition at all, and at least 90% of
    the fruits have it."""
    from cloud_pca.catalog import IFCT_CSV, USDA_JSON, ifct_rows, usda_rows

    assert IFCT_CSV.is_file() and USDA_JSON.is_file(), "./run setup installs data/catalog's npm packages"
    assert cloud_main(["--quiet", "catalog", "nutrition", str(SEED)]) == 0
    assert "0 fruit(s) would change" in capsys.readouterr().out
    table = ifct_rows()
    data = seed()
    apple = next(f for f in data["fruits"] if f["id"] == "apple")["nutrition"]
    assert apple["food"]["value"] == "E001 Apple, big"
    assert apple["per_100g"]["energy_kj"]["value"] == float(table["E001"]["enerc"])          # kJ as given
    assert apple["per_100g"]["vitamin_c_mg"]["value"] == pytest.approx(float(table["E001"]["vitc"]) * 1000)
    kiwi = next(f for f in data["fruits"] if f["id"] == "kiwi")["nutrition"]
    usda = usda_rows()
    assert kiwi["food"] == {"value": "09148 KIWIFRUIT, GRN, RAW", "source": "usda-sr28"}
    assert kiwi["per_100g"]["energy_kcal"]["value"] == usda["09148"]["kcal"] and \
        kiwi["per_100g"]["energy_kj"]["value"] == pytest.approx(usda["09148"]["kcal"] * 4.184, abs=0.05)
    with_nutrition = {f["id"] for f in data["fruits"] if "nutrition" in f}
    assert {f["id"] for f in data["fruits"]} - with_nutrition == {"granadilla", "tamarillo", "tangelo", "pepino",
                                                                   "pitahaya", "salak"}
    assert len(with_nutrition) >= 0.9 * len(data["fruits"])


def broken_catalogs() -> dict[str, object]:
    """Catalogs that break one or more rules (and one that does not: hostile text is text, shown escaped)."""
    cases = {}

    def case(name, fn):
        data = seed()
        fn(data)
        cases[name] = data

    cases["not an object"] = ["a", "list"]
    case("an unknown top field and format 2", lambda d: d.update(formt=1, format=2))
    case("a source without licence, a bad id and url", lambda d: d["sources"].update(
        {"Bad Id": {"name": "x", "version": "1", "licence": "MIT"},
         "nolicence": {"name": "x", "version": "1", "url": "javascript:alert(1)"},
         "newline-url": {"name": "x", "version": "1", "licence": "MIT", "url": "https://a.example/x\n"}}))
    case("duplicate id and label, a bad id", lambda d: d["fruits"].extend([
        {**copy.deepcopy(d["fruits"][0]), "labels": {"Apple Braeburn": ""}},
        {**copy.deepcopy(d["fruits"][1]), "id": "Avocado!", "labels": {"Avocado 2": ""}}]))
    case("look-alike and invisible characters in labels", lambda d: d["fruits"][0]["labels"].update(
        {" Apple Braeburn": "", "Apple\u200bRed": "", "Apple \u202eRed": "", "Apple Red 9": "x" * 61}))
    case("names: fr missing, empty en, a language of 7 letters", lambda d: d["fruits"][2].update(
        name={"en": {"value": " ", "source": "editorial"}, "english": {"value": "Melon", "source": "editorial"}}))
    case("sources unknown or not text, a number as text", lambda d: d["fruits"][3].update(
        description={"en": {"value": "ok", "source": "wikipedia"}, "fr": {"value": 3, "source": ["editorial"]}}))
    case("a text too long, a value without its source", lambda d: d["fruits"][4].update(
        season={"en": {"value": "y" * 301, "source": "editorial"}, "fr": {"value": "x"}},
        scientific_name={"value": "Passiflora ligularis"}))
    case("nutrition: no food, unknown nutrient, negative, too much water, a boolean", lambda d: d["fruits"][0].update(
        nutrition={"per_100g": {"energy_kj": {"value": -1, "source": "ifct2017"},
                                "water_g": {"value": 120, "source": "ifct2017"},
                                "sugars_g": {"value": True, "source": "ifct2017"},
                                "caffeine_mg": {"value": 1, "source": "ifct2017"}}}))
    case("nutrition that is not an object, storage not an object", lambda d: d["fruits"][5].update(
        nutrition=[1], storage="cold"))
    case("hostile but valid text", lambda d: d["fruits"][0]["description"]["en"].update(
        value="<img src=x onerror=alert(1)> & <script>alert(2)</script> \"quoted\""))
    return cases


def js_problems(cases: dict[str, object]) -> dict[str, list[str]]:
    """The page's checkCatalog (web/src/catalog.js, as the page runs it) on the same parsed catalogs, under Node."""
    from contract.labels import rules

    script = ("import {checkCatalog} from './web/src/catalog.js';\n"
              "import {LabelRules} from './web/src/labels.js';\n"
              "let input = ''; process.stdin.on('data', (c) => { input += c; });\n"
              "process.stdin.on('end', () => { const {cases, rules} = JSON.parse(input); const out = {};\n"
              "  const r = new LabelRules(rules);\n"
              "  for (const [k, v] of Object.entries(cases)) out[k] = checkCatalog(v, r);\n"
              "  process.stdout.write(JSON.stringify(out)); });\n")
    done = subprocess.run(["node", "--input-type=module", "-e", script], input=json.dumps({"cases": cases,
                                                                                          "rules": rules()}), cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_python_and_the_page_apply_the_same_rules_with_the_same_messages():
    cases = {"the seed": seed(), **broken_catalogs()}
    python = {name: check_catalog(data) for name, data in cases.items()}
    assert js_problems(cases) == python
    assert python["the seed"] == [] and python["hostile but valid text"] == []
    assert all(python[name] for name in cases if name not in ("the seed", "hostile but valid text")), python
    lines = python["look-alike and invisible characters in labels"]
    assert any("holds the character" in line or "is not a label" in line for line in lines)
    assert sum("is not a label" in line for line in lines) == 3, lines       # leading space, U+200B, U+202E
    assert any("the variety must be text of at most 60 characters" in line for line in lines)
    assert 'fruits[67] (apple).labels: "Apple Braeburn" is also a label of fruits[0] (apple)' in \
        python["duplicate id and label, a bad id"]
    assert "fruits[67] (apple).id: also the id of fruits[0]" in python["duplicate id and label, a bad id"]


def test_catalog_check_prints_one_line_per_problem(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(broken_catalogs()["nutrition: no food, unknown nutrient, negative, too much water, a "
                                                  "boolean"]))
    assert cloud_main(["--quiet", "catalog", "check", str(bad)]) == 1
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        "fruits[0] (apple).nutrition.food: missing (which food of the source the numbers are)",
        "fruits[0] (apple).nutrition.per_100g.caffeine_mg: not a nutrient (energy_kj, energy_kcal, water_g, sugars_g, "
        "fibre_g, vitamin_c_mg, potassium_mg)",
        "fruits[0] (apple).nutrition.per_100g.energy_kj: the value must be a number from 0 to 4000",
        "fruits[0] (apple).nutrition.per_100g.sugars_g: the value must be a number from 0 to 100",
        "fruits[0] (apple).nutrition.per_100g.water_g: the value must be a number from 0 to 100"]
    assert err.strip() == f"{bad}: 5 problem(s)"
    assert cloud_main(["--quiet", "catalog", "check", str(SEED)]) == 0
    assert "good; 67 fruits, 164 labels, 61 with nutrition" in capsys.readouterr().out
    (tmp_path / "not.json").write_text("{nope")
    assert cloud_main(["--quiet", "catalog", "check", str(tmp_path / "not.json")]) == 1
    assert "not JSON" in capsys.readouterr().out


def test_a_catalog_is_refused_whole_when_its_content_is_not_its_name():
    data = SEED.read_bytes()
    c = Catalog.from_bytes(data)
    assert Catalog.from_bytes(c.to_bytes(), catalog_id=c.catalog_id).data == c.data
    with pytest.raises(CatalogError, match="does not match its catalog id"):
        Catalog.from_bytes(c.to_bytes() + b" ", catalog_id=c.catalog_id)
    with pytest.raises(CatalogError, match="1 problem"):
        Catalog.from_bytes(json.dumps({**json.loads(data), "format": 9}).encode())


@pytest.mark.slow
def test_a_phone_never_mixes_a_catalog_with_another_publish(real_published, spark, tmp_path, capsys):
    """Publish with catalog v1; the operator changes the catalog and publishes it alone (v2: the pointer names the same
    projection and index, and v2); a refit publishes v2 with its own projection. At each step what a device reads
    (fruits-edge's Published) is the pointer's three files, each checked against its name; v1's files stay where they
    were, so a phone holding the old pointer still finds its own set. A broken catalog stops publish, naming it."""
    import shutil

    from cloud_pca.publish import PublishError, publish
    from contract.layout import catalog_source_key
    from edge_client.project import Published

    root, run_uri, projection, index = real_published
    home = tmp_path / "root"
    shutil.copytree(root, home)
    sha = projection.model_sha256
    (home / catalog_source_key("")).write_bytes(SEED.read_bytes())
    publish(spark, run_uri, f"file://{home}", k=32)
    p1, i1, c1 = Published(str(home)).published(sha)
    assert c1 is not None and c1.name("Kaki") == "Persimmon (kaki)"
    v2 = seed()
    next(f for f in v2["fruits"] if f["id"] == "persimmon")["name"]["en"]["value"] = "Persimmon"
    (tmp_path / "v2.json").write_text(json.dumps(v2))
    assert cloud_main(["--quiet", "catalog", "publish", "--root", str(home), "--file", str(tmp_path / "v2.json"),
                       "--model-sha256", sha]) == 0
    p2, i2, c2 = Published(str(home)).published(sha)
    assert (p2.projection_id, i2.index_id) == (p1.projection_id, i1.index_id) and c2.catalog_id != c1.catalog_id
    assert c2.name("Kaki") == "Persimmon"
    assert Catalog.from_bytes((home / "models" / f"catalog-{c1.catalog_id}.json").read_bytes(),
                              catalog_id=c1.catalog_id).name("Kaki") == "Persimmon (kaki)"   # v1 is still there
    publish(spark, run_uri, f"file://{home}", k=24)          # a refit's publish: its projection, with v2
    p3, i3, c3 = Published(str(home)).published(sha)
    assert p3.k == 24 and c3.catalog_id == c2.catalog_id and i3.projection_id == p3.projection_id
    broken = copy.deepcopy(v2)
    broken["fruits"][0]["name"].pop("fr")
    (home / catalog_source_key("")).write_text(json.dumps(broken))
    with pytest.raises(PublishError, match=r"1 problem\(s\): fruits\[0\] \(apple\).name.fr: missing"):
        publish(spark, run_uri, f"file://{home}", k=16)
    assert Published(str(home)).published(sha)[0].k == 24, "the publish in force is unchanged"


@pytest.mark.slow
def test_catalog_check_lists_published_labels_without_an_entry_and_the_report_names_fruits(real_published, spark,
                                                                                        tmp_path, capsys):
    """`catalog check FILE --root ROOT` lists the labels of the published index the catalog has no entry for (phones
    show those as themselves); the run's report names each fruit by its catalog name, the label kept in brackets, and
    its 3-D view gives each of the 18 fruits its own colour (the old palette repeated after 10)."""
    import re
    import shutil

    from cloud_pca.report import build_report

    root, run_uri, projection, _ = real_published
    home = tmp_path / "root"
    shutil.copytree(root, home)
    partial = seed()
    partial["fruits"] = [f for f in partial["fruits"] if f["id"] != "persimmon"]
    (tmp_path / "partial.json").write_text(json.dumps(partial))
    assert cloud_main(["--quiet", "catalog", "check", str(tmp_path / "partial.json"), "--root", str(home),
                       "--model-sha256", projection.model_sha256]) == 0
    out = capsys.readouterr().out
    assert "label without an entry (shown as itself): Kaki" in out and "17 of the 18 labels published" in out
    assert cloud_main(["--quiet", "catalog", "publish", "--root", str(home), "--file", str(SEED),
                       "--model-sha256", projection.model_sha256]) == 0
    html = build_report(spark, f"file://{home}/pca/run=real").html()
    assert "Apple (Braeburn) [Apple Braeburn]" in html and "Persimmon (kaki) [Kaki]" in html
    plot = json.loads(re.search(r'Plotly\.newPlot\("pca3d", (\[.*?\]), \{', html, re.S).group(1)
                      .replace("\\u003c", "<").replace("\\u003e", ">").replace("\\u0026", "&"))
    styles = {(t["marker"]["color"], t["marker"].get("symbol", "circle")) for t in plot}
    assert len(plot) == 18 and len(styles) == 18, styles


HOSTILE_VALUES = [True, False, None, 0, 1, 1.0, -0.0, 1e308, 2**64, -1, "", " ", "\x1c", "\x1c\x1d", "\u0085", "\ufeff",
                  "\u2028", "\U00013439", "\u180e", "x" * 700, [], {}, [1], {"value": True, "source": "ifct2017"},
                  {"value": "x", "source": "nope"}, "http://a\ufeffb", "https://x.org/a b", "https://x.org/\x7f",
                  "Apple\u034fRed", "Banana\U00011f04", "  padded  ", "ok"]


def hostile_catalogs(n: int, seed_value: int = 11) -> dict[str, object]:
    """``n`` catalogs, each the seed with one node changed: a value replaced by one of :data:`HOSTILE_VALUES`, a key
    added or removed (a deterministic draw)."""
    import random

    rng = random.Random(seed_value)
    base = seed()
    out = {}
    for i in range(n):
        data = copy.deepcopy(base)
        node, path = data, []
        while isinstance(node, (dict, list)) and node and rng.random() < 0.8:
            key = rng.choice(sorted(node)) if isinstance(node, dict) else rng.randrange(len(node))
            if not isinstance(node[key], (dict, list)) or not node[key]:
                break
            node, path = node[key], path + [key]
        what = rng.random()
        if isinstance(node, dict) and what < 0.15:
            node[rng.choice(["extra", "format", "labels", "value", "source", "en"])] = rng.choice(HOSTILE_VALUES)
        elif isinstance(node, dict) and node and what < 0.25:
            node.pop(rng.choice(sorted(node)))
        elif node:
            key = rng.choice(sorted(node)) if isinstance(node, dict) else rng.randrange(len(node))
            node[key] = copy.deepcopy(rng.choice(HOSTILE_VALUES))
        out[f"#{i} at {'/'.join(map(str, path))}"] = data
    out["format true"] = {**base, "format": True}
    out["format 1.0"] = {**base, "format": 1.0}
    return out


def test_python_refuses_every_catalog_the_page_refuses():
    """A catalog that passes ``catalog check`` and ``publish`` but that every page refuses stops every phone from
    identifying ("format": true did). 600 hostile catalogs: Python's check and the page's give the same lines."""
    cases = hostile_catalogs(600)
    python = {name: check_catalog(data) for name, data in cases.items()}
    page = js_problems(cases)
    differ = {name: (python[name], page[name]) for name in cases if python[name] != page[name]}
    assert not differ, list(differ.items())[:3]
    assert python["format true"] == ["format: must be 1"] and python["format 1.0"] == []
    assert sum(bool(v) for v in python.values()) > 400, "most mutations break a rule"


def js_from_bytes(blobs: dict[str, bytes]) -> dict[str, str | None]:
    """The page's Catalog.fromBytes on raw bytes: None when it accepts them, else its message."""
    import base64

    from contract.labels import rules

    script = ("import {Catalog} from './web/src/catalog.js';\n"
              "import {LabelRules} from './web/src/labels.js';\n"
              "let input = ''; process.stdin.on('data', (c) => { input += c; });\n"
              "process.stdin.on('end', async () => { const {blobs, rules} = JSON.parse(input); const out = {};\n"
              "  const labelRules = new LabelRules(rules);\n"
              "  for (const [k, v] of Object.entries(blobs)) {\n"
              "    try { await Catalog.fromBytes(Buffer.from(v, 'base64'), {origin: k, labelRules}); out[k] = null; }\n"
              "    catch (err) { out[k] = err.message; } }\n"
              "  process.stdout.write(JSON.stringify(out)); });\n")
    done = subprocess.run(["node", "--input-type=module", "-e", script],
                          input=json.dumps({"blobs": {k: base64.b64encode(v).decode() for k, v in blobs.items()},
                                            "rules": rules()}), cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_python_reads_catalog_bytes_as_the_page_does():
    """Bytes the page cannot read are refused by Python too: UTF-16, NaN and Infinity (Python's json takes them),
    nesting deeper than Python's stack; a UTF-8 byte-order mark is read by both."""
    text = json.dumps(seed(), ensure_ascii=False)
    blobs = {"utf-8": text.encode(), "bom": b"\xef\xbb\xbf" + text.encode(), "utf-16": text.encode("utf-16"),
             "nan": text.replace('"format": 1', '"format": 1, "version": NaN', 1).encode(),
             "infinity": text.replace('"format": 1', '"format": Infinity', 1).encode(),
             "deep": ("[" * 100_000 + "]" * 100_000).encode()}
    page = js_from_bytes(blobs)
    python = {}
    for name, raw in blobs.items():
        try:
            Catalog.from_bytes(raw, name)
            python[name] = None
        except CatalogError as exc:
            python[name] = str(exc)
    assert {k: v is None for k, v in python.items()} == {k: v is None for k, v in page.items()}, (python, page)
    assert python["utf-8"] is None and python["bom"] is None and python["utf-16"] is not None


LATEST_SPECIES = {   # Fruits-360's latest release, its README's species (../shared/data/fruits360/CLASSES.md) -> card
    "Apples": "apple", "Apricot": "apricot", "Avocado": "avocado", "Avocado ripe": "avocado", "Banana": "banana",
    "Beetroot Red": "beetroot", "Blueberry": "blueberry", "Cactus fruit": "cactus-fruit", "Cantaloupe": "melon",
    "Carambula": "carambola", "Cauliflower": "cauliflower", "Cherry": "cherry", "Cherry Wax": "cherry",
    "Chestnut": "chestnut", "Clementine": "clementine", "Cocos": "coconut", "Corn": "corn", "Cucumber": "cucumber",
    "Dates": "date", "Eggplant": "eggplant", "Fig": "fig", "Ginger Root": "ginger", "Granadilla": "granadilla",
    "Grape": "grape", "Grapefruit": "grapefruit", "Guava": "guava", "Hazelnut": "hazelnut",
    "Huckleberry": "huckleberry", "Kiwi": "kiwi", "Kaki": "persimmon", "Kohlrabi": "kohlrabi", "Kumsquats": "kumquat",
    "Lemon": "lemon", "Lime": "lime", "Lychee": "lychee", "Mandarine": "mandarin", "Mango": "mango",
    "Mangostan": "mangosteen", "Maracuja": "passion-fruit", "Melon Piel de Sapo": "melon", "Mulberry": "mulberry",
    "Nectarine": "nectarine", "Nut": "hazelnut", "Onion": "onion", "Orange": "orange", "Papaya": "papaya",
    "Passion fruit": "passion-fruit", "Peach": "peach", "Pepino": "pepino", "Pear": "pear", "Pepper": "pepper",
    "Physalis": "physalis", "Pineapple": "pineapple", "Pitahaya Red": "pitahaya", "Plum": "plum",
    "Pomegranate": "pomegranate", "Pomelo Sweetie": "pomelo", "Potato": "potato", "Quince": "quince",
    "Rambutan": "rambutan", "Raspberry": "raspberry", "Redcurrant": "redcurrant", "Salak": "salak",
    "Strawberry": "strawberry", "Tamarillo": "tamarillo", "Tangelo": "tangelo", "Tomato": "tomato", "Walnut": "walnut",
    "Watermelon": "watermelon"}


def test_every_species_of_fruits360s_latest_release_has_a_card():
    listed = ROOT.parent / "shared" / "data" / "fruits360" / "CLASSES.md"
    if listed.is_file():    # the list there, its brackets (varieties) dropped: every species is in the table above
        text = listed.read_text().split("## Release 2020")[1].split("\n", 1)[1]
        flat = re.sub(r"\s*\([^()]*(\([^()]*\)[^()]*)*\)", "", re.sub(r"\s+", " ", text))   # brackets dropped
        names = {part.strip() for part in flat.split(",")}
        assert {n.rstrip(".") for n in names if n} <= set(LATEST_SPECIES), sorted(names - set(LATEST_SPECIES))
    ids = {f["id"] for f in seed()["fruits"]}
    assert set(LATEST_SPECIES.values()) <= ids
    assert {"pecan", "sweet-potato"} <= ids        # Nut (Pecan), Potato (Sweet): species of their own
