"""Load settings from defaults, a TOML file and ``BATCHFARM_<SECTION>_<KEY>`` variables.

Precedence, lowest first: the field's default, the file, the environment. Every value is
validated on the way in; the first bad one stops the load with a :class:`ConfigError` whose
one-line message names the file (or variable), the key, the value and what was expected.
A section of named tables (``[classes.NAME]``) comes whole from its file tables or from one
variable (``BATCHFARM_CLASSES``, an inline TOML table of tables).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from batchfarm.actors.errors import NO_VALUE, ConfigError, did_you_mean
from batchfarm.actors.settings.classes import check_classes
from batchfarm.actors.settings.model import STATE_DIR, Settings
from batchfarm.actors.settings.urls import check_url

ENV_PREFIX = "BATCHFARM_"
#: The variable that names the config file; not a setting itself.
CONFIG_ENV = "BATCHFARM_CONFIG"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
#: The name of a table in a table of tables (``[media.presets.NAME]``).
_TABLE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


@dataclass(frozen=True)
class Loaded:
    """Settings as loaded, with where each value came from."""

    settings: Settings
    #: ``"section.key"`` -> ``"default"``, the file's path, or the variable's name.
    sources: Mapping[str, str]
    #: The file read, if any.
    path: Path | None


def load(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Loaded:
    """Load settings from ``path`` (if given) and ``environ`` (default: ``os.environ``).

    Raises :class:`ConfigError` on the first bad file, key or value.
    """
    env = os.environ if environ is None else environ
    file_values = _read_file(path) if path is not None else {}
    values: dict[str, dict[str, Any]] = {}
    sources: dict[str, str] = {}
    for section_name, section_cls in _sections().items():
        if section_name in _TABLE_SECTIONS:
            values[section_name] = _load_tables(section_name, path, file_values, env, sources)
            continue
        given = file_values.get(section_name, {})
        parsed: dict[str, Any] = {}
        for fld in dataclasses.fields(section_cls):
            dotted = f"{section_name}.{fld.name}"
            env_name = f"{ENV_PREFIX}{section_name.upper()}_{fld.name.upper()}"
            if env_name in env:
                parsed[fld.name] = _parse_env(env_name, env[env_name], section_cls, fld)
                sources[dotted] = env_name
            elif fld.name in given:
                where = f"[{section_name}] {fld.name}"
                parsed[fld.name] = _check_value(str(path), where, given[fld.name], section_cls, fld)
                sources[dotted] = str(path)
            else:
                sources[dotted] = "default"
        values[section_name] = parsed
    _check_env_names(env)
    settings = _build(values, sources)
    check_classes(settings, sources)
    return Loaded(settings=settings, sources=sources, path=path)


def _sections() -> dict[str, type]:
    hints = typing.get_type_hints(Settings)
    return {f.name: hints[f.name] for f in dataclasses.fields(Settings)}


#: Sections that are tables of named tables (``[classes.NAME]``), by name.
_TABLE_SECTIONS = {f.name: f for f in dataclasses.fields(Settings) if f.metadata.get("table")}


def _load_tables(
    name: str,
    path: Path | None,
    file_values: Mapping[str, Any],
    env: Mapping[str, str],
    sources: dict[str, str],
) -> Any:
    """A table section (``[classes.NAME]``) from the environment (an inline table) or the file.

    The environment's ``BATCHFARM_CLASSES`` replaces the file's tables whole, as any variable
    replaces its key's value. Each table's source is recorded as ``classes.NAME``.
    """
    fld = _TABLE_SECTIONS[name]
    env_name = f"{ENV_PREFIX}{name.upper()}"
    if env_name in env:
        tables, source = _parse_env(env_name, env[env_name], Settings, fld), env_name
    elif name in file_values:
        tables = _check_value(str(path), f"[{name}]", file_values[name], Settings, fld)
        source = str(path)
    else:
        return fld.default
    for table in tables:
        sources[f"{name}.{table}"] = source
    return tables


def _read_file(path: Path) -> dict[str, dict[str, Any]]:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(str(path), "file", NO_VALUE, "no such file") from None
    except OSError as e:
        raise ConfigError(str(path), "file", NO_VALUE, f"cannot read it ({e.strerror})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(str(path), "syntax", NO_VALUE, f"expected valid TOML ({e})") from None
    sections = _sections()
    for name, table in data.items():
        if name not in sections:
            hint = did_you_mean(name, sections)
            raise ConfigError(str(path), f"[{name}]", NO_VALUE, f"unknown section{hint}")
        if not isinstance(table, dict):
            raise ConfigError(str(path), name, table, "expected a [section] table")
        if name in _TABLE_SECTIONS:
            continue  # its tables' keys are checked with their values (_check_tables)
        known = {f.name for f in dataclasses.fields(sections[name])}
        for key, value in table.items():
            if key not in known:
                hint = did_you_mean(key, known)
                raise ConfigError(str(path), f"[{name}] {key}", value, f"unknown key{hint}")
    return data


def _check_env_names(env: Mapping[str, str]) -> None:
    # A variable whose section is ours but whose key is not is a typo that would otherwise be
    # silently ignored; variables naming no section of ours are left alone (not settings).
    sections = _sections()
    for name in env:
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
            continue
        section, _, key = name[len(ENV_PREFIX) :].lower().partition("_")
        if section not in sections or (section in _TABLE_SECTIONS and not key):
            continue
        if section in _TABLE_SECTIONS:
            hint = f"; expected {ENV_PREFIX}{section.upper()} (an inline table of tables)"
            raise ConfigError("environment", name, env[name], f"unknown setting{hint}")
        known = {f.name for f in dataclasses.fields(sections[section])}
        if key not in known:
            options = {f"{ENV_PREFIX}{section.upper()}_{k.upper()}" for k in known}
            hint = did_you_mean(name, options)
            raise ConfigError("environment", name, env[name], f"unknown setting{hint}")


def _parse_env(name: str, raw: str, cls: type, fld: dataclasses.Field[Any]) -> Any:
    """Turn an environment string into the field's type, then validate it like a file value."""
    kinds = _kinds(typing.get_type_hints(cls)[fld.name])
    value: Any = raw
    text = raw.strip()
    if fld.metadata.get("table") is not None:
        # A table of tables is written as a TOML inline table: {web = {height = 480}}.
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            expected = "expected an inline TOML table such as {web = {height = 480}}"
            raise ConfigError("environment", name, raw, expected) from None
    elif bool in kinds:
        if text.lower() in _TRUE:
            value = True
        elif text.lower() in _FALSE:
            value = False
    elif int in kinds or float in kinds:
        for kind in (int, float):
            if kind in kinds:
                try:
                    value = kind(text)
                    break
                except ValueError:
                    continue
    return _check_value("environment", name, value, cls, fld)


def _check_value(
    source: str, where: str, value: Any, cls: type, fld: dataclasses.Field[Any]
) -> Any:
    """Validate one value against its field's type and limits; return it (ints as floats)."""
    meta = fld.metadata
    if meta.get("table") is not None:
        return _check_tables(source, where, value, cls, fld)
    kinds = _kinds(typing.get_type_hints(cls)[fld.name])
    expected = _describe(kinds, meta)
    if isinstance(value, str) and value in kinds:  # a Literal choice such as "auto"
        return value
    if isinstance(value, bool):
        if bool in kinds:
            return value
        raise ConfigError(source, where, value, f"expected {expected}")
    if isinstance(value, int | float) and (int in kinds or float in kinds):
        if isinstance(value, float) and (float not in kinds or not math.isfinite(value)):
            raise ConfigError(source, where, value, f"expected {expected}")
        low, high = meta.get("min"), meta.get("max")
        if (low is not None and value < low) or (high is not None and value > high):
            raise ConfigError(source, where, value, f"expected {expected}")
        return float(value) if float in kinds else value
    if isinstance(value, str) and str in kinds:
        # URLs naming {state_dir} are checked once it is known (see _build).
        if meta.get("url") is not None and STATE_DIR not in value:
            problem = check_url(value, meta["url"])
            if problem:
                raise ConfigError(source, where, value, f"expected {problem}")
        return value
    raise ConfigError(source, where, value, f"expected {expected}")


def _check_tables(
    source: str, where: str, value: Any, cls: type, fld: dataclasses.Field[Any]
) -> Any:
    """Validate a table of named tables (``[media.presets.NAME]``) against its schema.

    Each table's keys are the schema dataclass's fields, checked like any setting; the
    schema's ``__post_init__`` may refuse a combination with a ValueError. Errors name the
    table and key: ``[media.presets.web] crf = 99: expected ...``.
    """
    schema: type = fld.metadata["table"]
    # "[media] presets" or "[classes]" (file), or "BATCHFARM_MEDIA_PRESETS" (environment).
    dotted = where.strip("[]").replace("] ", ".") if where.startswith("[") else where
    if not isinstance(value, dict):
        raise ConfigError(source, where, value, "expected a table of [name] tables")
    fields = {f.name: f for f in dataclasses.fields(schema)}
    checked: dict[str, dict[str, Any]] = {}
    for name, table in value.items():
        here = f"[{dotted}.{name}]"
        if not _TABLE_NAME.fullmatch(name):
            expected = "expected a name of 1 to 64 letters, digits, '_' or '-'"
            raise ConfigError(source, here, NO_VALUE, expected)
        if not isinstance(table, dict):
            raise ConfigError(source, here, table, "expected a table")
        values: dict[str, Any] = {}
        for key, item in table.items():
            if key not in fields:
                hint = did_you_mean(key, fields)
                raise ConfigError(source, f"{here} {key}", item, f"unknown key{hint}")
            values[key] = _check_value(source, f"{here} {key}", item, schema, fields[key])
        try:
            schema(**values)
        except ValueError as e:
            raise ConfigError(source, here, NO_VALUE, str(e)) from None
        checked[name] = values
    return typing.get_type_hints(cls)[fld.name](checked)


def _kinds(hint: Any) -> set[Any]:
    """Flatten ``int | Literal["auto"]`` into ``{int, "auto"}``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        out: set[Any] = set()
        for arg in typing.get_args(hint):
            out |= _kinds(arg)
        return out
    if typing.get_origin(hint) is Literal:
        return set(typing.get_args(hint))
    return {hint}


def _describe(kinds: set[Any], meta: Mapping[str, Any]) -> str:
    words = []
    for choice in sorted(k for k in kinds if isinstance(k, str)):
        words.append(f'"{choice}"')
    low, high = meta.get("min"), meta.get("max")
    span = ""
    if low is not None and high is not None:
        span = f" from {low:g} to {high:g}"
    elif low is not None:
        span = f" of at least {low:g}"
    if float in kinds:
        words.append(f"a number{span}")
    elif int in kinds:
        words.append(f"an integer{span}")
    if bool in kinds:
        words.append("true or false")
    if str in kinds:
        words.append("a string")
    return " or ".join(words)


def _build(values: dict[str, dict[str, Any]], sources: Mapping[str, str]) -> Settings:
    """Make the frozen settings, with ``{state_dir}`` replaced in URLs and checked again."""
    sections = _sections()
    grid = values["grid"]
    default_state = sections["grid"]().state_dir
    # A relative state folder is relative to where the process starts, like any CLI path.
    state_dir = os.path.abspath(os.path.expanduser(grid.get("state_dir", default_state)))
    grid["state_dir"] = state_dir
    built: dict[str, Any] = {}
    for name, cls in sections.items():
        if name in _TABLE_SECTIONS:
            built[name] = values[name]
            continue
        given = values[name]
        for fld in dataclasses.fields(cls):
            raw = given.get(fld.name, fld.default)
            if fld.metadata.get("url") is not None and STATE_DIR in raw:
                source = sources[f"{name}.{fld.name}"]
                where = f"[{name}] {fld.name}"
                replaced = raw.replace(STATE_DIR, state_dir)
                given[fld.name] = _check_value(source, where, replaced, cls, fld)
        built[name] = cls(**given)
    return Settings(**built)
