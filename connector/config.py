"""Configuration: one YAML file, `${ENV_VAR}` interpolation, every problem reported at once.

Sources are validated against the config model of their adapter (looked up by `type` in the
registry), which behaves like a discriminated union that new adapters can join without
editing this module.
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from connector.categories import RulesDocument, read_rules_file
from connector.errors import ConfigError
from connector.model import Category

_ENV_REF = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")
_DURATION = re.compile(r"^\s*(?P<n>\d+(?:\.\d+)?)\s*(?P<unit>ms|s|m|h|d|w)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
SOURCE_NAME = r"^[a-z0-9][a-z0-9_.-]{0,99}$"


def parse_duration(value: Any) -> timedelta:
    """`90`, `90s`, `15m`, `2h`, `7d`, `1w` → timedelta (a bare number is seconds)."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=value)
    if isinstance(value, str) and (match := _DURATION.match(value)):
        return timedelta(seconds=float(match["n"]) * _UNIT_SECONDS[match["unit"] or "s"])
    raise ValueError(f"not a duration: {value!r} (use e.g. 30s, 15m, 2h, 7d)")


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


def _check_schedule(value: str | None) -> str | None:
    """Schedules are validated when the config loads, by building their trigger."""
    if value is not None:
        from connector.scheduler import parse_schedule  # APScheduler only when schedules exist

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
    return _resolve(value, base_dir)


def _resolve(value: str, base_dir: Path | None) -> str:
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


# A file path in the config: relative paths are relative to the config file's directory.
ConfigPath = Annotated[str, AfterValidator(_relative_to_config)]
# A PEM file of CA certificates (see HttpSettings.ca_bundle).
CaBundlePath = Annotated[ConfigPath, AfterValidator(_pem_ca_file)]


class HttpSettings(BaseModel):
    """How hard we may push one vendor: timeouts, concurrency, retries, rate limit."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout: Duration = timedelta(seconds=30)
    concurrency: int = Field(8, ge=1, le=256)
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
    # The `category_rules` file as `build_config` read and validated it: runs use exactly the
    # rules that were checked when the config loaded, without reading the file again.
    _loaded_rules: RulesDocument | None = PrivateAttr(default=None)

    def loaded_category_rules(self) -> RulesDocument | None:
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


class StoreSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # A SQLite file path (relative: to the config file's directory), or any SQLAlchemy URL
    # (postgresql+psycopg://...), used as written.
    url: str = Field("./connector.db", validate_default=True)

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
    # /healthz and /metrics (Prometheus text); off unless a port is given (0: any free port).
    health_port: int | None = Field(None, ge=0, le=65535)
    health_host: str = "127.0.0.1"


class AppConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    store: StoreSettings = StoreSettings()
    logging: LoggingSettings = LoggingSettings()
    daemon: DaemonSettings = DaemonSettings()
    policies: PolicySettings = PolicySettings()
    sources: tuple[SourceConfig, ...] = ()

    def source(self, name: str) -> SourceConfig:
        for source in self.sources:
            if source.name == name:
                return source
        known = ", ".join(s.name for s in self.sources) or "none"
        raise ConfigError([f"no source named {name!r} (configured: {known})"])

    def secrets(self) -> list[str]:
        return [secret for source in self.sources for secret in source.secrets()]


def interpolate_env(node: Any, env: Mapping[str, str], problems: list[str], path: str = "") -> Any:
    """Replace `${NAME}` / `${NAME:-default}` in every string; unset names become problems."""
    if isinstance(node, dict):
        return {
            k: interpolate_env(v, env, problems, f"{path}.{k}" if path else str(k))
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [interpolate_env(v, env, problems, f"{path}[{i}]") for i, v in enumerate(node)]
    if not isinstance(node, str):
        return node

    def substitute(match: re.Match[str]) -> str:
        name = match["name"]
        if name in env:
            return env[name]
        if match["default"] is not None:
            return match["default"]
        problems.append(f"{path}: environment variable {name} is not set")
        return ""

    return _ENV_REF.sub(substitute, node)


def _format_error(prefix: str, error: Any) -> str:
    location = ".".join(str(p) for p in error["loc"])
    where = f"{prefix}.{location}" if location else prefix
    message = error["msg"].removeprefix("Value error, ")
    return f"{where}: {message}"


def build_config(
    raw: Any, *, env: Mapping[str, str] | None = None, base_dir: Path | None = None
) -> AppConfig:
    """Validate a parsed YAML document; raise one ConfigError naming every problem.

    Relative file paths in it (`store.url`, `category_rules`, `http.ca_bundle`) are made
    absolute against `base_dir`, the config file's directory; without one (a config built in
    code) they stay relative to the working directory. Each source's `category_rules` file is
    read and validated here (its problems are listed with the others) and kept on the source
    (`SourceConfig.loaded_category_rules`), so that runs do not read it again."""
    from connector.registry import source_types

    context = {"base_dir": base_dir.absolute() if base_dir is not None else None}
    problems: list[str] = []
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(["the config must be a mapping with store / logging / sources"])
    raw = interpolate_env(raw, os.environ if env is None else env, problems)
    raw_sources = raw.pop("sources", None) or []
    sources: list[SourceConfig] = []
    if not isinstance(raw_sources, list):
        problems.append("sources: must be a list of sources")
        raw_sources = []
    known_types = source_types()
    seen: set[str] = set()
    for index, item in enumerate(raw_sources):
        prefix = f"sources[{index}]"
        if not isinstance(item, dict):
            problems.append(f"{prefix}: must be a mapping")
            continue
        prefix = f"sources[{index}] ({item.get('name', '?')})"
        # Checked on the raw names, so that a duplicate of an invalid source is reported too.
        name = item.get("name")
        if isinstance(name, str):
            if name in seen:
                problems.append(f"{prefix}.name: duplicate source name {name!r}")
            seen.add(name)
        kind = item.get("type")
        source: SourceConfig | None = None
        if kind not in known_types:
            problems.append(
                f"{prefix}.type: {kind!r} is not one of {', '.join(sorted(known_types))}"
            )
        else:
            try:
                source = known_types[kind].config_model().model_validate(item, context=context)
            except ValidationError as exc:
                problems.extend(_format_error(prefix, e) for e in exc.errors())
        # The rules file is read now, even for a source with other problems, so that a broken
        # one is listed with everything else rather than found by the first run.
        rules_path = source.category_rules if source is not None else item.get("category_rules")
        if isinstance(rules_path, str) and rules_path:
            try:
                rules = read_rules_file(_resolve(rules_path, context["base_dir"]))
            except ConfigError as exc:
                problems.extend(f"{prefix}.category_rules: {p}" for p in exc.problems)
            else:
                if source is not None:
                    source._loaded_rules = rules
        if source is not None:
            sources.append(source)
    try:
        # An absent `store` is validated too, so that its default path is resolved like any.
        config = AppConfig.model_validate({"store": {}, **raw, "sources": ()}, context=context)
    except ValidationError as exc:
        problems.extend(_format_error("", e).lstrip(".") for e in exc.errors())
        config = AppConfig()
    if problems:
        raise ConfigError(problems)
    return config.model_copy(update={"sources": tuple(sources)})


def plaintext_secret_warnings(raw: Any, config: AppConfig, origin: str) -> list[str]:
    """One warning per secret written into the config file itself instead of `${ENV_VAR}`."""
    raw_sources = raw.get("sources") if isinstance(raw, dict) else None
    if not isinstance(raw_sources, list):
        return []
    warnings = []
    for source in config.sources:
        item = next(
            (s for s in raw_sources if isinstance(s, dict) and s.get("name") == source.name), None
        )
        if item is None:
            continue
        for name, field in type(source).model_fields.items():
            if field.annotation is not SecretStr and field.annotation != SecretStr | None:
                continue
            value = item.get(name)
            if isinstance(value, str) and value and not _ENV_REF.search(value):
                variable = f"{source.name}_{name}".upper().replace("-", "_").replace(".", "_")
                warnings.append(
                    f"{origin}: sources ({source.name}).{name} holds a secret in plain text; "
                    f"write {name}: ${{{variable}}} and set {variable} in the environment"
                )
    return warnings


def load_config(
    path: str | Path,
    *,
    env: Mapping[str, str] | None = None,
    warnings: list[str] | None = None,
) -> AppConfig:
    """The validated config of a YAML file; with `warnings`, advice that does not stop the
    connector (secrets written in plain text) is appended to that list."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"cannot read {path}: {exc.strerror}"], origin=str(path)) from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"not valid YAML: {exc}"], origin=str(path)) from exc
    try:
        # Paths in the file are relative to the file, not to the working directory: a daemon
        # started from elsewhere must read the same rules, CA and store.
        config = build_config(raw, env=env, base_dir=path.absolute().parent)
    except ConfigError as exc:
        raise ConfigError(exc.problems, origin=str(path)) from None
    if warnings is not None:
        warnings.extend(plaintext_secret_warnings(raw, config, str(path)))
    return config
