"""One `connector validate` run: probe the connection, read a sample through the source's
adapter and the engine's record processor, measure it, and assemble the report. Nothing is
written: the store is only read for the policy registry, and only when it already exists.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx

from connector.pipeline.engine import (
    RecordProcessor,
    TransportFactory,
    mapping_options,
    worded_for_scheme,
)
from connector.settings import AppConfig, SourceConfig
from connector.sources.adapter import FetchRequest
from connector.store import Store
from connector.validate.checks import build_checks, record_processor
from connector.validate.compliance import mapping_section
from connector.validate.fields import FieldSources
from connector.validate.probe import (
    Step,
    check_refresh,
    connection_steps,
    only_broken_answers,
    precheck,
    skipped_steps,
)
from connector.validate.recording import (
    RecordingTransport,
    list_inspector,
    list_path_of,
    real_transport,
)
from connector.validate.report import assemble_report
from connector.validate.sample import Sample, ValidateOptions, build_adapter, fetch_sample

# The DNS, TCP and TLS probes wait at most this long (or the source's own shorter timeout).
PRECHECK_WAIT_S = 10.0


async def validate_source(
    config: AppConfig,
    source_name: str,
    *,
    options: ValidateOptions | None = None,
    store: Store | None = None,
    transport_factory: TransportFactory | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The validation report of one source (`connector.validation-report/1`)."""
    options = options or ValidateOptions()
    source = config.source(source_name)
    checks = build_checks(config, source, store)
    processor = record_processor(source, checks)
    wait = min(source.http.timeout.total_seconds(), PRECHECK_WAIT_S)
    steps = await precheck(source.base_url, wait, ca_bundle=source.http.ca_bundle)
    sample = Sample()
    if all(s.status != "fail" for s in steps):
        injected = transport_factory(source) if transport_factory else None
        sample, fetched = await read_sample(source, processor, options, injected)
        steps += fetched
    else:
        steps += skipped_steps(steps)
    mapping: dict[str, Any] | None = None
    if all(s.status != "fail" for s in steps) or only_broken_answers(steps):
        mapping, extra_warnings = mapping_section(sample, processor, checks)
        for record in sample.records:
            record.issues.extend(extra_warnings.get(record.key, []))
    for step in steps:
        # aiohttp names TLS settings even for plain-http URLs: say what was really tried.
        step.detail = worded_for_scheme(step.detail, source.base_url)
    sources = FieldSources.of(processor.mapping, mapping_options(source))
    return assemble_report(source, options, steps, sample, checks, sources, mapping, now)


async def read_sample(
    source: SourceConfig,
    processor: RecordProcessor,
    options: ValidateOptions,
    transport: httpx.AsyncBaseTransport | None,
) -> tuple[Sample, list[Step]]:
    """The sample, and the authenticate, list and detail steps its fetch proved or failed."""
    recorder = RecordingTransport(transport or real_transport(source))
    adapter, auth = build_adapter(source, recorder)
    list_path = list_path_of(adapter)
    inspector = list_inspector(adapter, list_path)
    recorder.inspector = inspector
    since = datetime.combine(options.since, datetime.min.time(), UTC) if options.since else None
    request = FetchRequest(since=since if since and adapter.filters_since() else None)
    async with adapter:
        sample, error = await fetch_sample(adapter, processor, request, options.sample, since)
        refresh = await check_refresh(auth, recorder, source.http) if error is None else None
    steps = connection_steps(error, recorder.exchanges, auth, list_path, refresh, sample, inspector)
    return sample, steps
