"""The settings models: what a config file may say, validated by pydantic.

A leaf of the project: it imports only the other leaves `connector.model` (the category
vocabulary), `connector.schedule` (the schedule grammar) and `connector.errors`. Reading files,
interpolating the environment and finding each source type's own config model is the loader's
job (`connector.config`).
"""

from __future__ import annotations

import ipaddress
import re
import ssl
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal, Protocol
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from connector.errors import ConfigError
from connector.model import Category
from connector.schedule import parse_duration, parse_schedule

SOURCE_NAME = r"^[a-z0-9][a-z0-9_.-]{0,99}$"


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


def _check_schedule(value: str | None) -> str | None:
    """Schedules are validated when the config loads, by building their trigger."""
    if value is not None:
        parse_schedule(value)
    return value


# An interval ("15m", "every 2h") or a 5-field crontab line ("*/5 * * * *", UTC).
ScheduleText = Annotated[str, AfterValidator(_check_schedule)]


def _relative_to_config(value: str, info: ValidationInfo) -> str:
    """A file path written in the config, made absolute against the config file's directory
    (the `base_dir` of the validation context), so that the connector reads the same files
    whichever directory it was started from. Without a base dir (a config built from a dict,
    with no file) the path stays as written: relative to the working directory."""
    base_dir = info.context.get("base_dir") if isinstance(info.context, dict) else None
    return resolve_path(value, base_dir)


def resolve_path(value: str, base_dir: Path | None) -> str:
    path = Path(value)
    if base_dir is None or path.is_absolute():
        return value
    return str(Path(base_dir) / path)


def _pem_ca_file(value: str) -> str:
    """The file must hold at least one PEM certificate that OpenSSL accepts."""
    path = Path(value)
    if not path.exists():
        raise ValueError(f"no such file: {value}")
    if not path.is_file():
        raise ValueError(f"not a file: {value}")
    # A bare context: loading the file is the check, no default store is needed for it.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cafile=value)
    except ssl.SSLError:  # before OSError, of which it is a subclass
        raise ValueError(
            f"{value} holds no PEM certificate (expected -----BEGIN CERTIFICATE----- blocks; "
            f"a DER file converts with `openssl x509 -inform der -in CA.der -out CA.pem`)"
        ) from None
    except OSError as exc:
        raise ValueError(f"cannot read {value}: {exc.strerror}") from None
    return value


class LoadedRules(Protocol):
    """A category rules file as the loader read it (`connector.pipeline.categories`)."""

    @property
    def path(self) -> str: ...

    @property
    def mtime_ns(self) -> int: ...


# A file path in the config: relative paths are relative to the config file's directory.
ConfigPath = Annotated[str, AfterValidator(_relative_to_config)]
# A PEM file of CA certificates (see HttpSettings.ca_bundle).
CaBundlePath = Annotated[ConfigPath, AfterValidator(_pem_ca_file)]


class HttpSettings(BaseModel):
    """How hard we may push one vendor: timeouts, concurrency, retries, rate limit."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # A deadline for each whole request: connect, headers and the whole body together (a
    # streamed answer: until each next item has arrived). A deadline hit is retried like any
    # timeout.
    timeout: Duration = timedelta(seconds=30)
    # The largest answer body, counted decompressed while it is read: a larger one fails the
    # source (not retried) before it is held whole, however small it was on the wire.
    max_response_bytes: int = Field(32 * 1024 * 1024, ge=64 * 1024)
    # The most requests in flight at once. With `adaptive_concurrency` (the default) a ceiling:
    # the client starts at `initial_concurrency` and finds the vendor's own bound between
    # `min_concurrency` and this, from its latency and its 429/503 answers
    # (connector/sources/limiter.py); without, a fixed bound.
    concurrency: int = Field(64, ge=1, le=256)
    adaptive_concurrency: bool = True
    initial_concurrency: int = Field(4, ge=1, le=256)
    min_concurrency: int = Field(1, ge=1, le=256)
    max_retries: int = Field(5, ge=0, le=20)
    backoff_base: Duration = timedelta(seconds=0.5)
    backoff_max: Duration = timedelta(seconds=30)
    # Longest Retry-After we honour before treating the vendor as down.
    max_retry_after: Duration = timedelta(seconds=120)
    requests_per_minute: int | None = Field(None, ge=1)
    # aiohttp's connection handling under httpx's API: measured 5x the requests/s of httpx's
    # own async transport at 16 concurrent requests (docs/performance.md).
    transport: Literal["aiohttp", "httpx"] = "aiohttp"
    # CA certificates (PEM) trusted for this source in addition to the default store, for a
    # vendor whose certificate comes from a private CA or is self-signed. In addition rather
    # than instead: a token endpoint may sit on another host with a public certificate, and a
    # vendor that moves to a public certificate keeps working. Verification stays on always.
    ca_bundle: CaBundlePath | None = None


class SourceConfig(BaseModel):
    """Settings every source has; adapters subclass it with their own fields and `type`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str
    name: str = Field(pattern=SOURCE_NAME)
    enabled: bool = True
    base_url: str
    allow_insecure_http: bool = False
    http: HttpSettings = HttpSettings()
    page_size: int = Field(100, ge=1, le=10000)
    currency: str = Field("USD", pattern=r"^[A-Z]{3}$")
    timezone: str = "UTC"
    # Overrides of the mapping's status table: vendor word → paid|unpaid|pending|void.
    status_map: dict[str, Literal["paid", "unpaid", "pending", "void"]] = {}
    # Incremental syncs re-read this far behind the stored cursor (late writes, clock skew).
    lookback: Duration = timedelta(minutes=5)
    schedule: ScheduleText | None = None
    # An extra category rules file (YAML), merged in front of mappings/category_rules.yaml.
    category_rules: ConfigPath | None = None
    # When set, an item no rule matches gets this category (accepted with a warning) instead
    # of being quarantined as CATEGORY_UNMAPPED.
    fallback_category: Category | None = None
    # Where a non-clinical line (cancellation/no-show fee, surcharge, gift voucher, admin or
    # report-writing fee...) goes. None: CATEGORY_UNMAPPED, since MediTrak has no category for it.
    non_clinical_category: Category | None = None
    # The `category_rules` file as `build_config` read and validated it: runs use exactly the
    # rules that were checked when the config loaded, without reading the file again.
    _loaded_rules: LoadedRules | None = PrivateAttr(default=None)

    def keep_loaded_rules(self, rules: LoadedRules) -> None:
        """Called by the loader once it has read and checked the `category_rules` file."""
        self._loaded_rules = rules

    def loaded_category_rules(self) -> LoadedRules | None:
        """The rules file read when the config loaded, while `category_rules` still names it
        (a `model_copy(update=...)` may point the source at another file: that one is read
        when used)."""
        kept = self._loaded_rules
        return kept if kept is not None and kept.path == self.category_rules else None

    @field_validator("base_url")
    @classmethod
    def _url_shape(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"expected an http(s) URL, got {value!r}")
        return value if value.endswith("/") else value + "/"

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        if value.upper() != "UTC":
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError) as exc:
                raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @model_validator(mode="after")
    def _tls_unless_loopback(self) -> SourceConfig:
        parts = urlsplit(self.base_url)
        if (
            parts.scheme == "http"
            and not self.allow_insecure_http
            and not _is_loopback(parts.hostname)
        ):
            raise ValueError(
                f"base_url {self.base_url} is plain http to a non-loopback host: use https, "
                "or set allow_insecure_http: true if the vendor offers nothing else"
            )
        return self

    def secrets(self) -> list[str]:
        """Every secret value of this source, for log and report scrubbing."""
        return [
            value.get_secret_value()
            for value in (getattr(self, name) for name in type(self).model_fields)
            if isinstance(value, SecretStr) and value.get_secret_value()
        ]


def _is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# Who writes a store's batches (`store.writer`, connector/store/writer.py).
WriterMode = Literal["auto", "thread", "process"]


class StoreSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # A SQLite file path (relative: to the config file's directory), or any SQLAlchemy URL
    # (postgresql+psycopg://...), used as written.
    url: str = Field("./connector.db", validate_default=True)
    # Who writes the batches (docs/performance.md, "Issue 19, session 5"): `process`, a child
    # process with its own connection; `thread`, a thread of the connector's own process;
    # `auto`, a forked child where forking is safe (a process without threads when the engine
    # is built: the `connector` command), else the thread.
    writer: WriterMode = "auto"

    @field_validator("url")
    @classmethod
    def _file_relative_to_config(cls, value: str, info: ValidationInfo) -> str:
        return value if "://" in value else _relative_to_config(value, info)

    def sqlalchemy_url(self, base_dir: Path | None = None) -> str:
        if "://" in self.url:
            return self.url
        path = Path(self.url)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        return f"sqlite:///{path}"


class LoggingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class PolicySettings(BaseModel):
    """The policy registry's rules: the format a policy number must have."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pattern: str = r"^POL-\d+$"

    @field_validator("pattern")
    @classmethod
    def _valid_regex(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        return value


class DaemonSettings(BaseModel):
    """`connector run`: default schedule, jitter, shutdown bound, leases, health endpoint."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    default_schedule: ScheduleText = "15m"
    jitter: Duration = timedelta(seconds=30)
    # SIGTERM lets the batch in flight finish; runs still going after this are cut off.
    shutdown_timeout: Duration = timedelta(seconds=30)
    # Backfill window claims and source lock rows expire this long after their last renewal
    # (renewed every third of it), so a killed worker's work is taken over after about this.
    lease: Duration = timedelta(seconds=60)
    # A running sync checks that it still holds its source lock this often (and at most every
    # third of `lease`); a lost lock cancels the run (docs/reliability.md, detection bound).
    lock_check_interval: Duration = timedelta(seconds=5)
    # One source's whole run may last this long; past it the run is cancelled and recorded as
    # failed, and the other sources go on.
    run_timeout: Duration = timedelta(hours=2)
    # /healthz and /metrics (Prometheus text); off unless a port is given (0: any free port).
    health_port: int | None = Field(None, ge=0, le=65535)
    health_host: str = "127.0.0.1"
    # Also serve the import-contract API (and Bio Ecko webhooks) on that port, with `serve:`'s
    # consumers, page sizes and TLS files, so no separate `connector serve` process is needed.
    serve_api: bool = False

    @model_validator(mode="after")
    def _api_needs_a_port(self) -> DaemonSettings:
        if self.serve_api and self.health_port is None:
            raise ValueError("serve_api needs health_port: the API is served on that port")
        return self


class ServeConsumer(BaseModel):
    """One consumer of `connector serve`: its key (stored as a SHA-256 hex digest only, see
    `connector serve hash-key`) and the sources it may read ("*": every source)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=SOURCE_NAME)
    key_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    sources: tuple[str, ...] = Field(min_length=1)


class ServeSettings(BaseModel):
    """`connector serve`: the store as a MediTrak import-contract API (docs/serving.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(8780, ge=0, le=65535)
    # The largest `limit` a list request may ask for, and the one used when it asks none.
    max_page_size: int = Field(500, ge=1, le=5000)
    default_page_size: int = Field(50, ge=1, le=5000)
    # Records written less than this long ago are not listed yet: covers batches that took
    # their written_at before a slow commit (docs/serving.md, "Paging while syncs write").
    settle: Duration = timedelta(0)
    # TLS straight from uvicorn; leave unset behind a TLS-terminating reverse proxy.
    tls_certfile: ConfigPath | None = None
    tls_keyfile: ConfigPath | None = None
    # One line per request through the connector's logging (route template, status, time,
    # consumer name; never the query string, the key or a record).
    access_log: bool = True
    consumers: tuple[ServeConsumer, ...] = ()
    # Processed (done) webhook events are deleted once this old (docs/webhooks.md).
    webhook_retention: Duration = Field(timedelta(days=30), gt=timedelta(0))

    @model_validator(mode="after")
    def _tls_pair(self) -> ServeSettings:
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            raise ValueError("tls_certfile and tls_keyfile go together")
        if self.default_page_size > self.max_page_size:
            raise ValueError("default_page_size is larger than max_page_size")
        names = [c.name for c in self.consumers]
        if len(set(names)) != len(names):
            raise ValueError("consumer names must be unique")
        return self


class AppConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    store: StoreSettings = StoreSettings()
    logging: LoggingSettings = LoggingSettings()
    daemon: DaemonSettings = DaemonSettings()
    policies: PolicySettings = PolicySettings()
    serve: ServeSettings = ServeSettings()
    sources: tuple[SourceConfig, ...] = ()

    def source(self, name: str) -> SourceConfig:
        for source in self.sources:
            if source.name == name:
                return source
        known = ", ".join(s.name for s in self.sources) or "none"
        raise ConfigError([f"no source named {name!r} (configured: {known})"])

    def secrets(self) -> list[str]:
        return [secret for source in self.sources for secret in source.secrets()]
