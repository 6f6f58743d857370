"""No patient datum in a vendor's error body reaches any output (issue 15, item 5).

A small vendor on loopback answers a MediTrak source, in every error path, with bodies full of
sentinel patient data (a name, a policy number, an e-mail): malformed and truncated JSON, an
HTML error page with status 200, 4xx and 5xx JSON error bodies whose messages carry the
sentinels, and list envelopes of the wrong shape. The real `connector` runs `sync`, `status`,
`status --json`, `report -f md` and `validate -f html` against it; none of their output, their
JSON logs on stderr, nor the stored `sync_run.error`, may contain a sentinel, and each run
must still fail with an error that says what was wrong.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from connector.errors import ContractError
from connector.sources.bodies import WITHHELD, describe_json_error, is_safe_vendor_text
from connector.sources.paginate import total_at
from tests.conftest import FAST_HTTP, write_config
from tests.local_server import serve_app

Connector = Callable[..., subprocess.CompletedProcess[str]]

NAME = "Zebulon Quattlebaum"
POLICY = "POL-99887766"
EMAIL = "zebulon@quattlebaum-family.test"
# What must never appear, in any case: each part of the name, the policy digits, the e-mail.
SENTINELS = ("zebulon", "quattlebaum", "99887766", "quattlebaum-family")

PATIENT = {"name": NAME, "policy_number": POLICY, "email": EMAIL, "dob": "1957-03-14"}
# The sentinels come first, as in a real leak: a quote of a body's first bytes shows them.
SAYS = f"{NAME} ({EMAIL}): policy {POLICY} has lapsed, invoice rejected"
PAGE = json.dumps(
    {
        "invoices": [{"patient": PATIENT, "invoice_id": "INV-1", "notes": SAYS}],
        "pagination": {"total_count": 1},
    }
).encode()


def _json(status: int, body: Any) -> web.Response:
    return web.Response(status=status, body=json.dumps(body), content_type="application/json")


# Each case: the list answer, and a phrase the failed run's error must contain.
CASES: dict[str, tuple[Callable[[], web.Response], str]] = {
    "truncated": (
        lambda: web.Response(body=PAGE[: PAGE.index(b"POL-") + 6], content_type="application/json"),
        "truncated?",
    ),
    "malformed": (
        lambda: web.Response(
            body=PAGE.replace(b'"notes"', b"notes"), content_type="application/json"
        ),
        "answered non-JSON",
    ),
    "html_200": (
        lambda: web.Response(
            text=f"<html><body><p>{SAYS}</p></body></html>",
            content_type="text/html",
        ),
        "looks like HTML",
    ),
    "error_400": (
        lambda: _json(400, {"success": False, "error": SAYS, "code": POLICY, "detail": [PATIENT]}),
        "400 from GET invoices/",
    ),
    "error_401": (
        lambda: _json(401, {"success": False, "error": SAYS, "code": "INVALID_API_KEY"}),
        "INVALID_API_KEY",
    ),
    "error_500": (
        lambda: _json(500, {"error": "Internal Server Error", "message": SAYS, "patient": NAME}),
        "500 from GET invoices/",
    ),
    "wrong_envelope": (
        lambda: _json(200, {"invoices": {"patient": PATIENT}, "pagination": {"total_count": 1}}),
        "expected a list of records at 'invoices'",
    ),
}


def _vendor() -> web.Application:
    async def listing(request: web.Request) -> web.Response:
        answer, _ = CASES[request.match_info["case"]]
        return answer()

    app = web.Application()
    app.router.add_get("/{case}/invoices/", listing)
    return app


@pytest.fixture(scope="module")
def vendor_url() -> Iterator[str]:
    with serve_app(_vendor()) as url:
        yield url


def _leaks(text: str) -> list[str]:
    lowered = text.lower()
    return [s for s in SENTINELS if s in lowered]


@pytest.fixture(scope="module")
def synced(vendor_url: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The config and store after one `connector sync` of a source per error case."""
    directory = tmp_path_factory.mktemp("phi")
    store = directory / "store.db"
    sources = [
        {
            "type": "meditrak",
            "name": case,
            "base_url": f"{vendor_url}/{case}/",
            "api_key": "k-phi-test-0001",
            "http": FAST_HTTP,
        }
        for case in CASES
    ]
    config = write_config(
        directory / "connector.yaml", {"store": {"url": str(store)}, "sources": sources}
    )
    return config, store


def test_no_sentinel_reaches_sync_status_reports_or_the_store(
    synced: tuple[Path, Path], connector: Connector
) -> None:
    config, store = synced
    outputs: dict[str, str] = {}
    for args in (("sync",), ("status",), ("status", "--json"), ("report", "-f", "md")):
        done = connector("-c", str(config), "--log-level", "debug", *args)
        outputs[" ".join(args)] = done.stdout + done.stderr
        if args == ("sync",):
            assert done.returncode != 0, done.stdout + done.stderr
            # Logs are JSON lines: the sync.failed event of every source is among them.
            failed = {
                event.get("source")
                for event in map(json.loads, filter(None, done.stderr.splitlines()))
                if event.get("event") == "sync.failed"
            }
            assert failed == set(CASES), done.stderr[-3000:]
    with sqlite3.connect(store) as db:
        errors = dict(db.execute("SELECT source, error FROM sync_run WHERE status = 'failed'"))
    assert set(errors) == set(CASES)
    leaked = {case: _leaks(error) for case, error in errors.items() if _leaks(error)}
    leaked |= {f"`{cmd}`": _leaks(text) for cmd, text in outputs.items() if _leaks(text)}
    assert leaked == {}, {case: errors.get(case) for case in leaked}
    # Still descriptive: each failure says what was wrong with the answer.
    for case, (_, phrase) in CASES.items():
        assert phrase in errors[case], (case, errors[case])


@pytest.mark.parametrize("case", ["truncated", "html_200", "error_400", "wrong_envelope"])
def test_no_sentinel_reaches_the_validate_html_report(
    case: str, synced: tuple[Path, Path], connector: Connector
) -> None:
    config, _ = synced
    report = config.with_name(f"validate-{case}.html")
    done = connector("-c", str(config), "validate", "-s", case, "-f", "html", "-o", str(report))
    assert done.returncode != 0
    text = report.read_text(encoding="utf-8") + done.stdout + done.stderr
    assert _leaks(text) == [], text[-3000:]


# -- the rule for a vendor's own error text --------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "Invalid or expired API key",
        "Invalid or missing API key",
        "Not authenticated",
        "INVALID_API_KEY",
        "Unauthorized",
        "Too Many Requests",
        "Invalid limit: must be an integer between 1 and 100",
        "updated_since must be an ISO 8601 datetime",
        "from must be a date in YYYY-MM-DD format",
        "Patient not found",
    ],
)
def test_generic_vendor_messages_are_kept(text: str) -> None:
    assert is_safe_vendor_text(text)


@pytest.mark.parametrize(
    "text",
    [
        NAME,
        POLICY,
        EMAIL,
        SAYS,
        "Patient Will Price not found",  # vocabulary words, but a capitalised pair mid-clause
        "patient zebulon quattlebaum not found",  # lower case: not in the vocabulary
        "member 4455667 not found",  # a number of 4+ digits
        "pol-99887766",
        "no invoice for peter.moore",
        "invalid " * 30,  # long free text
    ],
)
def test_messages_that_may_carry_patient_data_are_withheld(text: str) -> None:
    assert not is_safe_vendor_text(text)


def test_an_error_body_keeps_its_code_and_withholds_its_free_text() -> None:
    detail = [{"loc": ["query", "limit"], "msg": NAME}, {"loc": [NAME], "msg": "invalid"}]
    body = {"code": "INVOICE_REJECTED", "message": SAYS, "detail": detail}
    said = describe_json_error(httpx.Response(422, json=body))
    assert said == f"INVOICE_REJECTED - {WITHHELD} - query.limit: {WITHHELD}; invalid"


def test_a_total_of_the_wrong_type_is_not_quoted() -> None:
    with pytest.raises(ContractError) as caught:
        total_at({"pagination": {"total_count": NAME}}, "pagination.total_count", "GET invoices/")
    assert _leaks(str(caught.value)) == []


def test_the_adapters_own_error_describers_filter_vendor_text() -> None:
    """CitaBox (NestJS), Bio Ecko and Invoice API (FastAPI) read their own error shapes: the
    same filter applies to every piece of text they show."""
    from adapters.bio_ecko import describe_bio_ecko_error
    from adapters.citabox import describe_nestjs_error
    from adapters.invoice_api import describe_fastapi_error

    nestjs = {"statusCode": 400, "message": [SAYS, "page must be a number"], "error": "Bad Request"}
    bio = {"error": {"code": "invalid_parameter", "message": SAYS}}
    fastapi = {"detail": [{"loc": ["body", NAME], "msg": SAYS}, {"loc": ["query"], "msg": "x"}]}
    for said in (
        describe_nestjs_error(httpx.Response(400, json=nestjs)),
        describe_bio_ecko_error(httpx.Response(400, json=bio)),
        describe_fastapi_error(httpx.Response(422, json=fastapi)),
        describe_fastapi_error(httpx.Response(404, json={"detail": SAYS})),
    ):
        assert said is not None and WITHHELD in said
        assert _leaks(said) == []
    assert "page must be a number" in (
        describe_nestjs_error(httpx.Response(400, json=nestjs)) or ""
    )


# -- the detail endpoint ---------------------------------------------------------------------

# MediTrak lists summaries, then asks for each invoice's detail: the list here is fine and
# carries no patient datum; every detail answer is broken, with the sentinels in its body.
# Each case: the detail answer, a phrase the run error or the quarantine message must contain,
# and whether the run fails (a 404 only quarantines its record, DETAIL_UNAVAILABLE).
DETAIL_CASES: dict[str, tuple[Callable[[], web.Response], str, bool]] = {
    "detail_malformed": (
        lambda: web.Response(
            body=json.dumps({"success": True, "invoice": {"patient": PATIENT, "notes": SAYS}})
            .replace('"notes"', "notes")
            .encode(),
            content_type="application/json",
        ),
        "answered non-JSON",
        True,
    ),
    "detail_truncated": (
        lambda: web.Response(
            body=json.dumps({"success": True, "invoice": {"patient": PATIENT}}).encode()[:60],
            content_type="application/json",
        ),
        "truncated?",
        True,
    ),
    "detail_html": (
        lambda: web.Response(
            text=f"<html><head><title>{NAME}</title></head><body><p>{SAYS}</p></body></html>",
            content_type="text/html",
        ),
        "looks like HTML",
        True,
    ),
    "detail_html_502": (
        lambda: web.Response(
            status=502,
            text=f"<html><body><h1>Bad Gateway</h1>{SAYS}</body></html>",
            content_type="text/html",
        ),
        "502 from GET invoices/INV-1/",
        True,
    ),
    "detail_404": (
        lambda: _json(404, {"success": False, "error": SAYS, "code": "INVOICE_NOT_FOUND"}),
        "INVOICE_NOT_FOUND",
        False,
    ),
    "detail_422": (
        lambda: _json(422, {"detail": [{"loc": ["path", NAME], "msg": SAYS, "input": PATIENT}]}),
        "422 from GET invoices/INV-1/",
        True,
    ),
    "detail_500": (
        lambda: _json(500, {"error": "Internal Server Error", "message": SAYS, "patient": PATIENT}),
        "500 from GET invoices/INV-1/",
        True,
    ),
    "detail_wrong_envelope": (
        lambda: _json(200, {"success": True, "invoice": [PATIENT, SAYS]}),
        "no 'invoice' object",
        True,
    ),
    # The schema mismatch: every field of the wrong type, each holding a sentinel.
    "detail_schema": (
        lambda: _json(
            200,
            {
                "success": True,
                "invoice": {
                    "invoice_id": "INV-1",
                    "invoice_number": POLICY,
                    "service_date": NAME,
                    "total_amount": NAME,
                    "status": EMAIL,
                    "patient": {"name": [NAME], "policy_number": {"n": POLICY}},
                    "items": [{"category": NAME, "description": SAYS, "unit_price": EMAIL}],
                },
            },
        ),
        "FIELD_INVALID",
        False,
    ),
}


def _detail_vendor() -> web.Application:
    async def listing(request: web.Request) -> web.Response:
        return _json(200, {"invoices": [{"invoice_id": "INV-1"}], "pagination": {"total_count": 1}})

    async def detail(request: web.Request) -> web.Response:
        answer, _, _ = DETAIL_CASES[request.match_info["case"]]
        return answer()

    app = web.Application()
    app.router.add_get("/{case}/invoices/", listing)
    app.router.add_get("/{case}/invoices/{invoice_id}/", detail)
    return app


@pytest.fixture(scope="module")
def detail_synced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """The config and store of a source per detail case, the vendor still serving."""
    directory = tmp_path_factory.mktemp("phi-detail")
    store = directory / "store.db"
    with serve_app(_detail_vendor()) as url:
        sources = [
            {
                "type": "meditrak",
                "name": case,
                "base_url": f"{url}/{case}/",
                "api_key": "k-phi-test-0002",
                "http": FAST_HTTP,
            }
            for case in DETAIL_CASES
        ]
        config = write_config(
            directory / "connector.yaml", {"store": {"url": str(store)}, "sources": sources}
        )
        yield config, store


def test_no_sentinel_from_a_detail_answer_reaches_any_output_or_the_store(
    detail_synced: tuple[Path, Path], connector: Connector
) -> None:
    config, store = detail_synced
    outputs: dict[str, str] = {}
    commands: list[tuple[str, ...]] = [
        ("sync",),
        ("status",),
        ("status", "--json"),
        ("report", "-f", "md"),
        ("report", "-f", "html"),
        ("quarantine", "list"),
    ]
    for args in commands:
        done = connector("-c", str(config), "--log-level", "debug", *args)
        outputs[" ".join(args)] = done.stdout + done.stderr
    for case in DETAIL_CASES:
        report = config.with_name(f"validate-{case}.html")
        done = connector("-c", str(config), "validate", "-s", case, "-f", "html", "-o", str(report))
        assert done.returncode != 0, (case, done.stdout + done.stderr)
        outputs[f"validate {case}"] = report.read_text(encoding="utf-8") + done.stdout + done.stderr
    with sqlite3.connect(store) as db:
        errors = dict(db.execute("SELECT source, error FROM sync_run WHERE status = 'failed'"))
        quarantined = dict(db.execute("SELECT source, issues FROM quarantine"))
        states = " ".join(str(row) for row in db.execute("SELECT * FROM sync_state"))
    failing = {case for case, (_, _, fails) in DETAIL_CASES.items() if fails}
    assert set(errors) == failing, errors
    assert set(quarantined) == set(DETAIL_CASES) - failing
    stored = {**errors, **quarantined}
    leaked = {case: _leaks(text) for case, text in stored.items() if _leaks(text)}
    leaked |= {f"`{cmd}`": _leaks(text) for cmd, text in outputs.items() if _leaks(text)}
    if _leaks(states):
        leaked["sync_state"] = _leaks(states)
    assert leaked == {}, leaked
    # Still descriptive: each failure (or quarantined record) says what was wrong.
    for case, (_, phrase, _) in DETAIL_CASES.items():
        said = errors.get(case) or quarantined[case]
        assert phrase in said, (case, said)


def test_a_schema_mismatch_quotes_no_sentinel_in_the_quarantine_issues(
    detail_synced: tuple[Path, Path], connector: Connector
) -> None:
    config, store = detail_synced
    connector("-c", str(config), "sync", "-s", "detail_schema")
    with sqlite3.connect(store) as db:
        rows = list(db.execute("SELECT id, issues FROM quarantine WHERE source = 'detail_schema'"))
    assert rows
    shown = connector("-c", str(config), "quarantine", "show", str(rows[0][0]))
    # The issues (stored, and as `quarantine show` prints them) quote no vendor text. The raw
    # payload that `quarantine show` prints after them is the operator's view of the record,
    # masked by key (names, policies; `--reveal` shows all), so a name sent in a date field
    # shows there by design.
    issues_shown = shown.stdout.split("canonical attempt:")[0]
    assert _leaks(rows[0][1] + issues_shown) == []
    assert "(text withheld)" in rows[0][1]
