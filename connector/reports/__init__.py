"""Reports: the sync history over the store, and rendering of every report (validation and
history) as text, JSON, Markdown or one self-contained HTML file.

    render(report, "md")            the report dict → text in that format
    history_report(store, config)   the `connector.history-report/1` dict
"""

from __future__ import annotations

import json
from typing import Any

from connector.reports.blocks import Block, render_markdown, render_text
from connector.reports.history import history_report
from connector.reports.html import render_html
from connector.reports.layout import history_blocks, validation_blocks

FORMATS = ("text", "json", "md", "html")
VALIDATION_SCHEMA = "connector.validation-report/1"
HISTORY_SCHEMA = "connector.history-report/1"


def _blocks(report: dict[str, Any]) -> tuple[list[Block], str]:
    schema = report.get("schema")
    if schema == VALIDATION_SCHEMA:
        return validation_blocks(report), f"Validation report: {report['source']['name']}"
    if schema == HISTORY_SCHEMA:
        return history_blocks(report), "Sync history"
    raise ValueError(f"unknown report schema {schema!r}")


def render(report: dict[str, Any], fmt: str) -> str:
    """The report in one of `FORMATS`."""
    if fmt == "json":
        return json.dumps(report, ensure_ascii=False, indent=2) + "\n"
    blocks, title = _blocks(report)
    if fmt == "text":
        return render_text(blocks)
    if fmt == "md":
        return render_markdown(blocks)
    if fmt == "html":
        return render_html(blocks, title)
    raise ValueError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")


__all__ = ["FORMATS", "HISTORY_SCHEMA", "VALIDATION_SCHEMA", "history_report", "render"]
