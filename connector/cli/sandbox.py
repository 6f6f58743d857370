"""`connector sandbox` (fake vendor APIs on 127.0.0.1) and `connector demo` (sandbox → sync →
summary, no config needed)."""

from __future__ import annotations

import asyncio
import csv
import errno
import io
import json
import re
import tempfile
from pathlib import Path
from typing import Annotated

import typer
import yaml
from pydantic import SecretStr
from rich.table import Table

from connector.cli.common import err, out, results_table, state
from connector.cli.demo import sandbox_config, sandbox_sources
from connector.logging import configure_logging, register_secrets
from connector.pipeline.wiring import build_engine
from connector.policies import (
    REGISTRY_COLUMNS,
    PatientLink,
    PolicyRecord,
    parse_registry_csv,
)
from connector.sandbox import (
    SandboxOptions,
    SandboxServer,
    serve_forever,
)
from connector.sources.discovery import source_type
from connector.store import Store
from connector.store.policies import import_links, import_policies

commands = typer.Typer()

InvoicesOpt = Annotated[int, typer.Option("--invoices", "-n", help="Invoices per vendor.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the generated data.")]
DefectOpt = Annotated[
    float, typer.Option("--defect-rate", help="Share of records seeded with a defect.")
]


def reasons_table(reasons: dict[str, dict[str, int]]) -> Table:
    """Quarantined records per reason code and source (a record may carry several codes)."""
    sources = sorted(reasons)
    codes = sorted({code for per_source in reasons.values() for code in per_source})
    table = Table(title="Quarantined records by reason code")
    table.add_column("reason")
    for source in sources:
        table.add_column(source, justify="right")
    for code in codes:
        table.add_row(code, *(str(reasons[source].get(code, "")) for source in sources))
    return table


@commands.command()
def sandbox(
    invoices: InvoicesOpt = 200,
    seed: SeedOpt = 42,
    defect_rate: DefectOpt = 0.05,
    latency_ms: Annotated[float, typer.Option("--latency-ms", help="Delay per request.")] = 0.0,
    fault_rate: Annotated[
        float, typer.Option("--fault-rate", help="Share of requests answered 429/503.")
    ] = 0.0,
    retry_after: Annotated[int, typer.Option("--retry-after", help="Retry-After on 429s.")] = 1,
    port: Annotated[
        int, typer.Option("--port", help="First port (0: ephemeral ports for every vendor).")
    ] = 8700,
    dialect: Annotated[
        list[str] | None, typer.Option("--vendor", help="Only these vendors (repeatable).")
    ] = None,
    write_config: Annotated[
        Path | None,
        typer.Option("--write-config", help="Write a connector config for this sandbox here."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON line with the URLs when ready.")
    ] = False,
) -> None:
    """Serve fake vendor APIs on 127.0.0.1 until Ctrl-C / SIGTERM."""
    options = SandboxOptions(
        invoices=invoices,
        seed=seed,
        defect_rate=defect_rate,
        latency_ms=latency_ms,
        fault_rate=fault_rate,
        retry_after_s=retry_after,
        base_port=port,
        dialects=tuple(dialect or ()),
    )

    def ready(server: SandboxServer) -> None:
        urls = server.api_urls()
        if write_config is not None:
            write_sandbox_files(server, write_config)
        if as_json:
            print(json.dumps({"ready": True, "urls": urls}), flush=True)
            return
        for name, url in urls.items():
            out.print(f"{name:>16}  {url}", highlight=False)
        if write_config is not None:
            out.print(
                f"config written to {write_config}; policy registry and patient links beside it"
                f" ({write_config.stem}-registry.csv, {write_config.stem}-links.csv)"
            )
        out.print("sandbox running; Ctrl-C to stop")

    try:
        serve_forever(options, on_ready=ready)
    except OSError as exc:
        err.print(bind_problem(exc, port), highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(2) from None


def bind_problem(exc: OSError, first_port: int) -> str:
    """A port the sandbox could not listen on, in one line with what to do about it."""
    found = re.search(r"\('?([^',)]+)'?, (\d+)\)", str(exc))
    where = f"port {found[2]} on {found[1]}" if found else f"a port from {first_port} on"
    if exc.errno == errno.EADDRINUSE:
        return (
            f"cannot start the sandbox: {where} is already in use (another sandbox or service?)"
            " - stop it, or choose other ports with --port N (vendors listen on N, N+1, ...) "
            "or --port 0 for free ones"
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"cannot start the sandbox: not allowed to listen on {where} - use --port 1024 or up"
    return f"cannot start the sandbox on {where}: {exc.strerror or exc}"


@commands.command()
def demo(
    invoices: InvoicesOpt = 200,
    seed: SeedOpt = 42,
    defect_rate: DefectOpt = 0.05,
    db: Annotated[
        Path | None, typer.Option("--db", help="SQLite file to fill (default: a fresh temp file).")
    ] = None,
) -> None:
    """Start the sandbox, sync every vendor into a fresh SQLite file, print the summary."""
    configure_logging(state.log_level or "warning", "auto")
    options = SandboxOptions(invoices=invoices, seed=seed, defect_rate=defect_rate)
    with tempfile.TemporaryDirectory(prefix="connector-demo-") as scratch:
        path = db or Path(scratch) / "demo.db"
        if path.exists():
            path.unlink()
        with SandboxServer(options) as server:
            config = sandbox_config(server, str(path))
            register_secrets(config.secrets())
            with Store(config.store.sqlalchemy_url()) as store:
                policies, links = seed_sandbox_registry(server, store)
                out.print(
                    f"registry: imported {policies} policies and {links} patient links from the "
                    "sandbox, so that only the seeded defects are quarantined",
                    highlight=False,
                )
                results = asyncio.run(build_engine(config, store).sync())
                stored = store.count_invoices()
                quarantined = store.count_quarantined()
                reasons = store.quarantine_by_reason()
        # Drawn as tables even off a terminal: the demo is a showcase, read by people.
        out.print(results_table(results, title=f"Demo: {len(results)} sandbox vendor(s)"))
        if reasons:
            out.print(reasons_table(reasons))
        out.print(f"store: {stored} invoice(s) stored, {quarantined} quarantined in {path}")
        if db is None:
            out.print("(temporary store; pass --db FILE to keep it)")
    if any(not r.ok for r in results):
        err.print("some sources failed")
        raise typer.Exit(1)


def sandbox_registry(server: SandboxServer) -> tuple[list[PolicyRecord], list[PatientLink]]:
    """The MediTrak registry behind every running dialect, and patient links built from the
    sandbox truth (patient ref → the patient's registered policy) for sources that send none."""
    rows: dict[str, dict[str, str]] = {}
    links: dict[tuple[str, str], PatientLink] = {}
    for name in server.dialect_names:
        dialect = server.dialect(name)
        dataset = dialect.dataset
        for row in dataset.registry_rows():
            rows.setdefault(row["policy_number"], row)
        with dataset.lock:
            for invoice in dataset.invoices:
                # An unregistered-policy defect keeps the patient but not their real policy.
                if invoice.policy_registered:
                    ref = dialect.vendor_patient_ref(invoice)
                    links.setdefault((name, ref), PatientLink(name, ref, invoice.policy_number))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=REGISTRY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows.values())
    # Through the same parser as `connector policies import`: the demo proves the file format.
    return parse_registry_csv(buffer.getvalue()), list(links.values())


def write_sandbox_files(server: SandboxServer, config_path: Path) -> None:
    """A connector config for the running sandbox, plus its policy registry and patient links
    as the CSV files `connector policies import` / `policies link` read. Credentials are
    written as `${VAR:-value}` so the file shows how real secrets come from the environment."""
    sources = sandbox_sources(server)
    for source in sources:
        model = source_type(source["type"]).config_model()
        for key, value in list(source.items()):
            field = model.model_fields.get(key)
            if field is not None and field.annotation is SecretStr:
                variable = f"SANDBOX_{source['name']}_{key}".upper().replace("-", "_")
                source[key] = f"${{{variable}:-{value}}}"
    document = {"store": {"url": "./connector.db"}, "sources": sources}
    config_path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    records, links = sandbox_registry(server)
    registry = config_path.with_name(f"{config_path.stem}-registry.csv")
    with registry.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(REGISTRY_COLUMNS)
        for record in records:
            writer.writerow([getattr(record, column) or "" for column in REGISTRY_COLUMNS])
    with config_path.with_name(f"{config_path.stem}-links.csv").open(
        "w", encoding="utf-8", newline=""
    ) as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["source", "patient_ref", "policy_number"])
        for link in links:
            writer.writerow([link.source, link.patient_ref, link.policy_number])


def seed_sandbox_registry(server: SandboxServer, store: Store) -> tuple[int, int]:
    """Import the sandbox's registry and patient links into the store: (policies, links)."""
    records, links = sandbox_registry(server)
    import_policies(store, records)
    import_links(store, links)
    return len(records), len(links)
