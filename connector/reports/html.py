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
  color: #1f2328; background: #fff; overflow-wrap: break-word; }
h1 { font-size: 22px; line-height: 1.25; margin: 0 0 6px; }
h2 { font-size: 17px; margin: 28px 0 8px; padding-bottom: 4px; border-bottom: 1px solid #d0d7de; }
h3 { font-size: 15px; margin: 18px 0 6px; }
p { margin: 6px 0; }
/* Tables wider than the page scroll sideways in their own box; a shadow at an edge shows
   there is more that way (the shadows stay put, the white covers scroll with the table). */
.scroll { max-width: 100%; overflow-x: auto; margin: 8px 0 14px;
  background: linear-gradient(to right, #fff 30%, rgba(255, 255, 255, 0)) 0 0,
    linear-gradient(to left, #fff 30%, rgba(255, 255, 255, 0)) 100% 0,
    radial-gradient(farthest-side at 0 50%, rgba(0, 0, 0, .22), rgba(0, 0, 0, 0)) 0 0,
    radial-gradient(farthest-side at 100% 50%, rgba(0, 0, 0, .22), rgba(0, 0, 0, 0)) 100% 0;
  background-repeat: no-repeat; background-size: 40px 100%, 40px 100%, 14px 100%, 14px 100%;
  background-attachment: local, local, scroll, scroll; }
table { border-collapse: collapse; margin: 0; font-size: 13px; min-width: 50%; }
table.full { width: 100%; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid #e6e8eb;
  vertical-align: top; overflow-wrap: break-word; }
th { background: rgba(31, 35, 40, .04); font-weight: 600; }
td.nw { white-space: nowrap; }
td.wrap { min-width: 14em; }
td.num, th.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
tr.bad td { background: rgba(207, 34, 46, .1); } tr.warn td { background: rgba(255, 220, 0, .23); }
tr.ok td:first-child { box-shadow: inset 3px 0 #1a7f37; }
tr.bad td:first-child { box-shadow: inset 3px 0 #cf222e; }
tr.warn td:first-child { box-shadow: inset 3px 0 #9a6700; }
.tone-ok { color: #1a7f37; } .tone-bad { color: #cf222e; } .tone-warn { color: #7d4e00; }
.tone-muted { color: #59636e; }
.verdict { font-size: 18px; font-weight: 700; padding: 8px 12px; border-radius: 6px;
  display: inline-block; margin: 6px 0; }
.verdict.tone-ok { background: #dafbe1; } .verdict.tone-bad { background: #ffebe9; }
.verdict.tone-warn { background: #fff8c5; }
figure { margin: 8px 0 16px; max-width: 760px; }
figcaption { font-weight: 600; margin-bottom: 4px; }
.chart { display: grid; gap: 3px 8px; align-items: center; font-size: 12px;
  grid-template-columns: minmax(7em, max-content) minmax(60px, 1fr) max-content; }
.chart .label { text-align: right; overflow-wrap: anywhere; }
.chart .value { font-variant-numeric: tabular-nums; white-space: nowrap; }
.chart svg { display: block; width: 100%; height: 14px; }
.chart.counts { grid-template-columns: minmax(7em, max-content) minmax(80px, 1fr); }
.chart.counts .bar { display: flex; align-items: center; padding-right: 4em; }
.chart.counts .bar svg { flex: none; }
.chart.counts .value { margin: 0 -4em 0 6px; }
ul { margin: 4px 0 10px; padding-left: 22px; }
@media (max-width: 640px) {
  body { padding: 16px 14px 32px; }
  h1 { font-size: 19px; }
  .verdict { font-size: 16px; }
  table.stack { min-width: 0; width: 100%; }
  table.stack thead { position: absolute; width: 1px; height: 1px; overflow: hidden;
    clip: rect(0 0 0 0); white-space: nowrap; }
  table.stack tr { display: block; border-bottom: 1px solid #d0d7de; padding: 4px 0; }
  table.stack td { display: grid; grid-template-columns: 7.5em minmax(0, 1fr); gap: 8px;
    border: 0; padding: 2px 8px; text-align: left; white-space: normal; min-width: 0; }
  table.stack td::before { content: attr(data-label); font-weight: 600; color: #59636e; }
  table.stack tr.bad td { box-shadow: inset 3px 0 #cf222e; }
  table.stack tr.warn td { box-shadow: inset 3px 0 #9a6700; }
  table.stack tr.ok td { box-shadow: inset 3px 0 #1a7f37; }
  .chart { grid-template-columns: minmax(0, max-content) minmax(60px, 1fr) max-content; }
  .chart.counts { grid-template-columns: minmax(0, max-content) minmax(80px, 1fr); }
}
@media print {
  body { max-width: none; padding: 0; font-size: 11px; }
  h1, h2, h3, figcaption { break-after: avoid; page-break-after: avoid; }
  .scroll { overflow: visible; }
  table { font-size: 10px; min-width: 0; }
  thead { display: table-header-group; }
  tr, li { break-inside: avoid; page-break-inside: avoid; }
  td.nw { white-space: normal; }
  td.wrap { min-width: 10em; }
  figure { break-inside: avoid; page-break-inside: avoid; }
  .chart { font-size: 10px; }
  tr.bad td, tr.warn td, tr td:first-child, .verdict {
    -webkit-print-color-adjust: exact; print-color-adjust: exact; }
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


# A column whose longest cell is longer than this is free text: it wraps (with a minimum
# width so it does not shrink to a word per line); shorter ones (ids, codes, dates) never
# wrap on screen - a table wider than the page scrolls sideways inside its own box instead.
_WRAP_AFTER = 32


def _header(text: str) -> str:
    # Reason codes as column headers may break after an underscore, not at any letter.
    return escape(text).replace("_", "_<wbr>")


def _table(table: Table) -> str:
    width = len(table.columns)
    wraps = {
        i
        for i in range(width)
        if i not in table.numeric and any(len(row[i]) > _WRAP_AFTER for row in table.rows)
    }
    head = "".join(
        f'<th scope="col" class="num">{_header(c)}</th>'
        if i in table.numeric
        else f'<th scope="col">{_header(c)}</th>'
        for i, c in enumerate(table.columns)
    )
    rows = []
    for index, row in enumerate(table.rows):
        tone = table.tones[index] if index < len(table.tones) else ""
        attr = f' class="{tone}"' if tone else ""
        cells = []
        for i, c in enumerate(row):
            kind = "num" if i in table.numeric else "wrap" if i in wraps else "nw"
            label = f' data-label="{escape(table.columns[i])}"' if table.stack else ""
            cells.append(f'<td class="{kind}"{label}>{escape(c)}</td>')
        rows.append(f"<tr{attr}>{''.join(cells)}</tr>")
    classes = " ".join(c for c in ("full" if wraps else "", "stack" if table.stack else "") if c)
    attr = f' class="{classes}"' if classes else ""
    return (
        f'<div class="scroll"><table{attr}><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _chart(chart: Chart) -> str:
    """Horizontal bars: one grid row per bar - label and value as HTML text (readable at any
    width, wrapping if they must), the bar itself an inline SVG that stretches with the page.
    """
    rows = []
    for bar in chart.bars:
        share = 0.0 if chart.scale <= 0 else max(0.0, min(1.0, bar.value / chart.scale))
        filled = round(share * 100, 2)
        colour = _BAR_COLOURS.get(bar.tone, _BAR_COLOURS[""])
        label = f'<span class="label">{escape(bar.label)}</span>'
        value = f'<span class="value">{escape(bar.text)}</span>'
        # No xmlns: inline SVG in HTML needs none, and the file names no URL at all.
        svg = '<svg viewBox="0 0 100 10" preserveAspectRatio="none" aria-hidden="true"'
        if chart.track:
            # A share of a whole: the bar and its grey remainder, the value in its own column.
            rows.append(
                f'{label}{svg}><rect width="100" height="10" fill="#eaeef2"/>'
                f'<rect width="{filled}" height="10" fill="{colour}"/></svg>{value}'
            )
        else:
            # A count: a bar as long as its share of the largest, the value right after it.
            rows.append(
                f'{label}<span class="bar">{svg} style="width: {filled}%">'
                f'<rect width="100" height="10" fill="{colour}"/></svg>{value}</span>'
            )
    kind = "chart" if chart.track else "chart counts"
    return (
        f'<figure><figcaption>{escape(chart.title)}</figcaption><div class="{kind}">'
        + "".join(rows)
        + "</div></figure>"
    )
