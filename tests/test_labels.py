"""Labels are text a stranger types: one set of rules (contract/labels.py) that the Python edge, the page
(web/src/labels.js, from the same data in contract.json) and the job apply alike."""
from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import pytest

from contract.labels import MAX_LABEL_CHARS, check_label, rules, skeleton

ROOT = Path(__file__).resolve().parent.parent

CASES = {
    "Apple Red": ("Apple Red", None),
    "Apple Red ": ("Apple Red", None),                          # the same label, not a new one
    "  Apple\t\u00a0Red\n": ("Apple Red", None),
    "Ａｐｐｌｅ Ｒｅｄ": ("Apple Red", None),                        # full-width letters: NFKC
    "Physalis with Husk": ("Physalis with Husk", None),
    "Pomme d'Api": ("Pomme d'Api", None),
    "Cherry Wax Yellow 2": ("Cherry Wax Yellow 2", None),
    "Mûre (sauvage)": ("Mûre (sauvage)", None),
    "りんご": ("りんご", None),                                       # Hiragana
    "青りんご": ("青りんご", None),                                    # Han with Hiragana: written together
    "사과": ("사과", None),
    "Яблоко": ("Яблоко", None),                                    # all Cyrillic: one script
    "\u0410pple Red": (None, "mixes Cyrillic and Latin letters (a look-alike of another label)"),
    "Apple\u200bRed": (None, "holds the invisible character U+200B"),
    "\u202eApple Red": (None, "holds the invisible character U+202E"),
    "Apple\u0000": (None, "holds the character U+0000 (only letters, digits, spaces and -'’.,()&/+ are allowed)"),
    "Apple 🍎": (None, "holds the character U+1F34E (only letters, digits, spaces and -'’.,()&/+ are allowed)"),
    "unknown": (None, "'unknown' is a reserved word (it cannot be told from an answer)"),
    "Not Sure: Apple or Pear": (None, "'Not Sure: Apple or Pear' is a reserved word (it cannot be told from an "
                                      "answer)"),
    "NOT SURE": (None, "'NOT SURE' is a reserved word (it cannot be told from an answer)"),
    "": (None, "empty"),
    "   ": (None, "empty"),
    "a" * 1000: (None, f"longer than {MAX_LABEL_CHARS} characters (1000)"),
    "<b>Apple</b>": (None, "holds the character U+003C (only letters, digits, spaces and -'’.,()&/+ are allowed)"),
    # invisible characters Unicode calls marks or letters: "Banana" with one reads as "Banana"
    "Bana\u034fna": (None, "holds the invisible character U+034F"),        # combining grapheme joiner
    "Banana\ufe0f": (None, "holds the invisible character U+FE0F"),        # variation selector 16
    "Ba\u3164nana": (None, "holds the invisible character U+1160"),        # Hangul filler (NFKC: U+1160)
    "\u115fBanana": (None, "holds the invisible character U+115F"),
    "Banana\U000e0101": (None, "holds the invisible character U+E0101"),   # variation selector 18
    # letters new in Unicode 15-16 (browsers know them, Python 3.11's Unicode 14 does not): refused on both sides
    "Banana\U00011f04": (None, "holds the character U+11F04 (only letters, digits, spaces and -'’.,()&/+ are allowed)"),
    "\U0001e4d0": (None, "holds the character U+1E4D0 (only letters, digits, spaces and -'’.,()&/+ are allowed)"),
    "\U0002ebf0": (None, "holds the character U+2EBF0 (only letters, digits, spaces and -'’.,()&/+ are allowed)"),
    "Apple\U0001e030": (None, "holds the character U+1E030 (only letters, digits, spaces and -'’.,()&/+ are allowed)"),
}


def js_check(labels: list) -> list[dict]:
    """The page's LabelRules (web/src/labels.js) on the same labels, under Node, with the rules contract.json carries."""
    script = ("import {LabelRules} from './web/src/labels.js';\n"
              "let input = ''; process.stdin.on('data', (c) => { input += c; });\n"
              "process.stdin.on('end', () => { const {rules, labels} = JSON.parse(input);\n"
              "  const r = new LabelRules(rules);\n"
              "  process.stdout.write(JSON.stringify(labels.map((l) => r.check(l)))); });\n")
    done = subprocess.run(["node", "--input-type=module", "-e", script], input=json.dumps({"rules": rules(),
                                                                                          "labels": labels}),
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_labels_are_made_canonical_or_refused_with_the_reason():
    for text, want in CASES.items():
        assert check_label(text) == want, text
    assert check_label(None) == (None, None) and check_label(7) == (None, "not text")
    # a look-alike of a known label in one script is found by its skeleton (the job compares with trusted labels)
    assert skeleton("Аррlе") == skeleton("apple") == "apple" and skeleton("Apple") != skeleton("Appel")


def test_the_page_and_python_give_every_label_the_same_answer():
    """The cases above, every label of the catalog seed, and 2,000 random strings drawn from the characters that
    matter (ASCII, Latin-1, Cyrillic, Greek, CJK, kana, Hangul, combining marks, spaces of every kind, format and
    bidi controls, emoji): the page's answers equal Python's, reason for reason."""
    catalog = json.loads((ROOT / "data" / "catalog" / "catalog.json").read_text())
    labels = list(CASES) + [lab for f in catalog["fruits"] for lab in f["labels"]]
    pool = ([chr(c) for c in range(0x20, 0x7F)] + [chr(c) for c in range(0xA0, 0x180)] + list("АаВЕКМНОРСТХаеорсухіјѕ")
            + list("ΑΒΕΗΙΚΜΝΟΡΤΥΧαβγδεοστ") + list("青林檎苹果りんごリンゴ사과") + ["\u0301", "\u0308", "\u200b", "\u200d",
            "\u202e", "\u2066", "\ufeff", "\u00a0", "\u2003", "\u3000", "\t", "\n", "\x1c", "🍎", "\u00df", "ﬁ",
            "\u034f", "\ufe0f", "\u3164", "\uffa0", "\U00011f04", "\U0001e4d0", "\U0002ebf0", "\U0001e030",
            "\U0001e5d0", "\U00016d40", "\u1c89", "\ua7cb", "\U0001f8b0"])
    rng = random.Random(7)
    labels += ["".join(rng.choice(pool) for _ in range(rng.randint(0, 12))) for _ in range(2000)]
    python = [dict(zip(("label", "problem"), check_label(t))) for t in labels]
    page = js_check(labels)
    differ = [(t, p, j) for t, p, j in zip(labels, python, page) if p != j]
    assert not differ, differ[:5]
    assert sum(p["problem"] is None for p in python) > 200 and sum(p["problem"] is not None for p in python) > 200


def test_the_unicode_table_is_this_pythons_or_said():
    """contract/unicode.json is what ``python -m contract.labels`` writes from this Python's unicodedata (when its
    Unicode is the table's): both sides judge by the table, never by their own Unicode."""
    import unicodedata

    from contract.labels import tables, unicode_tables

    table = tables()
    assert table["unicode"] == "14.0.0" and all(len(table[k]) % 2 == 0 for k in ("assigned", "letters", "marks_digits"))
    if unicodedata.unidata_version == table["unicode"]:
        assert unicode_tables() == table


def test_the_python_edge_sends_a_refused_folder_label_as_no_label_and_says_so(tmp_path):
    """A folder named with a Cyrillic А (a look-alike of "Apple Red"): its photos are vectorized without a label, and
    the edge says which folder and why; a --label that breaks the rules is one error."""
    from PIL import Image

    from edge_client.vectorize import Summary, UserError, find_photos

    for folder in ("Apple Red", "\u0410pple Red", "Kiwi "):
        (tmp_path / folder).mkdir()
        Image.new("RGB", (20, 20), (200, 30, 30)).save(tmp_path / folder / "1.jpg")
    summary = Summary()
    photos = find_photos([tmp_path], summary=summary)
    assert sorted((p.source, p.label) for p in photos) == [
        ("Apple Red/1.jpg", "Apple Red"), ("Kiwi /1.jpg", "Kiwi"), ("\u0410pple Red/1.jpg", None)]
    assert summary.label_lines() == ["label '\u0410pple Red' refused (mixes Cyrillic and Latin letters (a look-alike "
                                     "of another label)): its 1 photo(s) are sent without a label"]
    with pytest.raises(UserError, match="--label: 'unknown' is a reserved word"):
        find_photos([tmp_path], label="unknown")
