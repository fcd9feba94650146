"""A self-contained HTML report (plots embedded as base64 PNG), for the demo and the benchmarks.

    page = Report("Fruits! demo")
    page.heading("Explained variance"); page.table(rows); page.image(png_bytes, "scree")
    page.write("out/demo/report.html")
"""
from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Iterable, Sequence

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.6em 0; } td, th { border: 1px solid #ccc; padding: 4px 10px; }
th { background: #f3f3f3; text-align: left; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.4em 0; } .note { color: #666; font-size: 0.92em; }
.grid { display: grid; grid-template-columns: 1fr 1fr; gap: 12px; }
"""


class Report:
    def __init__(self, title: str, subtitle: str = ""):
        self.parts = [f"<h1>{html.escape(title)}</h1>"]
        if subtitle:
            self.parts.append(f"<p class='note'>{html.escape(subtitle)}</p>")
        self.title = title
        self.markdown = [f"# {title}", "", subtitle, ""] if subtitle else [f"# {title}", ""]

    def heading(self, text: str) -> None:
        self.parts.append(f"<h2>{html.escape(text)}</h2>")
        self.markdown += [f"## {text}", ""]

    def text(self, text: str, note: bool = False) -> None:
        cls = " class='note'" if note else ""
        self.parts.append(f"<p{cls}>{html.escape(text)}</p>")
        self.markdown += [text, ""]

    def table(self, rows: Sequence[dict], columns: Iterable[str] | None = None) -> None:
        if not rows:
            return
        cols = list(columns or rows[0].keys())

        def cell(v):
            if isinstance(v, float):
                v = f"{v:,.4g}" if abs(v) < 1000 else f"{v:,.0f}"
            elif isinstance(v, int) and not isinstance(v, bool):
                v = f"{v:,}"
            return "" if v is None else str(v)

        head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
        body = "".join("<tr>" + "".join(
            f"<td class='{'n' if isinstance(r.get(c), (int, float)) and not isinstance(r.get(c), bool) else ''}'>"
            f"{html.escape(cell(r.get(c)))}</td>" for c in cols) + "</tr>" for r in rows)
        self.parts.append(f"<table><tr>{head}</tr>{body}</table>")
        self.markdown += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        self.markdown += ["| " + " | ".join(cell(r.get(c)) for c in cols) + " |" for r in rows]
        self.markdown.append("")

    def images(self, pngs: Sequence[tuple[str, bytes]]) -> None:
        tags = "".join(f"<figure><img alt='{html.escape(name)}' src='data:image/png;base64,"
                       f"{base64.b64encode(png).decode()}'><figcaption class='note'>{html.escape(name)}"
                       f"</figcaption></figure>" for name, png in pngs)
        self.parts.append(f"<div class='grid'>{tags}</div>")
        self.markdown += [f"![{name}]({name})" for name, _ in pngs] + [""]

    def html(self) -> str:
        return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
                f"<style>{_STYLE}</style></head><body>{''.join(self.parts)}</body></html>\n")

    def write(self, path: str | Path, markdown: bool = False) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.html(), encoding="utf-8")
        if markdown:
            path.with_suffix(".md").write_text("\n".join(self.markdown) + "\n", encoding="utf-8")
        return path
