"""The bricks of report.html: escaped text, inlined PNGs, tables, notes, sections and the page around them.

Everything read from a file (series uids, paths, metric names, JSON values) is untrusted: it reaches
the page only through `esc`. Images are inlined as base64 data: URIs after `shrink`, so the file is
self-contained (no network, no scripts) and its size stays bounded.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Iterable, Sequence

MAX_SIDE_PX = 560  # longest side of an inlined image: a synth preview of 10 nodules is 800 x 3000 px

_CSS = """
body{font:15px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1180px;padding:0 18px 40px;color:#1b1b1b}
h1{font-size:1.6em;margin:18px 0 4px}h2{font-size:1.25em;border-bottom:1px solid #ccc;padding-bottom:3px;margin-top:28px}
h3{font-size:1.05em;margin:16px 0 6px}
table{border-collapse:collapse;margin:6px 0}td,th{border:1px solid #ddd;padding:3px 9px;text-align:left}
th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums}
.note{background:#fff6e0;border-left:4px solid #e0a800;padding:6px 10px;margin:8px 0}
.grid{display:flex;flex-wrap:wrap;gap:10px}figure{margin:0;max-width:100%}figure img{max-width:100%;display:block}
figcaption{font-size:.82em;color:#444;word-break:break-all}code{background:#f3f3f3;padding:0 3px}
nav a{margin-right:12px}.wide{overflow-x:auto}.big{font-size:1.3em;font-weight:600}
"""


def esc(value: object) -> str:
    """HTML-escaped text of anything (quotes included, so it is safe inside attributes too)."""
    return html.escape(str(value), quote=True)


def number(value: object, digits: int = 3) -> str:
    """A float as fixed-point text; '-' for None, NaN or a non-number (a JSON file may hold anything)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "-"
    return f"{value:.{digits}f}"


def shrink(png: bytes, max_side: int = MAX_SIDE_PX) -> bytes:
    """The PNG scaled down (never up) so that its longest side is at most `max_side` pixels."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        if max(image.size) <= max_side:
            return png
        image = image.convert("RGB")
        image.thumbnail((max_side, max_side))
        out = io.BytesIO()
        image.save(out, format="PNG", optimize=True)
        return out.getvalue()


def figure_png(fig, dpi: int = 80) -> bytes:
    """A matplotlib Figure as PNG bytes (in memory: the report owns no image files)."""
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=dpi)
    return out.getvalue()


def image(png: bytes, alt: str, caption: str = "", *, max_side: int = MAX_SIDE_PX) -> str:
    """A <figure> holding the PNG inlined as a data: URI, with an escaped caption."""
    data = base64.b64encode(shrink(png, max_side)).decode("ascii")
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure style="max-width:{int(max_side)}px"><img src="data:image/png;base64,{data}" alt="{esc(alt)}">{cap}</figure>'


def grid(items: Iterable[str]) -> str:
    return '<div class="grid">' + "".join(items) + "</div>"


def note(text: str) -> str:
    """A highlighted sentence saying what is missing and how to get it (text is escaped)."""
    return f'<p class="note">{esc(text)}</p>'


def para(text: str) -> str:
    return f"<p>{esc(text)}</p>"


def table(header: Sequence[str], rows: Iterable[Sequence[object]], numeric: Sequence[int] = ()) -> str:
    """An HTML table; every cell escaped; columns in `numeric` right-aligned."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(f'<td class="n">{esc(c)}</td>' if i in numeric else f"<td>{esc(c)}</td>" for i, c in enumerate(row))
        + "</tr>"
        for row in rows
    )
    return f'<div class="wide"><table><tr>{head}</tr>{body}</table></div>'


def section(anchor: str, title: str, body: str) -> str:
    """One <section id=anchor> with its <h2>; `body` is HTML already built from escaped pieces."""
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{body}</section>'


def page(title: str, subtitle: str, sections: Sequence[tuple[str, str, str]]) -> str:
    """The whole document: inline CSS, a table of contents, then each (anchor, title, body) section."""
    nav = "".join(f'<a href="#{esc(a)}">{esc(t)}</a>' for a, t, _ in sections)
    parts = "".join(section(a, t, b) for a, t, b in sections)
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{esc(title)}</h1><p>{esc(subtitle)}</p><nav>{nav}</nav>{parts}</body></html>\n"
    )
