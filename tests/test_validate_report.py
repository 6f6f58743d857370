"""`connector validate` against the sandbox: the report finds exactly the seeded defects of every
dialect, a clean sandbox is "ready", connection failures get the right diagnosis, nothing is
written to the store, and every output format holds up (JSON against the documented schema,
Markdown pipe tables, one self-contained HTML file)."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from connector.cli.sandbox import seed_sandbox_registry
from connector.config import AppConfig, build_config
from connector.policies import PatientLink
from connector.reports import render
from connector.reports.blocks import Bar, Chart, Table, render_text
from connector.reports.html import render_html
from connector.sandbox import EXPECTED_REASON, SandboxOptions, SandboxServer
from connector.sandbox._dialect import available_dialects
from connector.sandbox.meditrak import MEDITRAK_DEFECTS
from connector.store import Store
from connector.store.policies import count_policies, import_links
from connector.store.store import sqlite_url_for
from connector.validate import ValidateOptions, validate_source
from tests.conftest import FAST_HTTP, sources_for, write_config

DIALECTS = available_dialects()
SCHEMA_PATH = Path(__file__).resolve().parents[1] / "docs" / "report-schema.json"
DOC_PATH = Path(__file__).resolve().parents[1] / "docs" / "validation-report.md"

Run = Callable[..., subprocess.CompletedProcess[str]]


# ----------------------------------------------------------------------------- helpers


def load_registry(server: SandboxServer, store: Store) -> None:
    """The sandbox's policy registry and patient links, as an operator imports them. Splose
    serves patients under the number of the truth's ref ("PAT-0007" → 7), which the shared
    sandbox helper does not spell, so those links are added here."""
    seed_sandbox_registry(server, store)
    if "splose" in server.dialect_names:
        dataset = server.dataset("splose")
        links = {
            inv.patient_ref: PatientLink(
                "splose", str(int(inv.patient_ref.removeprefix("PAT-"))), inv.policy_number
            )
            for inv in dataset.invoices
            if inv.policy_registered
        }
        import_links(store, list(links.values()))


def make_config(server: SandboxServer, store_url: str, **fields: Any) -> AppConfig:
    sources = sources_for(server, server.dialect_names, http=FAST_HTTP, **fields)
    return build_config({"store": {"url": store_url}, "sources": sources}, env={})


def run_validate(
    config: AppConfig, name: str, store: Store | None, sample: int | None = None
) -> dict[str, Any]:
    options = ValidateOptions(sample=sample)
    return asyncio.run(validate_source(config, name, options=options, store=store))


def truth_defects(server: SandboxServer, name: str) -> dict[str, str]:
    dialect = server.dialect(name)
    return {dialect.vendor_id(inv): inv.defect for inv in dialect.dataset.invoices if inv.defect}


def step(report: dict[str, Any], name: str) -> dict[str, str]:
    steps: list[dict[str, str]] = report["connection"]["steps"]
    (found,) = [s for s in steps if s["name"] == name]
    return found


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# ----------------------------------------------------------------------------- a small
# JSON Schema checker: the subset docs/report-schema.json uses (no jsonschema dependency).


def schema_errors(instance: Any, schema: dict[str, Any], root: dict[str, Any], at: str = "$"):  # type: ignore[no-untyped-def]
    if "$ref" in schema:
        target: Any = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        yield from schema_errors(instance, target, root, at)
        return
    if "oneOf" in schema:
        matching = [s for s in schema["oneOf"] if not list(schema_errors(instance, s, root, at))]
        if len(matching) != 1:
            yield f"{at}: matches {len(matching)} of the oneOf alternatives"
        return
    if "const" in schema and instance != schema["const"]:
        yield f"{at}: {instance!r} is not {schema['const']!r}"
    if "enum" in schema and instance not in schema["enum"]:
        yield f"{at}: {instance!r} not in {schema['enum']}"
    kinds = schema.get("type")
    if kinds is not None:
        names = kinds if isinstance(kinds, list) else [kinds]
        checks = {
            "object": lambda v: isinstance(v, dict),
            "array": lambda v: isinstance(v, list),
            "string": lambda v: isinstance(v, str),
            "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
            "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
            "boolean": lambda v: isinstance(v, bool),
            "null": lambda v: v is None,
        }
        if not any(checks[n](instance) for n in names):
            yield f"{at}: {type(instance).__name__} is not {names}"
            return
    if (
        isinstance(instance, str)
        and "pattern" in schema
        and not re.search(schema["pattern"], instance)
    ):
        yield f"{at}: {instance!r} does not match {schema['pattern']}"
    if isinstance(instance, int | float) and not isinstance(instance, bool):
        if "minimum" in schema and instance < schema["minimum"]:
            yield f"{at}: {instance} < {schema['minimum']}"
        if "maximum" in schema and instance > schema["maximum"]:
            yield f"{at}: {instance} > {schema['maximum']}"
    if isinstance(instance, list):
        if len(instance) < schema.get("minItems", 0):
            yield f"{at}: fewer than {schema['minItems']} items"
        if "maxItems" in schema and len(instance) > schema["maxItems"]:
            yield f"{at}: more than {schema['maxItems']} items"
        if "items" in schema:
            for index, item in enumerate(instance):
                yield from schema_errors(item, schema["items"], root, f"{at}[{index}]")
    if isinstance(instance, dict):
        for key in schema.get("required", []):
            if key not in instance:
                yield f"{at}: missing {key!r}"
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, value in instance.items():
            if "propertyNames" in schema:
                yield from schema_errors(key, schema["propertyNames"], root, f"{at}.{key}(name)")
            if key in properties:
                yield from schema_errors(value, properties[key], root, f"{at}.{key}")
            elif extra is False:
                yield f"{at}: unexpected property {key!r}"
            elif isinstance(extra, dict):
                yield from schema_errors(value, extra, root, f"{at}.{key}")


def assert_matches_schema(report: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    # Through JSON and back: what a consumer of `--format json` reads.
    decoded = json.loads(render(report, "json"))
    errors = list(schema_errors(decoded, schema, schema))
    assert not errors, errors[:10]


def assert_markdown_tables(text: str) -> int:
    """Every pipe table has a header, a separator row and rows of the same width."""

    def cells(line: str) -> int:
        return len(re.split(r"(?<!\\)\|", line.strip())) - 2

    lines = text.splitlines()
    tables = 0
    index = 0
    while index < len(lines):
        if lines[index].startswith("|"):
            block = []
            while index < len(lines) and lines[index].startswith("|"):
                block.append(lines[index])
                index += 1
            assert len(block) >= 2, block
            assert re.fullmatch(r"\|(\s*:?-{3,}:?\s*\|)+", block[1]), block[1]
            widths = {cells(line) for line in block}
            assert len(widths) == 1, f"ragged table: {block[:3]}"
            assert all(line.endswith("|") for line in block)
            tables += 1
        index += 1
    return tables


class _TagBalance(HTMLParser):
    VOID = frozenset({"meta", "br", "hr", "img", "input", "link", "col", "wbr", "source"})

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.seen: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.seen.add(tag)
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.seen.add(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        self.stack.pop()


def assert_self_contained_html(text: str) -> _TagBalance:
    parser = _TagBalance()
    parser.feed(text)
    parser.close()
    assert not parser.errors, parser.errors[:5]
    assert not parser.stack, f"unclosed: {parser.stack}"
    assert text.startswith("<!DOCTYPE html>")
    lowered = text.lower()
    assert not re.search(r"(src|href)\s*=\s*[\"']?\s*(https?:)?//", lowered)
    assert "<script" not in lowered
    assert "@import" not in lowered
    assert "url(" not in lowered
    assert "<link" not in lowered
    # URLs may only appear as text (the source's own base URL), never inside a tag.
    for tag in re.findall(r"<[^>]+>", lowered):
        assert "http:" not in tag and "https:" not in tag, tag
    assert "@media print" in text
    return parser


def assert_readable_html(text: str) -> None:
    """What a reader needs beyond well-formed HTML (checked once in a browser at 1280 px, at
    420 px and printed): wide tables scroll in their own box instead of widening the page,
    long findings tables become cards on a phone, and print keeps rows and headings whole."""
    css = text[text.index("<style>") : text.index("</style>")]
    tables = text.count("<table")
    assert text.count('<div class="scroll"><table') == tables, "a table outside a scroll box"
    assert "overflow-x: auto" in css
    # Letters of an id or a code are never split onto lines of their own.
    assert "anywhere" not in css.split(".chart .label")[0]
    assert "@media (max-width: 640px)" in css and "attr(data-label)" in css
    for table in re.findall(r'<table class="[^"]*\bstack\b.*?</table>', text, flags=re.DOTALL):
        cells = re.findall(r"<td[^>]*>", table)
        assert cells and all("data-label=" in cell for cell in cells)
    print_css = css[css.index("@media print") :]
    for rule in (
        "thead { display: table-header-group; }",
        "tr, li { break-inside: avoid;",
        "h1, h2, h3, figcaption { break-after: avoid;",
        ".scroll { overflow: visible; }",
    ):
        assert rule in print_css, rule
    # A table may be split across pages (row by row): only whole-table avoidance is gone.
    assert "table, figure { break-inside" not in print_css
    # Charts: the bars are SVG, their labels and values text the page can wrap and scale.
    for svg in re.findall(r"<svg[^>]*>", text):
        assert 'viewBox="0 0 100 10"' in svg and "width=" not in svg.split("viewBox")[0]


def assert_no_patient_data(text: str, server: SandboxServer, name: str) -> None:
    dataset = server.dataset(name)
    for invoice in dataset.invoices[:60]:
        assert invoice.patient_name not in text, "an unmasked patient name"
        assert invoice.policy_number not in text, "an unmasked policy number"


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def defective(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SandboxServer, Path]]:
    """Every dialect with its built-in defects; the store holds only the registry."""
    directory = tmp_path_factory.mktemp("validate")
    options = SandboxOptions(invoices=160, seed=7, defect_rate=0.1)
    with SandboxServer(options) as server:
        url = sqlite_url_for(directory / "store.db")
        with Store(url) as store:
            load_registry(server, store)
        yield server, directory / "store.db"


@pytest.fixture(scope="module")
def reports(defective: tuple[SandboxServer, Path]) -> dict[str, dict[str, Any]]:
    server, path = defective
    config = make_config(server, str(path))
    with Store(sqlite_url_for(path), migrate=False) as store:
        return {name: run_validate(config, name, store) for name in DIALECTS}


# ----------------------------------------------------------------------------- findings


@pytest.mark.parametrize("name", DIALECTS)
def test_report_finds_exactly_the_seeded_defects(
    name: str, defective: tuple[SandboxServer, Path], reports: dict[str, dict[str, Any]]
) -> None:
    server, _path = defective
    report = reports[name]
    truth = truth_defects(server, name)
    assert set(truth.values()) == set(server.dialect(name).default_defects), "every kind seeded"
    assert report["verdict"] == "not ready" and report["exit_code"] == 1
    assert report["connection"]["ok"]
    assert report["summary"]["complete"]
    assert report["summary"]["records"] == len(server.dataset(name))

    findings = {r["id"]: r for r in report["records"]}
    blocking = {key: set(r["reasons"]) for key, r in findings.items() if r["blocking"]}
    # Every seeded defect blocks its record, with its expected reason among the codes.
    expected_blocking = {key: EXPECTED_REASON[kind] for key, kind in truth.items()}
    assert set(blocking) == set(expected_blocking), "blocked records differ from the seeded"
    for key, reason in expected_blocking.items():
        assert reason in blocking[key], (key, reason, blocking[key])
    assert set(findings) <= set(truth), "a clean record was reported"
    assert report["summary"]["blocked"] == len(expected_blocking)

    # The fixes count every blocked record once per reason, most records first.
    counted: dict[str, int] = {}
    for reasons in blocking.values():
        for code in reasons:
            counted[code] = counted.get(code, 0) + 1
    fixes = report["fixes"]
    assert {f["reason"]: f["records"] for f in fixes} == counted
    assert [f["records"] for f in fixes] == sorted((f["records"] for f in fixes), reverse=True)
    assert all(f["fix"] and f["meaning"] for f in fixes)
    assert_matches_schema(report)


def test_unregistered_policies_are_found_through_the_registry(tmp_path: Path) -> None:
    options = SandboxOptions(
        invoices=90,
        seed=3,
        defect_rate=0.2,
        dialects=("meditrak",),
        defect_kinds={"meditrak": MEDITRAK_DEFECTS},
    )
    with SandboxServer(options) as server:
        url = sqlite_url_for(tmp_path / "store.db")
        with Store(url) as store:
            load_registry(server, store)
            config = make_config(server, url)
            report = run_validate(config, "meditrak", store)
        truth = truth_defects(server, "meditrak")
    unknown = {key for key, kind in truth.items() if kind == "unregistered_policy"}
    assert unknown
    blocking = {r["id"]: r["reasons"] for r in report["records"] if r["blocking"]}
    assert set(blocking) == set(truth)
    assert all("POLICY_UNKNOWN" in blocking[key] for key in unknown)
    policies = report["mapping"]["policies"]
    assert policies["checked_against_registry"] is True
    assert policies["unknown"] == len(unknown)
    assert policies["missing"] == policies["bad_format"] == policies["inactive"] == 0
    assert policies["matched"] > len(truth)


@pytest.mark.parametrize("name", DIALECTS)
def test_a_clean_sandbox_is_ready(name: str, tmp_path: Path) -> None:
    options = SandboxOptions(invoices=60, seed=11, defect_rate=0, dialects=(name,))
    with SandboxServer(options) as server:
        url = sqlite_url_for(tmp_path / "store.db")
        with Store(url) as store:
            load_registry(server, store)
            report = run_validate(make_config(server, url), name, store)
    assert report["verdict"] == "ready", report["fixes"]
    assert report["exit_code"] == 0
    assert report["summary"]["blocked"] == 0 and report["summary"]["records"] == 60
    assert report["fixes"] == []
    for field in report["contract"]["fields"]:
        if field["required"] and field["checked"]:
            assert field["pass_rate"] == 1.0, field
    assert all(s["maps_to"] for s in report["mapping"]["statuses"])
    assert report["mapping"]["policies"]["matched"] == 60
    assert_matches_schema(report)


def test_the_sections_measure_the_sample(
    defective: tuple[SandboxServer, Path], reports: dict[str, dict[str, Any]]
) -> None:
    server, _path = defective
    report = reports["meditrak"]
    truth = truth_defects(server, "meditrak")
    contract = report["contract"]
    fields = {f["field"]: f for f in contract["fields"]}
    missing_numbers = sum(1 for kind in truth.values() if kind == "missing_invoice_number")
    assert fields["invoice_number"]["checked"] - fields["invoice_number"]["present"] == (
        missing_numbers
    )
    assert fields["invoice_number"]["problems"] == {"FIELD_MISSING": missing_numbers}
    assert contract["item_arithmetic"]["mismatched"] == sum(
        1 for kind in truth.values() if kind == "item_total_mismatch"
    )
    assert contract["without_items"] == sum(1 for kind in truth.values() if kind == "no_items")
    dates = [inv.invoice_date for inv in server.dataset("meditrak").invoices if not inv.defect]
    assert contract["date_range"]["invoice_date_from"] == min(dates).isoformat()
    assert contract["duplicate_ids"] == []
    statuses = {s["word"]: s["maps_to"] for s in report["mapping"]["statuses"]}
    unmapped = [word for word, target in statuses.items() if target is None]
    assert len(unmapped) == 1, statuses  # the seeded unknown status word
    rules = {r["rule"] for r in report["mapping"]["categories"]["by_rule"]}
    assert "exact:category" in rules and "(unmapped)" in rules
    assert report["mapping"]["categories"]["unmapped_descriptions"]


def test_a_sample_stops_early_and_says_so(defective: tuple[SandboxServer, Path]) -> None:
    server, path = defective
    report = run_validate(make_config(server, str(path)), "meditrak_import", None, sample=25)
    assert report["summary"]["records"] == 25
    assert report["summary"]["complete"] is False
    assert any("first 25 record(s)" in note for note in report["notes"])
    assert any("no store" in note for note in report["notes"])
    assert report["options"]["sample"] == 25
    assert_matches_schema(report)


def test_validation_writes_nothing_to_the_store(defective: tuple[SandboxServer, Path]) -> None:
    server, path = defective
    url = sqlite_url_for(path)
    with Store(url, migrate=False) as store:
        before = (store.runs(), store.all_states(), count_policies(store))
        run_validate(make_config(server, str(path)), "meditrak", store)
        after = (store.runs(), store.all_states(), count_policies(store))
        assert before == after
        assert store.count_invoices() == 0 and store.count_quarantined() == 0


# ----------------------------------------------------------------------------- connection


def test_wrong_token_is_diagnosed_as_a_rejected_key(tmp_path: Path) -> None:
    with SandboxServer(SandboxOptions(invoices=10, dialects=("meditrak",))) as server:
        config = make_config(server, str(tmp_path / "s.db"), api_key="wrong-key-123")
        report = run_validate(config, "meditrak", None)
    assert report["verdict"] == "unreachable" and report["exit_code"] == 2
    auth = step(report, "authenticate")
    assert auth["status"] == "fail"
    assert auth["detail"].startswith("401 from GET /api/v1/invoices/: the API key was rejected")
    assert step(report, "list")["status"] == "skip"
    assert "wrong-key-123" not in json.dumps(report)
    assert_matches_schema(report)


def test_a_refused_login_is_diagnosed_as_such(tmp_path: Path) -> None:
    with SandboxServer(SandboxOptions(invoices=10, dialects=("bio_ecko",))) as server:
        config = make_config(server, str(tmp_path / "s.db"), client_secret="not-the-secret")
        report = run_validate(config, "bio_ecko", None)
    auth = step(report, "authenticate")
    assert report["exit_code"] == 2 and auth["status"] == "fail"
    assert "from POST /api/v1/auth/token: the login was refused" in auth["detail"]
    assert "not-the-secret" not in json.dumps(report)


def test_wrong_list_path_is_a_404_on_the_list(tmp_path: Path) -> None:
    with SandboxServer(SandboxOptions(invoices=10, dialects=("meditrak_import",))) as server:
        config = make_config(server, str(tmp_path / "s.db"), list_path="invoicez")
        report = run_validate(config, "meditrak_import", None)
    assert report["exit_code"] == 2
    assert step(report, "authenticate")["status"] != "fail"
    listed = step(report, "list")
    assert listed["status"] == "fail"
    assert listed["detail"].startswith("404 from GET /api/invoicez: the list endpoint does not")
    assert "check base_url" in listed["detail"]


def test_server_down_is_a_refused_connection(tmp_path: Path) -> None:
    port = closed_port()
    source = {
        "type": "meditrak",
        "name": "down",
        "base_url": f"http://127.0.0.1:{port}/api/v1/",
        "api_key": "k-12345",
        "http": FAST_HTTP,
    }
    config = build_config({"store": {"url": str(tmp_path / "s.db")}, "sources": [source]}, env={})
    report = run_validate(config, "down", None)
    assert report["exit_code"] == 2
    assert step(report, "resolve")["status"] == "pass"
    connect = step(report, "connect")
    assert connect["status"] == "fail"
    assert connect["detail"].startswith(f"cannot connect to 127.0.0.1:{port}: connection refused")
    assert all(step(report, s)["status"] == "skip" for s in ("authenticate", "list", "detail"))
    assert report["contract"] is None and report["mapping"] is None
    assert_matches_schema(report)
    for fmt in ("text", "md", "html"):
        rendered = render(report, fmt)
        assert "connection refused" in rendered
        # The numbering does not jump from 1 to 4, and nothing reads as a success.
        assert "2. Contract compliance" in rendered and "3. Mapping coverage" in rendered
        assert "Not checked: no record could be read (the connection failed at step" in rendered
        assert "No record is blocked" not in rendered
        assert "No record could be read: fix the failed connection step" in rendered
    html = render(report, "html")
    assert_readable_html(html)
    assert '<span class="verdict tone-bad">Verdict: UNREACHABLE' in html


def _serve(app: web.Application, check: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
    """Run a tiny vendor on an ephemeral port and validate against it in the same loop."""

    async def scenario() -> dict[str, Any]:
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            return await asyncio.to_thread(check, f"http://127.0.0.1:{port}/api/")
        finally:
            await runner.cleanup()

    return asyncio.run(scenario())


def _import_source(tmp_path: Path, base_url: str, **fields: Any) -> AppConfig:
    source = {
        "type": "meditrak_import",
        "name": "vendor",
        "base_url": base_url,
        "api_key": "k-12345",
        "http": FAST_HTTP,
        **fields,
    }
    return build_config({"store": {"url": str(tmp_path / "s.db")}, "sources": [source]}, env={})


def test_an_html_answer_is_diagnosed_as_not_json(tmp_path: Path) -> None:
    async def html_page(request: web.Request) -> web.Response:
        return web.Response(
            text="<!DOCTYPE html><html><body>Login</body></html>", content_type="text/html"
        )

    app = web.Application()
    app.router.add_get("/api/invoices", html_page)
    report = _serve(app, lambda url: run_validate(_import_source(tmp_path, url), "vendor", None))
    assert report["exit_code"] == 2
    listed = step(report, "list")
    assert listed["status"] == "fail"
    assert listed["detail"].startswith("list answered HTML instead of JSON (GET /api/invoices)")


def _record(number: int) -> dict[str, Any]:
    return {
        "id": f"V-{number}",
        "invoice_number": f"N-{number}",
        "invoice_date": "2025-03-01",
        "total_amount": "10.00",
        "status": "paid",
        "facility": "Clinic",
        "patient": {"name": "Pat Example", "policy_number": "POL-123456"},
        "items": [
            {
                "category": "consultation",
                "description": "Visit",
                "quantity": 1,
                "unit_price": "10.00",
                "total": "10.00",
            }
        ],
    }


def test_a_short_page_breaks_the_promised_total(tmp_path: Path) -> None:
    """12 records promised, pages of 5: the middle page answers 3. The paginator refuses such
    a list after its rescans (records would be skipped): the list step fails, and says why."""
    served = {1: [1, 2, 3, 4, 5], 2: [6, 7, 8], 3: [11, 12]}

    async def listing(request: web.Request) -> web.Response:
        page = int(request.query.get("page", "1"))
        rows = [_record(n) for n in served.get(page, [])]
        return web.json_response({"data": rows, "total": 12})

    app = web.Application()
    app.router.add_get("/api/invoices", listing)
    report = _serve(
        app,
        lambda url: run_validate(_import_source(tmp_path, url, page_size=5), "vendor", None),
    )
    listed = step(report, "list")
    assert listed["status"] == "fail", listed
    # Whether page 3 was prefetched before the paginator gave up depends on timing.
    assert re.match(
        r"page 2 returned 3 record\(s\), fewer than its page size 5, before the last page; "
        r"the list's total promised 12 record\(s\) but its pages delivered (8|10); ",
        listed["detail"],
    ), listed["detail"]
    assert report["exit_code"] == 2


def test_duplicate_ids_across_pages_are_reported(tmp_path: Path) -> None:
    served = {1: [1, 2], 2: [2, 3]}

    async def listing(request: web.Request) -> web.Response:
        page = int(request.query.get("page", "1"))
        rows = [_record(n) for n in served.get(page, [])]
        if page == 2:
            rows[0]["facility"] = "Another clinic"  # same id, different content
        return web.json_response({"data": rows, "total": 4})

    app = web.Application()
    app.router.add_get("/api/invoices", listing)
    report = _serve(
        app,
        lambda url: run_validate(_import_source(tmp_path, url, page_size=2), "vendor", None),
    )
    assert report["contract"]["duplicate_ids"] == [{"id": "V-2", "extra_copies": 1}]
    (finding,) = report["records"]
    assert finding["id"] == "V-2" and finding["reasons"] == ["DUPLICATE_IN_RUN"]
    assert report["exit_code"] == 1


# ----------------------------------------------------------------------------- formats


def test_every_format_of_a_real_report(
    defective: tuple[SandboxServer, Path], reports: dict[str, dict[str, Any]]
) -> None:
    server, _path = defective
    for name in ("meditrak", "bio_ecko"):
        report = reports[name]
        text, markdown, html = (render(report, fmt) for fmt in ("text", "md", "html"))
        for rendered in (text, markdown, html, render(report, "json")):
            assert_no_patient_data(rendered, server, name)
        assert "NOT READY" in text and "1. Connection" in text
        assert assert_markdown_tables(markdown) >= 6
        assert "| field | checked | present | valid | pass | problems |" in markdown
        parser = assert_self_contained_html(html)
        assert_readable_html(html)
        assert {"svg", "rect", "table", "style"} <= parser.seen
        assert html.count("<figure><figcaption>") >= 2  # pass rates per field, reasons
        assert html.count("<svg") >= len(report["contract"]["fields"]) + len(report["fixes"])
        # The findings and the fixes read as cards on a phone.
        assert html.count('<table class="full stack">') == 2
        for fix in report["fixes"]:
            assert fix["reason"] in html and fix["reason"] in markdown
        masked = [r["patient"]["name"] for r in report["records"] if r["patient"]["name"]]
        assert masked and all("*" in m for m in masked)


def test_charts_and_tables_render_for_reading() -> None:
    """The HTML and text renderings of the building blocks, without a sandbox."""
    rates = Chart("rates", [Bar("id", 1.0, "100.0%", "ok"), Bar("x", 0.5, "50.0%", "bad")], 1.0)
    counts = Chart("counts", [Bar("A_B", 4, "4", "bad"), Bar("C", 1, "1", "bad")], 4.0, False)
    table = Table(
        ("last seen (day)", "INVOICE_TOTAL_MISMATCH", "NO_ITEMS"),
        [("2026-11-22", "5", "3"), ("total", "15", "3")],
        numeric=frozenset({1, 2}),
    )
    findings = Table(("id", "finding"), [("INV-1", "x" * 40)], tones=["bad"], stack=True)
    html = render_html([rates, counts, table, findings], "t")
    assert_self_contained_html(html)
    assert_readable_html(html)
    # A rate is drawn against its whole (grey remainder); a count only as long as its share
    # of the largest, without a remainder that would read as "out of the largest".
    assert html.count('fill="#eaeef2"') == 2
    assert '<rect width="50.0" height="10" fill="#cf222e"/>' in html
    assert 'style="width: 100.0%"' in html and 'style="width: 25.0%"' in html
    assert '<div class="chart counts">' in html
    # Reason codes as column headers break after an underscore, never inside a word.
    assert "INVOICE_<wbr>TOTAL_<wbr>MISMATCH</th>" in html
    # Short cells (dates, ids) do not wrap; free text does, with a minimum width.
    assert '<td class="nw">2026-11-22</td>' in html
    assert '<td class="wrap" data-label="finding">' in html
    assert '<table class="full stack">' in html
    # Text: a numeric last column is right-aligned like the others, not left-aligned.
    lines = render_text([table]).splitlines()
    assert lines[-2].endswith("        3") and lines[-1].endswith("        3")
    assert lines[0].endswith("NO_ITEMS")


def test_the_documented_example_matches_the_schema() -> None:
    text = DOC_PATH.read_text(encoding="utf-8")
    examples = re.findall(r"```json\n(.*?)\n```", text, flags=re.DOTALL)
    assert examples, "docs/validation-report.md has no JSON example"
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    for example in examples:
        document = json.loads(example)
        errors = list(schema_errors(document, schema, schema))
        assert not errors, errors[:10]


# ----------------------------------------------------------------------------- the CLI


def test_cli_exit_codes_files_and_no_store_created(tmp_path: Path, connector: Run) -> None:
    options = SandboxOptions(invoices=40, seed=5, defect_rate=0.2, dialects=("meditrak",))
    with SandboxServer(options) as server:
        good = sources_for(server, ("meditrak",), http=FAST_HTTP)
        bad = [{**good[0], "name": "wrong", "api_key": "wrong-key-456"}]
        store = tmp_path / "never.db"
        config = write_config(
            tmp_path / "connector.yaml", {"store": {"url": str(store)}, "sources": good + bad}
        )
        html_file = tmp_path / "report.html"
        done = connector(
            "--config", str(config), "validate", "--source", "meditrak", "--all",
            "--format", "html", "--output", str(html_file),
        )  # fmt: skip
        assert done.returncode == 1, done.stderr
        assert "not ready" in done.stderr
        assert_self_contained_html(html_file.read_text(encoding="utf-8"))
        assert not store.exists(), "a dry run created the store"

        as_json = connector(
            "--config", str(config), "validate", "-s", "meditrak", "--sample", "15",
            "--format", "json",
        )  # fmt: skip
        assert as_json.returncode == 1
        report = json.loads(as_json.stdout)
        assert report["summary"]["records"] == 15
        assert_matches_schema(report)

        denied = connector("--config", str(config), "validate", "--source", "wrong")
        assert denied.returncode == 2
        assert "401 from GET /api/v1/invoices/: the API key was rejected" in denied.stdout
        assert "wrong-key-456" not in denied.stdout + denied.stderr

        unknown = connector("--config", str(config), "validate", "--source", "nope")
        assert unknown.returncode == 2 and "no source named 'nope'" in unknown.stderr

    clean = SandboxOptions(invoices=20, seed=5, defect_rate=0, dialects=("meditrak",))
    with SandboxServer(clean) as server:
        sources = sources_for(server, ("meditrak",), http=FAST_HTTP)
        url = sqlite_url_for(tmp_path / "registry.db")
        with Store(url) as registry:
            load_registry(server, registry)
        config = write_config(
            tmp_path / "clean.yaml",
            {"store": {"url": str(tmp_path / "registry.db")}, "sources": sources},
        )
        ready = connector("--config", str(config), "validate", "-s", "meditrak", "-f", "md")
        assert ready.returncode == 0, ready.stdout + ready.stderr
        assert "**Verdict: READY (exit code 0)**" in ready.stdout
        assert assert_markdown_tables(ready.stdout) >= 4
