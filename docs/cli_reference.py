"""The CLI reference (docs/reference/cli.md), written from the commands' own argument parsers: never by hand.

    python docs/cli_reference.py --write     # what ./run docs runs before building
    python docs/cli_reference.py --check     # exit 1 when the committed page differs (the tests check it too)
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PAGE = ROOT / "docs" / "reference" / "cli.md"
INTRO = """# Command reference

Every command's `--help`, written into this page by `docs/cli_reference.py` from the commands' own argument parsers
(`./run docs` writes it; a test fails when the page and the parsers differ). What each command is for, with examples,
is in the pages of this manual; this page is what the commands say of themselves.
"""


def parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    """(the command as a person types it, its parser) for every command the project installs or ./run runs."""
    from bootstrap.cli import add_emr_commands
    from cloud_pca.cli import build_parser as cloud
    from demo.__main__ import build_parser as demo
    from demo.stack import build_parser as stack
    from edge_client.cli import build_parser as edge
    from models.cli import build_parser as export
    from web.__main__ import build_parser as web

    return [("fruits-edge", edge()), ("fruits-cloud", cloud(extend=add_emr_commands)), ("fruits-export", export()),
            ("./run demo", demo()), ("./run web", stack()), ("./run web serve|build|vectorize", web())]


def walk(name: str, parser: argparse.ArgumentParser) -> list[tuple[str, str]]:
    """(command, its help) for a parser and, depth first, each of its subcommands."""
    out = [(name, parser.format_help())]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, p in action.choices.items():
                out += walk(f"{name} {sub}", p)
    return out


def run_script() -> str:
    """The ./run script's own usage (its header comment, what `./run` prints)."""
    lines = (ROOT / "run").read_text().splitlines()[1:10]
    return "\n".join(line[2:] if line.startswith("# ") else line.lstrip("#") for line in lines)


def page() -> str:
    os.environ["COLUMNS"] = "110"        # argparse wraps to the terminal: the same width everywhere
    parts = [INTRO, "## ./run\n", "```text\n" + run_script().rstrip() + "\n```\n"]
    for top, parser in parsers():
        for name, text in walk(top, parser):
            parts.append(f"## {name}\n\n```text\n{text.rstrip()}\n```\n")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args(argv)
    text = page()
    if args.check:
        if not PAGE.is_file() or PAGE.read_text() != text:
            print(f"{PAGE.relative_to(ROOT)} differs from the commands' parsers: run python docs/cli_reference.py "
                  f"--write (./run docs does)", file=sys.stderr)
            return 1
        return 0
    PAGE.parent.mkdir(parents=True, exist_ok=True)
    PAGE.write_text(text)
    print(f"wrote {PAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
