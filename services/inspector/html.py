"""HTML building blocks of the inspector: escaping, the page frame, text blocks, chart data.

Every string that did not come from this package goes through ``esc`` (or ``text_block``)
before it reaches a page, which also shows bidirectional controls (U+202E reverses what
follows it) as their code, ``[U+202E]``, so untrusted text cannot reorder what is shown; data for the charts travels as JSON inside a
``<script type="application/json">`` element with ``<``, ``>`` and ``&`` written as
``\\u`` escapes, so no value can end that element, and the page's script reads it with
``JSON.parse`` and writes it with ``textContent`` only. Pages load nothing but
``/inspect/static/`` files.

    page("Recent requests", "<p>...</p>", active="recent")   # a whole document
    esc('<img onerror="x">')                                 # '&lt;img onerror=&quot;x&quot;&gt;'
"""

from __future__ import annotations

import html
import json
import re

STATIC = "/inspect/static"
NAV = (("home", "/inspect", "Inspector"), ("recent", "/inspect/recent", "Recent requests"),
       ("try", "/inspect/try", "Try it"), ("eval", "/inspect/eval", "Evaluation reports"),
       ("run", "/inspect/run", "Training runs"))
# Pages only run our own script and style files: inline scripts, other origins and
# plug-ins are refused by the browser even if some text escaped escaping.
BIDI_CONTROLS = re.compile("[\u202a-\u202e\u2066-\u2069]")
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")


def esc(value) -> str:
    """``value`` as text inside HTML (element content or a quoted attribute)."""
    text = html.escape("" if value is None else str(value), quote=True)
    return BIDI_CONTROLS.sub(lambda m: f"[U+{ord(m.group()):04X}]", text)


def text_block(value: str, cls: str = "text") -> str:
    """Untrusted text shown verbatim. The newline after ``<pre>`` keeps a leading newline
    of the text: HTML drops the first newline of a ``pre`` element."""
    return f'<pre class="{cls}">\n{esc(value)}</pre>'


def json_data(element_id: str, value) -> str:
    """``value`` as JSON the page's script reads with ``JSON.parse`` (never executed)."""
    raw = json.dumps(value, allow_nan=False).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return f'<script type="application/json" id="{esc(element_id)}">{raw}</script>'


def fmt(value, digits: int = 2) -> str:
    """A number for a table cell; an absent value is a dash, never 0."""
    if value is None:
        return "&mdash;"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return esc(value)


def pct(value) -> str:
    return "&mdash;" if value is None else f"{100 * value:.1f}%"


def page(title: str, body: str, active: str = "", charts: bool = False) -> str:
    """A whole HTML document with the navigation bar; ``charts`` loads uPlot and the page script."""
    nav = "".join(f'<a href="{href}"{" class=active" if key == active else ""}>{label}</a>'
                  for key, href, label in NAV)
    head_charts = (f'<link rel="stylesheet" href="{STATIC}/uPlot.min.css">'
                   f'<script src="{STATIC}/uPlot.iife.min.js" defer></script>') if charts else ""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{esc(title)} - GRM inspector</title>'
            f'<link rel="stylesheet" href="{STATIC}/inspector.css">{head_charts}'
            f'<script src="{STATIC}/inspector.js" defer></script></head>'
            f'<body><nav>{nav}</nav><main><h1>{esc(title)}</h1>{body}</main></body></html>')


def table(headers: list[str], rows: list[list[str]], cls: str = "") -> str:
    """A table from cells that are already HTML (escape untrusted text before)."""
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def facts(pairs: list[tuple[str, str]]) -> str:
    """A definition list of (label, HTML value) pairs."""
    return '<dl class="facts">' + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in pairs) + "</dl>"
