"""How the validation and history reports read: their JSON laid out as headings, tables and
charts (see `connector.reports.blocks`), once for every output format."""

from __future__ import annotations

from typing import Any

from connector.reports.blocks import Bar, Block, Bullets, Chart, Heading, Para, Table, Tone

# Findings listed per record in text/Markdown/HTML; the JSON always has every one.
MAX_RECORD_ROWS = 50
_STEP_TONES: dict[str, Tone] = {"pass": "ok", "fail": "bad", "warn": "warn", "skip": "muted"}


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _rate_tone(value: float | None) -> Tone:
    if value is None:
        return "muted"
    if value >= 0.999:
        return "ok"
    return "warn" if value >= 0.9 else "bad"


def validation_blocks(report: dict[str, Any]) -> list[Block]:
    source = report["source"]
    summary = report["summary"]
    verdict = report["verdict"]
    # "unreachable" (exit 2) is a failure as much as "not ready": nothing could be checked.
    tone: Tone = {"ready": "ok", "not ready": "bad", "unreachable": "bad"}.get(verdict, "warn")  # type: ignore[assignment]
    blocks: list[Block] = [
        Heading(1, f"Validation report: {source['name']} ({source['type']})"),
        Para(f"{source['base_url']} - generated {report['generated_at']}", "muted"),
        Para(f"Verdict: {verdict.upper()} (exit code {report['exit_code']})", tone, strong=True),
    ]
    if summary["records"]:
        blocks.append(
            Para(
                f"{summary['records']} record(s) checked: {summary['passed']} pass, "
                f"{summary['blocked']} blocked, {summary['with_warnings']} pass with warnings "
                f"({_pct(summary['pass_rate'])} pass)."
            )
        )
    if report["notes"]:
        blocks.append(Bullets(list(report["notes"])))

    steps = report["connection"]["steps"]
    blocks += [
        Heading(2, "1. Connection"),
        Table(
            ("step", "result", "diagnosis"),
            [(s["name"], s["status"], s["detail"]) for s in steps],
            tones=[_STEP_TONES.get(s["status"], "") for s in steps],
        ),
    ]
    # Sections 2 and 3 keep their headings when nothing could be read, so the numbering
    # does not jump from 1 to 4 and the reader is told why they are empty.
    failed = next((s["name"] for s in steps if s["status"] == "fail"), None)
    not_checked = Para(
        "Not checked: no record could be read"
        + (f" (the connection failed at step '{failed}')." if failed else "."),
        "muted",
    )
    contract = report["contract"]
    if contract is not None:
        blocks += _contract_blocks(contract)
    else:
        blocks += [Heading(2, "2. Contract compliance"), not_checked]
    mapping = report["mapping"]
    if mapping is not None:
        blocks += _mapping_blocks(mapping)
    else:
        blocks += [Heading(2, "3. Mapping coverage"), not_checked]
    blocks += _fix_blocks(report)
    return blocks


def _contract_blocks(contract: dict[str, Any]) -> list[Block]:
    fields = contract["fields"]
    rows: list[tuple[str, ...]] = []
    for f in fields:
        problems = ", ".join(f"{code} {n}" for code, n in f["problems"].items()) or "-"
        label = f["field"] + ("" if f["required"] else " (recommended)")
        rows.append(
            (
                label,
                str(f["checked"]),
                str(f["present"]),
                str(f["valid"]),
                _pct(f["pass_rate"]),
                problems,
            )
        )
    dates = contract["date_range"]
    items, totals = contract["item_arithmetic"], contract["invoice_totals"]
    facts = [
        f"item arithmetic (total = quantity x unit price): {items['mismatched']} of "
        f"{items['items']} item(s) wrong",
        f"invoice totals against their items: {totals['mismatched']} of {totals['invoices']} "
        "invoice(s) wrong",
        f"invoices without any item: {contract['without_items']}",
        f"duplicate ids across pages: {len(contract['duplicate_ids'])}"
        + (
            " (" + ", ".join(d["id"] for d in contract["duplicate_ids"][:5]) + ")"
            if contract["duplicate_ids"]
            else ""
        ),
        f"invoice dates covered: {dates['invoice_date_from'] or '-'} to "
        f"{dates['invoice_date_to'] or '-'}; updated {dates['updated_from'] or '-'} to "
        f"{dates['updated_to'] or '-'}",
        f"pages read: {contract['pages']}",
    ]
    return [
        Heading(2, "2. Contract compliance"),
        Chart(
            "Pass rate per field",
            [
                Bar(
                    f["field"],
                    f["pass_rate"] or 0.0,
                    _pct(f["pass_rate"]),
                    _rate_tone(f["pass_rate"]),
                )
                for f in fields
            ],
            1.0,
        ),
        Table(
            ("field", "checked", "present", "valid", "pass", "problems"),
            rows,
            numeric=frozenset({1, 2, 3, 4}),
            tones=[
                _rate_tone(f["pass_rate"]) if f["pass_rate"] is not None else "" for f in fields
            ],
        ),
        Bullets(facts),
    ]


def _mapping_blocks(mapping: dict[str, Any]) -> list[Block]:
    statuses = mapping["statuses"]
    categories = mapping["categories"]
    policies = mapping["policies"]
    blocks: list[Block] = [
        Heading(2, "3. Mapping coverage"),
        Heading(3, "Status words"),
        Table(
            ("status word", "records", "maps to"),
            [(s["word"], str(s["count"]), s["maps_to"] or "UNMAPPED") for s in statuses],
            numeric=frozenset({1}),
            tones=["bad" if s["maps_to"] is None else "" for s in statuses],
        ),
        Heading(3, "Categories by rule"),
        Table(
            ("category rule", "items"),
            [(r["rule"], str(r["count"])) for r in categories["by_rule"][:25]],
            numeric=frozenset({1}),
        ),
    ]
    if len(categories["by_rule"]) > 25:
        blocks.append(Para(f"... and {len(categories['by_rule']) - 25} more rules", "muted"))
    blocks += _category_kind_blocks(categories)
    if categories["unmapped_descriptions"]:
        blocks += [
            Heading(3, "Most frequent unmapped item descriptions"),
            Table(
                ("description", "items", "left unmapped by"),
                [
                    (d["description"], str(d["count"]), d["rule"] or "no rule matched")
                    for d in categories["unmapped_descriptions"]
                ],
                numeric=frozenset({1}),
            ),
        ]
    if categories["unrecognised_words"]:
        blocks += [
            Heading(3, "Vendor category words not in the map (placed by description, if at all)"),
            Table(
                ("vendor word", "items", "placed by (items)"),
                [
                    (
                        w["word"],
                        str(w["count"]),
                        ", ".join(
                            f"{'no rule' if k == 'none' else k + ' rule'}: {n}"
                            for k, n in w["placed_by"].items()
                        ),
                    )
                    for w in categories["unrecognised_words"]
                ],
                numeric=frozenset({1}),
            ),
        ]
    registry = (
        f"checked against the registry ({policies['registry_policies']} policies, "
        f"{policies['registry_links']} patient links)"
        if policies["checked_against_registry"]
        else "presence and format only (no registry to check against)"
    )
    blocks += [
        Heading(3, "Policy numbers"),
        Para(f"Policy numbers: {registry}."),
        Table(
            ("matched", "unknown", "inactive", "bad format", "missing"),
            [
                tuple(
                    str(policies[k])
                    for k in ("matched", "unknown", "inactive", "bad_format", "missing")
                )
            ],
            numeric=frozenset({0, 1, 2, 3, 4}),
        ),
    ]
    return blocks + _resolution_blocks(policies["resolution"])


def _category_kind_blocks(categories: dict[str, Any]) -> list[Block]:
    """Which kind of rule decided the items' categories (the `categories explain` steps)."""
    kinds = [k for k in categories["by_kind"] if k["count"]]
    if not kinds:
        return []
    return [
        Heading(3, "Category decisions by rule kind"),
        Table(
            ("rule kind", "items", "categories"),
            [
                (
                    k["kind"],
                    str(k["count"]),
                    ", ".join(f"{c} {n}" for c, n in k["categories"].items()),
                )
                for k in kinds
            ],
            numeric=frozenset({1}),
            tones=["warn" if k["kind"] in ("fallback", "none") else "" for k in kinds],
        ),
    ]


def _resolution_blocks(resolution: dict[str, Any]) -> list[Block]:
    """Where each invoice's policy came from, and the candidates that disagreed."""
    kinds = resolution["by_kind"]
    blocks: list[Block] = [
        Heading(3, "Policy resolution"),
        Para(
            f"Billed policy from: patient link {kinds['link']}, the record's policy field "
            f"{kinds['record']}, a vendor reference field {kinds['reference']}, none "
            f"{kinds['none']}. {resolution['with_several_candidates']} invoice(s) had "
            f"candidates that disagree; {resolution['conflicts']} POLICY_CONFLICT warning(s)."
        ),
    ]
    if resolution["by_origin"]:
        blocks.append(
            Table(
                ("policy from", "kind", "invoices"),
                [(o["origin"], o["kind"], str(o["invoices"])) for o in resolution["by_origin"]],
                numeric=frozenset({2}),
            )
        )
    if resolution["conflict_examples"]:
        blocks.append(Para("Candidates that disagree (examples; masked, best first):"))
        blocks.append(
            Table(
                ("id", "candidates, best first (masked)"),
                [
                    (
                        e["id"],
                        "; ".join(
                            f"{'used ' if c['used'] else ''}{c['origin']} {c['number']}"
                            + (f" ({c['standing']})" if c["standing"] else "")
                            for c in e["candidates"]
                        ),
                    )
                    for e in resolution["conflict_examples"]
                ],
                tones=["warn"] * len(resolution["conflict_examples"]),
                stack=True,
            )
        )
    return blocks


def _patient_cell(patient: dict[str, Any]) -> str:
    """Masked name / policy, and where the policy came from when not the record's field."""
    policy = patient["policy_number"]
    source = patient.get("policy_source")
    if policy and source and source != "policy_number":
        policy = f"{policy} ({source})"
    return " / ".join(v for v in (patient["name"], policy) if v) or "-"


def _fix_blocks(report: dict[str, Any]) -> list[Block]:
    fixes = report["fixes"]
    blocks: list[Block] = [Heading(2, "4. Verdict and fixes")]
    if not fixes and report["contract"] is None:
        blocks.append(
            Para("No record could be read: fix the failed connection step above first.", "bad")
        )
    elif not fixes:
        blocks.append(Para("No record is blocked.", "ok"))
    else:
        top = max(f["records"] for f in fixes)
        blocks += [
            Chart(
                "Records blocked per reason",
                [Bar(f["reason"], f["records"], str(f["records"]), "bad") for f in fixes],
                float(top),
                track=False,
            ),
            Table(
                ("#", "reason", "records", "e.g.", "fix"),
                [
                    (
                        str(index),
                        f["reason"],
                        str(f["records"]),
                        ", ".join(f["example_ids"][:2]),
                        f["fix"],
                    )
                    for index, f in enumerate(fixes, start=1)
                ],
                numeric=frozenset({0, 2}),
                stack=True,
            ),
        ]
    records = report["records"]
    if records:
        shown = records[:MAX_RECORD_ROWS]
        blocks += [
            Heading(3, "Records with findings"),
            Table(
                ("id", "patient", "blocking", "reasons", "first finding"),
                [
                    (
                        r["id"],
                        _patient_cell(r["patient"]),
                        "yes" if r["blocking"] else "no",
                        ", ".join(r["reasons"] + [f"{w} (warning)" for w in r["warnings"]]),
                        f"{r['issues'][0]['path']}: {r['issues'][0]['message']}",
                    )
                    for r in shown
                ],
                tones=["bad" if r["blocking"] else "warn" for r in shown],
                stack=True,
            ),
        ]
        if len(records) > len(shown):
            blocks.append(
                Para(f"... and {len(records) - len(shown)} more (every one is in --format json)")
            )
    return blocks


# ----------------------------------------------------------------------------- history


def _lag(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= 2 * size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def history_blocks(report: dict[str, Any]) -> list[Block]:
    since = f" since {report['since']}" if report["since"] else ""
    blocks: list[Block] = [
        Heading(1, f"Sync history{since}"),
        Para(f"generated {report['generated_at']}", "muted"),
    ]
    sources = report["sources"]
    if not sources:
        blocks.append(Para("No source has run yet."))
        return blocks
    blocks.append(
        Table(
            ("source", "runs", "failed", "last run", "cursor", "lag", "stored", "quarantined"),
            [
                (
                    s["name"],
                    str(len(s["runs"])),
                    str(len(s["failures"])),
                    (s["runs"][-1]["status"] if s["runs"] else "never run"),
                    s["cursor"] or "-",
                    _lag(s["lag_seconds"]),
                    str(s["stored"]),
                    str(s["quarantined"]),
                )
                for s in sources
            ],
            numeric=frozenset({1, 2, 6, 7}),
            tones=["bad" if s["failures"] else "" for s in sources],
        )
    )
    for s in sources:
        blocks.append(Heading(2, f"{s['name']}"))
        blocks.append(
            Para(
                f"cursor {s['cursor'] or '-'} (lag {_lag(s['lag_seconds'])})"
                + ("; an unfinished run will resume" if s["resume_pending"] else "")
                + f"; {s['stored']} stored, {s['quarantined']} quarantined"
            )
        )
        if s["runs"]:
            blocks.append(
                Table(
                    (
                        "run",
                        "kind",
                        "status",
                        "started",
                        "seconds",
                        "fetched",
                        "inserted",
                        "updated",
                        "unchanged",
                        "quarantined",
                        "error",
                    ),
                    [
                        (
                            str(r["id"]),
                            r["kind"],
                            r["status"],
                            r["started_at"][:19].replace("T", " "),
                            "-" if r["seconds"] is None else f"{r['seconds']:.1f}",
                            *(
                                str(r["counts"][k])
                                for k in ("fetched", "inserted", "updated", "unchanged")
                            ),
                            str(r["counts"]["quarantined"]),
                            r["error"] or "",
                        )
                        for r in s["runs"]
                    ],
                    numeric=frozenset({0, 4, 5, 6, 7, 8, 9}),
                    tones=["bad" if r["status"] == "failed" else "" for r in s["runs"]],
                )
            )
        else:
            blocks.append(Para("No runs in this period.", "muted"))
        if s["failures"]:
            blocks.append(Heading(3, "Failures"))
            blocks.append(
                Bullets(
                    [
                        f"run {f['run_id']} ({f['kind']}, {f['status']}, {f['started_at']}): "
                        f"{f['error']}"
                        for f in s["failures"]
                    ]
                )
            )
        if s["quarantine_by_reason"]:
            top = max(s["quarantine_by_reason"].values())
            blocks.append(Heading(3, "Quarantine by reason"))
            blocks.append(
                Chart(
                    f"{s['name']}: quarantined records per reason",
                    [Bar(code, n, str(n), "bad") for code, n in s["quarantine_by_reason"].items()],
                    float(top),
                    track=False,
                )
            )
            codes = list(s["quarantine_by_reason"])
            blocks.append(
                Table(
                    ("last seen (day)", *codes),
                    [
                        *(
                            (d["day"], *(str(d["reasons"].get(c, 0)) for c in codes))
                            for d in s["quarantine_by_day"]
                        ),
                        ("total", *(str(s["quarantine_by_reason"][c]) for c in codes)),
                    ],
                    numeric=frozenset(range(1, len(codes) + 1)),
                )
            )
    return blocks
