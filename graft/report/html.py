"""The HTML page: one self-contained file (inline CSS, images as data: URIs, no scripts, no URLs).

Every string that comes from a bundle goes through :func:`esc` before it
reaches the page: labels and paths can contain anything.
"""

from __future__ import annotations

import html
from datetime import datetime, timezone

CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d1d1f;background:#f6f7f9}
header{background:#23395d;color:#fff;padding:18px 32px}
header h1{margin:0 0 4px;font-size:24px;word-break:break-word}
header p{margin:0;opacity:.85}
nav{background:#fff;border-bottom:1px solid #dde1e7;padding:8px 32px}
nav a{margin-right:18px;color:#23395d;text-decoration:none;font-weight:600}
main{max-width:1180px;margin:0 auto;padding:8px 32px 48px}
section{background:#fff;border:1px solid #dde1e7;border-radius:8px;padding:8px 24px 20px;margin:20px 0}
h2{border-bottom:2px solid #23395d;padding-bottom:4px}
h3{margin-top:22px}
table{border-collapse:collapse;margin:10px 0;font-size:14px}
th,td{border:1px solid #d5d9e0;padding:4px 9px;text-align:left;vertical-align:top}
th{background:#eef1f5}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.key{font-weight:600;background:#fafbfc;white-space:nowrap}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:13px;word-break:break-all}
img.chart{max-width:100%;height:auto;border:1px solid #eee}
img.chart.wide{max-width:none;width:min(2400px,calc(100% * 2))}
.scroll{overflow-x:auto}
.status-ok{color:#1a7f37;font-weight:600}
.status-flagged{color:#c62828;font-weight:600}
.status-unverified{color:#8a6d00;font-weight:600}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:8px 12px}
.owner{color:#8a6d00;font-style:italic}
.thumbs{display:flex;flex-wrap:wrap;gap:12px}
figure.thumb{margin:0;width:132px;font-size:12px;text-align:center}
figure.thumb img,.placeholder{width:96px;height:96px;object-fit:contain;background:#eee;display:block;margin:0 auto}
.placeholder{display:flex;align-items:center;justify-content:center;color:#777;font-size:11px;padding:4px;box-sizing:border-box}
figcaption{word-break:break-word}
#exports-table{font-size:13px}
#exports-table td:last-child{min-width:14em}
dl.card dt{font-weight:600;margin-top:10px}
dl.card dd{margin-left:18px}
footer{color:#666;font-size:13px;text-align:center;padding:20px}
"""
REPORT_NAME = "report.html"
CARD_NAME = "MODEL_CARD.md"
NAV = (("summary", "Summary"), ("probe", "Choice of backbone"), ("training", "Training"), ("results", "Held-out results"),
       ("exports", "Exports"), ("model-card", "Model card"))


def esc(value) -> str:
    """Any value as text that is safe in HTML element content and attribute values."""
    return html.escape(str(value), quote=True)


def table(headers: list[str], rows: list[list], numeric: set[int] = frozenset(), css_id: str = "",
          raw: set[int] = frozenset()) -> str:
    """An HTML table; cells are escaped unless their column index is in ``raw`` (already HTML)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    cell = '<td class="num">{}</td>', "<td>{}</td>"
    body = "".join("<tr>" + "".join(cell[i not in numeric].format(c if i in raw else esc(c))
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    ident = f' id="{esc(css_id)}"' if css_id else ""
    return f'<div class="scroll"><table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def facts_table(pairs: list[tuple[str, str]]) -> str:
    """A two-column key/value table (values already HTML)."""
    rows = "".join(f'<tr><td class="key">{esc(k)}</td><td>{v}</td></tr>' for k, v in pairs)
    return f'<div class="scroll"><table class="facts"><tbody>{rows}</tbody></table></div>'


def image(uri: str, alt: str, css_id: str = "", wide: bool = False) -> str:
    """An <img> of a data: URI (nothing else is ever a source on this page).

    ``wide`` shows the image at up to twice the page's width in a horizontally
    scrolling box (a confusion matrix of many labels) instead of shrinking it.
    """
    if not uri.startswith("data:"):
        raise ValueError("report images must be data: URIs")
    ident = f' id="{esc(css_id)}"' if css_id else ""
    tag = f'<img class="chart{" wide" if wide else ""}"{ident} src="{uri}" alt="{esc(alt)}">'
    return f'<div class="scroll">{tag}</div>' if wide else tag


def note(text_html: str) -> str:
    return f'<p class="note">{text_html}</p>'


def card_html(card) -> str:
    """The model card sections as HTML (the same content as MODEL_CARD.md)."""
    from graft.report.card import OWNER, Owner, Table

    parts = []
    for title, fields in card:
        parts.append(f"<h3>{esc(title)}</h3><dl class=\"card\">")
        for name, value in fields:
            if isinstance(value, Owner):
                body = f'<span class="owner">{esc(OWNER)}</span>' + (f" {esc(value.hint)}" if value.hint else "")
            elif isinstance(value, Table):
                body = table(value.headers, value.rows)
            elif isinstance(value, list):
                body = "<ul>" + "".join(f"<li>{esc(item)}</li>" for item in value) + "</ul>"
            else:
                body = esc(value)
            parts.append(f"<dt>{esc(name)}</dt><dd>{body}</dd>")
        parts.append("</dl>")
    return "".join(parts)


def page(manifest: dict, sections: dict[str, str]) -> str:
    """The whole document: header, navigation, the sections in NAV order, footer."""
    import graft

    name = manifest.get("name", "bundle")
    nav = "".join(f'<a href="#{key}">{esc(title)}</a>' for key, title in NAV if key in sections)
    body = "".join(f'<section id="{key}"><h2>{esc(title)}</h2>{sections[key]}</section>'
                   for key, title in NAV if key in sections)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
            f'img-src data:; style-src \'unsafe-inline\'">'
            f"<title>graft report: {esc(name)}</title><style>{CSS}</style></head><body>"
            f"<header><h1>{esc(name)}</h1><p>{len(manifest['labels'])} labels · built "
            f"{esc(manifest.get('created', '?'))} with graft {esc(manifest.get('graft_version', '?'))}</p>"
            f"</header><nav>{nav}</nav><main>{body}</main>"
            f"<footer>Generated from graft.json by graft {esc(graft.__version__)} at {esc(now)}. "
            f"This file is self-contained and works offline.</footer></body></html>\n")
