"""Reports as one self-contained HTML file: inline CSS (with print rules) and inline SVG bar
charts, no scripts, no fonts, no links to anything outside the file.

The file is meant to be mailed to a vendor or attached to a CI run and opened offline, so it
must not fetch anything: every value is escaped and no external reference is ever written.
"""

from __future__ import annotations

from html import escape

from connector.reports.blocks import Block, Bullets, Chart, Heading, Para, Table

_CSS = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 1100px; padding: 24px 28px 48px;
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
  color: #1f2328; background: #fff; }
h1 { font-size: 22px; margin: 0 0 6px; }
h2 { font-size: 17px; margin: 28px 0 8px; padding-bottom: 4px; border-bottom: 1px solid #d0d7de; }
h3 { font-size: 15px; margin: 18px 0 6px; }
p { margin: 6px 0; }
table { border-collapse: collapse; width: 100%; margin: 8px 0 14px; font-size: 13px; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid #e6e8eb;
  vertical-align: top; overflow-wrap: anywhere; }
th { background: #f6f8fa; font-weight: 600; }
td.num, th.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
tr.bad td { background: #ffebe9; } tr.warn td { background: #fff8c5; }
tr.ok td:first-child { border-left: 3px solid #1a7f37; }
tr.bad td:first-child { border-left: 3px solid #cf222e; }
.tone-ok { color: #1a7f37; } .tone-bad { color: #cf222e; } .tone-warn { color: #9a6700; }
.tone-muted { color: #656d76; }
.verdict { font-size: 18px; font-weight: 700; padding: 8px 12px; border-radius: 6px;
  display: inline-block; margin: 6px 0; }
.verdict.tone-ok { background: #dafbe1; } .verdict.tone-bad { background: #ffebe9; }
.verdict.tone-warn { background: #fff8c5; }
figure { margin: 8px 0 16px; } figcaption { font-weight: 600; margin-bottom: 4px; }
svg { max-width: 100%; height: auto; }
ul { margin: 4px 0 10px; padding-left: 22px; }
@media print {
  body { max-width: none; padding: 0; font-size: 11px; }
  h2 { break-after: avoid; } table, figure { break-inside: avoid; }
  tr.bad td, tr.warn td, .verdict { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
  @page { margin: 14mm; }
}
"""

_BAR_COLOURS = {
    "ok": "#2da44e",
    "warn": "#d4a72c",
    "bad": "#cf222e",
    "muted": "#8c959f",
    "": "#0969da",
}


def render_html(blocks: list[Block], title: str) -> str:
    body: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            level = min(max(block.level, 1), 3)
            body.append(f"<h{level}>{escape(block.text)}</h{level}>")
        elif isinstance(block, Para):
            tone = f"tone-{block.tone}" if block.tone else ""
            if block.strong:
                body.append(f'<p><span class="verdict {tone}">{escape(block.text)}</span></p>')
            else:
                attr = f' class="{tone}"' if tone else ""
                body.append(f"<p{attr}>{escape(block.text)}</p>")
        elif isinstance(block, Bullets):
            items = "".join(f"<li>{escape(item)}</li>" for item in block.items)
            body.append(f"<ul>{items}</ul>")
        elif isinstance(block, Table):
            body.append(_table(block))
        elif isinstance(block, Chart):
            body.append(_chart(block))
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def _table(table: Table) -> str:
    head = "".join(
        f'<th class="num">{escape(c)}</th>' if i in table.numeric else f"<th>{escape(c)}</th>"
        for i, c in enumerate(table.columns)
    )
    rows = []
    for index, row in enumerate(table.rows):
        tone = table.tones[index] if index < len(table.tones) else ""
        attr = f' class="{tone}"' if tone else ""
        cells = "".join(
            f'<td class="num">{escape(c)}</td>' if i in table.numeric else f"<td>{escape(c)}</td>"
            for i, c in enumerate(row)
        )
        rows.append(f"<tr{attr}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _chart(chart: Chart) -> str:
    """Horizontal bars in an inline SVG: label, bar, value text."""
    row_height, label_width, bar_width, text_width = 20, 190, 420, 150
    width = label_width + bar_width + text_width
    height = max(1, len(chart.bars)) * row_height + 4
    parts = [
        # No xmlns: inline SVG in HTML needs none, and the file names no URL at all.
        f'<svg role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-size="12" '
        f'font-family="system-ui, sans-serif"><title>{escape(chart.title)}</title>'
    ]
    for index, bar in enumerate(chart.bars):
        y = index * row_height + 2
        share = 0.0 if chart.scale <= 0 else max(0.0, min(1.0, bar.value / chart.scale))
        filled = round(share * bar_width, 1)
        label = bar.label if len(bar.label) <= 28 else bar.label[:27] + "…"
        colour = _BAR_COLOURS.get(bar.tone, _BAR_COLOURS[""])
        parts.append(
            f'<text x="{label_width - 6}" y="{y + 13}" text-anchor="end">{escape(label)}</text>'
            f'<rect x="{label_width}" y="{y + 2}" width="{bar_width}" height="14" '
            f'fill="#eaeef2"/>'
            f'<rect x="{label_width}" y="{y + 2}" width="{filled}" height="14" '
            f'fill="{colour}"/>'
            f'<text x="{label_width + bar_width + 6}" y="{y + 13}">{escape(bar.text)}</text>'
        )
    parts.append("</svg>")
    return f"<figure><figcaption>{escape(chart.title)}</figcaption>{''.join(parts)}</figure>"
