"""The page speaks the person's language: every message in English and French (web/src/i18n.js), every message the
code uses defined, the reasons the page's steps give turned into French, and no string of the other language on a
page in one (in the three engines, tests/test_web_engines.py)."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def node(script: str, payload=None):
    done = subprocess.run(["node", "--input-type=module", "-e", script], input=json.dumps(payload or {}), cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def messages() -> dict:
    return node("import {MESSAGES} from './web/src/i18n.js'; process.stdout.write(JSON.stringify(MESSAGES));")


def test_every_message_is_in_every_language_and_every_message_used_exists():
    """A new message without its translation, or a key the code uses that no table has, fails here."""
    m = messages()
    assert set(m) == {"en", "fr"}
    assert set(m["en"]) == set(m["fr"]), (set(m["en"]) ^ set(m["fr"]))
    for lang, table in m.items():
        for key, text in table.items():
            assert isinstance(text, str) and text.strip(), (lang, key)
            assert set(re.findall(r"\{(\w+)\}", text)) == set(re.findall(r"\{(\w+)\}", m["en"][key])), (lang, key)
    used = set()
    for path in (ROOT / "web" / "src").glob("*.js"):     # t('key', ...) and problems' {key: 'key'}
        used |= {a or b for a, b in re.findall(r"\bt\('(\w+)'|\bkey: '(\w+)'", path.read_text())}
    used |= set(re.findall(r'data-i18n(?:-placeholder|-title)?="(\w+)"', (ROOT / "web" / "static" / "index.html")
                           .read_text()))
    plural = {k.rsplit("_", 1)[0] for k in m["en"] if k.endswith(("_one", "_other"))}
    missing = {k for k in used if k not in m["en"] and k not in plural}
    assert not missing, missing
    # a key nobody uses is a translation that drifts: every key is used (plural forms through their base)
    unused = {k for k in m["en"] if k not in used and k.rsplit("_", 1)[0] not in used and k not in (
        "energy_kj", "energy_kcal", "water_g", "sugars_g", "fibre_g", "vitamin_c_mg", "potassium_mg", "season",
        "storage", "title")}
    assert not unused, unused


def test_the_reasons_the_page_gives_read_in_french():
    """The page's own reasons (a photo refused, a label refused, an upload set aside) are Python's words in English
    (tests compare them); in French each is translated whole, none left in English."""
    from contract.labels import check_label

    reasons = ["empty file (0 bytes)", "not an image this page can identify",
               "4,294,967,296 bytes, over the limit of 67,108,864 bytes for a photo: not read",
               "20000x20000 = 400000000 pixels is over the limit of 120000000 (decompression bomb?); not decoded",
               "an animation (GIF, 3 frames), not a photo", "skipped: not a photo (extension .txt)",
               "an SVG is a vector drawing, not a photo: export it as JPEG or PNG",
               "offline: the files wait in the queue and go when the network is back",
               "cannot reach S3 (Failed to fetch); the files wait in the queue and go when the network is back",
               "PNG decoded by this browser differently from Pillow; transparency composited differently by this "
               "browser (premultiplied alpha)"]
    reasons += [check_label(x)[1] for x in ("", "a" * 70, "unknown", "Apple\u200bRed", "Apple 🍎", "\u0410pple")]
    got = node("import * as i18n from './web/src/i18n.js';\n"
               "let input = ''; process.stdin.on('data', (c) => { input += c; });\n"
               "process.stdin.on('end', () => { const r = JSON.parse(input); i18n.setLanguage('fr');\n"
               "  process.stdout.write(JSON.stringify(r.map((x) => i18n.reason(x)))); });", reasons)
    for en, fr in zip(reasons, got):
        assert fr != en, en
        for word in ("the ", " is ", "not ", "bytes", "over the limit", "wait", "network", "letters"):
            assert word not in fr, (en, fr)
