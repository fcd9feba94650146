"""What a label may be: the name a person gives the fruit in a photo, sent with its vector.

One definition for every side (the Python edge, the page through ``contract.json``, the job): a label is made
canonical (Unicode NFKC, every run of white space one space, none at either end), and refused, with the reason, when

- it is empty or longer than :data:`MAX_LABEL_CHARS` characters;
- it is a reserved word (:data:`RESERVED`: "unknown", "not sure", ...), which cannot be told from an answer;
- it holds a character that is not a letter, a combining mark, a digit, a space or one of :data:`PUNCTUATION`
  (control, invisible and bidi-control characters, symbols, emoji), or an invisible one that Unicode calls a letter
  or a mark (:data:`INVISIBLE`: the combining grapheme joiner, variation selectors, the Hangul fillers: "Banana"
  with one of them reads as "Banana");
- its letters mix scripts (Latin and Cyrillic: "Аpple" with a Cyrillic А), but for scripts written together
  (:data:`TOGETHER`: Han with kana, Han with Hangul). Scripts are the code point ranges of :data:`SCRIPTS`, the same
  table the page uses; a letter outside them counts as the script "other".

Which characters are letters, marks and digits is decided by one table for both sides, ``contract/unicode.json``
(Unicode 14.0, as Python 3.11's ``unicodedata``; :func:`unicode_tables` writes it), never by each side's own Unicode:
a browser knows letters new in Unicode 15-17 that Python does not, and the two decided 4 of 63 such labels apart. A
character the table does not know (unassigned in its version) is refused before anything else, so neither side's
normalization of it matters.

The job adds what needs the data: a label that looks like a label a trusted source knows but is not it (its
:func:`skeleton` equals theirs) is refused, and a label no trusted source knows waits for the operator
(:mod:`cloud_pca.votes`). An index holds at most :data:`MAX_LABELS` labels.
"""
from __future__ import annotations

import json
import re
import unicodedata
from bisect import bisect_right
from functools import lru_cache
from pathlib import Path

MAX_LABEL_CHARS = 64
MAX_LABELS = 1000
RESERVED = ("unknown", "not sure", "not a fruit", "none", "null", "n/a", "na", "nan", "undefined", "label", "_", "-")
PUNCTUATION = "-'’.,()&/+"
SCRIPTS = (
    ("Latin", ((0x41, 0x5A), (0x61, 0x7A), (0xAA, 0xAA), (0xBA, 0xBA), (0xC0, 0x24F), (0x1E00, 0x1EFF),
               (0x2C60, 0x2C7F), (0xA720, 0xA7FF), (0xAB30, 0xAB6F))),
    ("Greek", ((0x370, 0x3FF), (0x1F00, 0x1FFF))),
    ("Cyrillic", ((0x400, 0x52F), (0x1C80, 0x1C8F), (0x2DE0, 0x2DFF), (0xA640, 0xA69F))),
    ("Armenian", ((0x530, 0x58F),)),
    ("Hebrew", ((0x590, 0x5FF),)),
    ("Arabic", ((0x600, 0x6FF), (0x750, 0x77F), (0x8A0, 0x8FF))),
    ("Devanagari", ((0x900, 0x97F),)),
    ("Bengali", ((0x980, 0x9FF),)),
    ("Tamil", ((0xB80, 0xBFF),)),
    ("Thai", ((0xE00, 0xE7F),)),
    ("Georgian", ((0x10A0, 0x10FF),)),
    ("Han", ((0x2E80, 0x2FDF), (0x3005, 0x3007), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF),
             (0x20000, 0x3134F))),
    ("Hiragana", ((0x3040, 0x309F),)),
    ("Katakana", ((0x30A0, 0x30FF), (0x31F0, 0x31FF))),
    ("Hangul", ((0x1100, 0x11FF), (0x3130, 0x318F), (0xAC00, 0xD7AF))),
)
TOGETHER = (("Han", "Hiragana", "Katakana"), ("Han", "Hangul"))
# Letters of other scripts drawn like Latin ones (a few Cyrillic and Greek; UTS #39's idea, a small table): a label
# whose skeleton is a known label's, and which is not that label, is a look-alike.
CONFUSABLES = {
    "а": "a", "в": "b", "е": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c", "т": "t", "у": "y",
    "х": "x", "і": "i", "ј": "j", "ѕ": "s", "ԁ": "d", "һ": "h", "ӏ": "l", "ԛ": "q", "ԝ": "w",
    "α": "a", "β": "b", "ε": "e", "η": "n", "ι": "i", "κ": "k", "μ": "m", "ν": "v", "ο": "o", "ρ": "p", "τ": "t",
    "υ": "u", "χ": "x", "ω": "w", "ϲ": "c", "ϳ": "j",
}
# Default_Ignorable_Code_Point (Unicode's DerivedCoreProperties): drawn as nothing, whatever their category.
INVISIBLE = ((0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160), (0x17B4, 0x17B5), (0x180B, 0x180F),
             (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x206F), (0x3164, 0x3164), (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF),
             (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF))
TABLES = Path(__file__).with_name("unicode.json")
SPACES = "\t\n\x0b\x0c\r \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"   # (a class: both sides)
_SPACE = re.compile(f"[{SPACES}]+")


def canonical_label(text: str) -> str:
    """NFKC, white space runs made one space, none at the ends."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text)).strip(" ")


def unicode_tables() -> dict:
    """The character classes labels are judged by, from this Python's ``unicodedata``: each a flat list of half-open
    code point ranges ``[lo0, hi0, lo1, hi1, ...]`` (``lo <= cp < hi``): assigned (not Cn), letters (L*), marks and
    digits (M*, Nd), and what a text shown as it is may not hold (controls: Cc Cf Co Cs Zl Zp; the catalog's rule). ``contract/unicode.json`` holds them (``python -m contract.labels`` writes it)."""
    def ranges(pred) -> list[int]:
        out, start = [], None
        for cp in range(0x110000):
            if pred(cp) != (start is not None):
                out.append(cp)
                start = cp if start is None else None
        return out + ([0x110000] if start is not None else [])

    cats = [unicodedata.category(chr(cp)) for cp in range(0x110000)]
    return {"unicode": unicodedata.unidata_version, "assigned": ranges(lambda c: cats[c] != "Cn"),
            "letters": ranges(lambda c: cats[c][0] == "L"),
            "marks_digits": ranges(lambda c: cats[c][0] == "M" or cats[c] == "Nd"),
            "controls": ranges(lambda c: cats[c] in ("Cc", "Cf", "Co", "Cs", "Zl", "Zp"))}


@lru_cache(maxsize=1)
def tables() -> dict:
    """``contract/unicode.json``: the classes both sides judge labels by."""
    # through the package's loader, not the file system: on EMR the package is inside the --py-files zip
    from importlib import resources

    return json.loads(resources.files(__package__).joinpath(TABLES.name).read_text(encoding="utf-8"))


def _in(flat: list[int], cp: int) -> bool:
    return bisect_right(flat, cp) % 2 == 1


def control_in(text: str) -> str | None:
    """The first character of ``text`` that a text shown as it is may not hold (a control, format, private-use or
    surrogate character, a line or paragraph separator: the table's ``controls``), or None."""
    flat = tables()["controls"]
    return next((ch for ch in text if _in(flat, ord(ch))), None)


def _invisible(cp: int) -> bool:
    return any(lo <= cp <= hi for lo, hi in INVISIBLE)


def script_of(ch: str) -> str | None:
    """The script of a letter (a name of :data:`SCRIPTS`, or "other"); None for anything but a letter."""
    cp = ord(ch)
    if not _in(tables()["letters"], cp):
        return None
    for name, ranges in SCRIPTS:
        if any(lo <= cp <= hi for lo, hi in ranges):
            return name
    return "other"


def _not_allowed(ch: str) -> str:
    return f"holds the character U+{ord(ch):04X} (only letters, digits, spaces and {PUNCTUATION} are allowed)"


def label_problem(canonical: str) -> str | None:
    """Why a canonical label is refused (the text of :func:`check_label`'s reason), or None."""
    if not canonical:
        return "empty"
    if len(canonical) > MAX_LABEL_CHARS:
        return f"longer than {MAX_LABEL_CHARS} characters ({len(canonical)})"
    if canonical.casefold() in RESERVED or canonical.casefold().startswith("not sure"):
        return f"'{canonical}' is a reserved word (it cannot be told from an answer)"
    scripts = []
    t = tables()
    for ch in canonical:
        cp = ord(ch)
        if _invisible(cp):
            return f"holds the invisible character U+{cp:04X}"
        if _in(t["letters"], cp) or _in(t["marks_digits"], cp) or ch == " " or ch in PUNCTUATION:
            script = script_of(ch)
            if script is not None and script not in scripts:
                scripts.append(script)
            continue
        return _not_allowed(ch)
    if len(scripts) > 1 and not any(set(scripts) <= set(group) for group in TOGETHER):
        return f"mixes {' and '.join(scripts)} letters (a look-alike of another label)"
    return None


def check_label(text) -> tuple[str | None, str | None]:
    """(the canonical label, None) or (None, why it is refused); (None, None) for no label."""
    if text is None:
        return None, None
    if not isinstance(text, str):
        return None, "not text"
    assigned = tables()["assigned"]
    for ch in text:   # before NFKC: what a character the table does not know becomes differs between Unicode versions
        if not _in(assigned, ord(ch)):
            return None, _not_allowed(ch)
    canonical = canonical_label(text)
    problem = label_problem(canonical)
    return (None, problem) if problem else (canonical, None)


def skeleton(label: str) -> str:
    """What a label looks like: casefolded, confusable letters replaced by the Latin ones they are drawn like."""
    return "".join(CONFUSABLES.get(ch, ch) for ch in canonical_label(label).casefold())


def rules() -> dict:
    """The rules as data, for the page (``contract.json``): it applies the same ones (``web/src/labels.js``)."""
    return {"max_chars": MAX_LABEL_CHARS, "reserved": list(RESERVED), "punctuation": PUNCTUATION, "spaces": SPACES,
            "scripts": [[name, [list(r) for r in ranges]] for name, ranges in SCRIPTS],
            "together": [list(g) for g in TOGETHER], "invisible": [list(r) for r in INVISIBLE], "unicode": tables()}


if __name__ == "__main__":   # python -m contract.labels: write contract/unicode.json from this Python's unicodedata
    TABLES.write_text(json.dumps(unicode_tables(), separators=(",", ":")) + "\n", encoding="utf-8")
    print(f"wrote {TABLES} (Unicode {unicodedata.unidata_version})")
