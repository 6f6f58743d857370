"""The building blocks reports are laid out in, and their plain-text and Markdown renderings.

A report is first laid out as a list of blocks (headings, paragraphs, tables, bullet lists,
bar charts); each output format then renders the same blocks, so text, Markdown and HTML
never disagree about what a report says.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from typing import Literal

Tone = Literal["ok", "warn", "bad", "muted", ""]


@dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclass(frozen=True)
class Para:
    text: str
    tone: Tone = ""
    strong: bool = False


@dataclass(frozen=True)
class Table:
    columns: tuple[str, ...]
    rows: list[tuple[str, ...]]
    # Columns (by index) holding numbers: right-aligned.
    numeric: frozenset[int] = frozenset()
    # Optional tone per row (same length as rows), e.g. a failed step.
    tones: list[Tone] = field(default_factory=list)
    # HTML on a narrow screen: one card per row (label: value lines) instead of columns.
    # For tables a reader goes through row by row (findings, fixes), not for number grids.
    stack: bool = False


@dataclass(frozen=True)
class Bullets:
    items: list[str]


@dataclass(frozen=True)
class Bar:
    label: str
    value: float
    text: str
    tone: Tone = ""


@dataclass(frozen=True)
class Chart:
    """Horizontal bars; `scale` is the value of a full bar (1.0 for rates).

    `track` draws the empty remainder of each bar: right for a share of a whole (rates),
    wrong for counts scaled to the largest one (it would read as "out of the largest")."""

    title: str
    bars: list[Bar]
    scale: float
    track: bool = True


Block = Heading | Para | Table | Bullets | Chart


# ----------------------------------------------------------------------------- text


def _cell(text: str) -> str:
    return " ".join(text.split())


def render_text(blocks: list[Block], width: int = 100) -> str:
    out: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            underline = "=" if block.level == 1 else "-"
            if out:
                out.append("")
            out.append(block.text)
            if block.level <= 2:
                out.append(underline * min(len(block.text), width))
        elif isinstance(block, Para):
            out.append(block.text.upper() if block.strong else block.text)
        elif isinstance(block, Bullets):
            out.extend(f"  - {item}" for item in block.items)
        elif isinstance(block, Table):
            out.extend(_text_table(block, width))
        elif isinstance(block, Chart):
            out.extend(_text_chart(block))
    return "\n".join(out).rstrip() + "\n"


def _text_table(table: Table, width: int) -> list[str]:
    rows = [tuple(_cell(c) for c in row) for row in table.rows]
    widths = [len(c) for c in table.columns]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    # The last column (usually free text) absorbs what does not fit.
    fixed = sum(widths[:-1]) + 2 * (len(widths) - 1)
    widths[-1] = max(len(table.columns[-1]), min(widths[-1], max(20, width - fixed)))

    last_numeric = len(widths) - 1 in table.numeric

    def lines_of(cells: tuple[str, ...]) -> list[str]:
        # The last column wraps onto continuation lines instead of being cut (numbers do
        # not wrap: they are right-aligned like every numeric column).
        if last_numeric:
            last = [cells[-1].rjust(widths[-1])]
        else:
            last = textwrap.wrap(cells[-1], widths[-1]) or [""]
        out = []
        for number, tail in enumerate(last):
            shown = cells[:-1] if number == 0 else tuple("" for _ in cells[:-1])
            parts = [
                cell.rjust(w) if index in table.numeric else cell.ljust(w)
                for index, (cell, w) in enumerate(zip(shown, widths, strict=False))
            ]
            out.append("  ".join([*parts, tail]).rstrip())
        return out

    lines = [*lines_of(table.columns), "  ".join("-" * w for w in widths)]
    for row in rows:
        lines.extend(lines_of(row))
    return lines


def _text_chart(chart: Chart, bar_width: int = 30) -> list[str]:
    lines = [chart.title]
    label_width = max((len(b.label) for b in chart.bars), default=0)
    for bar in chart.bars:
        share = 0.0 if chart.scale <= 0 else max(0.0, min(1.0, bar.value / chart.scale))
        filled = round(share * bar_width)
        lines.append(
            f"  {bar.label.ljust(label_width)}  {'#' * filled}{'.' * (bar_width - filled)}  "
            f"{bar.text}"
        )
    return lines


# ----------------------------------------------------------------------------- markdown


def _md_cell(text: str) -> str:
    return _cell(text).replace("\\", "\\\\").replace("|", "\\|") or " "


def render_markdown(blocks: list[Block]) -> str:
    out: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            out.extend(["#" * block.level + " " + _cell(block.text), ""])
        elif isinstance(block, Para):
            text = _cell(block.text)
            out.extend([f"**{text}**" if block.strong else text, ""])
        elif isinstance(block, Bullets):
            out.extend([f"- {_cell(item)}" for item in block.items] + [""])
        elif isinstance(block, Table):
            out.append("| " + " | ".join(_md_cell(c) for c in block.columns) + " |")
            out.append(
                "|"
                + "|".join(
                    "---:" if i in block.numeric else "---" for i in range(len(block.columns))
                )
                + "|"
            )
            for row in block.rows:
                out.append("| " + " | ".join(_md_cell(c) for c in row) + " |")
            out.append("")
        # Charts are left out: every chart's numbers are also in a table of the report.
    return "\n".join(out).rstrip() + "\n"
