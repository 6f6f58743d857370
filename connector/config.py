"""The config loader: one YAML file, `${ENV_VAR}` interpolation, every problem reported at once.

Sources are validated against the config model of their source type (found by vendor
discovery, `connector.sources.discovery`), which behaves like a discriminated union that new
vendors join without editing this module. The models themselves are `connector.settings`,
re-exported here for callers that load and inspect a config.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, SecretStr, ValidationError

from connector.errors import ConfigError
from connector.pipeline.categories import read_rules_file
from connector.schedule import parse_duration
from connector.settings import (
    AppConfig,
    DaemonSettings,
    Duration,
    HttpSettings,
    LoggingSettings,
    PolicySettings,
    SourceConfig,
    StoreSettings,
    resolve_path,
)
from connector.sources.discovery import source_types

__all__ = [
    "AppConfig",
    "ConfigError",
    "DaemonSettings",
    "Duration",
    "HttpSettings",
    "LoggingSettings",
    "PolicySettings",
    "SourceConfig",
    "StoreSettings",
    "build_config",
    "interpolate_env",
    "load_config",
    "parse_duration",
    "plaintext_secret_warnings",
]

_ENV_REF = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")


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
    # A URL's `user:password@` is a credential: never echoed in an error.
    message = _URL_USERINFO.sub(r"\1***@", error["msg"].removeprefix("Value error, "))
    return f"{where}: {message}"


_URL_USERINFO = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s'\"]+@")


def build_config(
    raw: Any, *, env: Mapping[str, str] | None = None, base_dir: Path | None = None
) -> AppConfig:
    """Validate a parsed YAML document; raise one ConfigError naming every problem.

    Relative file paths in it (`store.url`, `category_rules`, `http.ca_bundle`) are made
    absolute against `base_dir`, the config file's directory; without one (a config built in
    code) they stay relative to the working directory. Each source's `category_rules` file is
    read and validated here (its problems are listed with the others) and kept on the source
    (`SourceConfig.loaded_category_rules`), so that runs do not read it again."""
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
                rules = read_rules_file(resolve_path(rules_path, context["base_dir"]))
            except ConfigError as exc:
                problems.extend(f"{prefix}.category_rules: {p}" for p in exc.problems)
            else:
                if source is not None:
                    source.keep_loaded_rules(rules)
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
    """One warning per secret written into the config file itself instead of `${ENV_VAR}`,
    at any depth of a source (`auth.password` too), named by its path in the YAML."""
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
        for path in _plaintext_secret_paths(source, item):
            variable = f"{source.name}_{'_'.join(path)}".upper()
            variable = re.sub(r"[^A-Z0-9_]", "_", variable)
            where, key = ".".join(path), path[-1]
            warnings.append(
                f"{origin}: sources ({source.name}).{where} holds a secret in plain text; "
                f"write {key}: ${{{variable}}} and set {variable} in the environment"
            )
    return warnings


def _plaintext_secret_paths(model: BaseModel, raw: dict[str, Any]) -> list[tuple[str, ...]]:
    """The YAML paths (keys as written) of the secrets of `model` given as literal text in
    `raw`, its part of the YAML, walking nested models and lists of them."""
    found: list[tuple[str, ...]] = []
    for name, field in type(model).model_fields.items():
        key = field.alias if field.alias is not None and field.alias in raw else name
        found.extend((key, *rest) for rest in _secret_paths_in(getattr(model, name), raw.get(key)))
    return found


def _secret_paths_in(value: Any, raw: Any) -> list[tuple[str, ...]]:
    if isinstance(value, SecretStr):
        plain = isinstance(raw, str) and raw and not _ENV_REF.search(raw)
        return [()] if plain else []
    if isinstance(value, BaseModel) and isinstance(raw, dict):
        return _plaintext_secret_paths(value, raw)
    if isinstance(value, list | tuple) and isinstance(raw, list):
        return [
            (str(index), *rest)
            for index, (part, raw_part) in enumerate(zip(value, raw, strict=False))
            for rest in _secret_paths_in(part, raw_part)
        ]
    return []


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
        # Position and problem only: PyYAML's message quotes the line, which may hold a secret.
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError([f"not valid YAML{where}: {problem}"], origin=str(path)) from None
    try:
        # Paths in the file are relative to the file, not to the working directory: a daemon
        # started from elsewhere must read the same rules, CA and store.
        config = build_config(raw, env=env, base_dir=path.absolute().parent)
    except ConfigError as exc:
        raise ConfigError(exc.problems, origin=str(path)) from None
    if warnings is not None:
        warnings.extend(plaintext_secret_warnings(raw, config, str(path)))
    return config
