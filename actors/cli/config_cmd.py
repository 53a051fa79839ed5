"""``batchfarm config show`` and ``batchfarm config check FILE``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import click

from batchfarm.actors.cli.context import CliState
from batchfarm.actors.settings import Settings, load
from batchfarm.actors.settings.fields import toml_inline


@click.group()
def config() -> None:
    """Show the effective config or check a config file."""


@config.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON: values and their sources.")
@click.pass_obj
def show(state: CliState, as_json: bool) -> None:
    """Print the effective config and where each value came from."""
    loaded = state.loaded
    shown = _masked(loaded.settings)
    if as_json:
        out = {
            section: {
                key: {"value": value, "source": loaded.sources[f"{section}.{key}"]}
                for key, value in values.items()
            }
            for section, values in shown.items()
        }
        click.echo(json.dumps(out, indent=2))
        return
    source = str(loaded.path) if loaded.path else "no file (built-in defaults)"
    click.echo(f"# effective batchfarm config; file: {source}")
    for section, values in shown.items():
        click.echo(f"\n[{section}]")
        for key, value in values.items():
            line = f"{key} = {_toml(value)}"
            click.echo(f"{line:<60} # {loaded.sources[f'{section}.{key}']}")


@config.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def check(file: Path) -> None:
    """Validate FILE (the environment is not applied); exit 1 naming the first problem."""
    load(file, environ={})
    click.echo(f"{file}: ok")


#: What ``config show`` prints for a secret that is set (tokens never reach a terminal or log).
MASK = "***"


def _masked(settings: Settings) -> dict[str, dict[str, Any]]:
    """The settings as plain dicts, secrets that are set replaced with :data:`MASK`."""
    out: dict[str, dict[str, Any]] = {}
    for section in dataclasses.fields(settings):
        values = getattr(settings, section.name)
        if section.metadata.get("table"):  # [classes.NAME]: one inline table per name
            out[section.name] = dict(values)
            continue
        out[section.name] = {
            f.name: MASK
            if f.metadata.get("secret") and getattr(values, f.name)
            else _without_password(getattr(values, f.name))
            for f in dataclasses.fields(values)
        }
    return out


def _without_password(value: Any) -> Any:
    """``value`` with the password of a URL in it masked (``[store] url`` may carry one)."""
    if not isinstance(value, str) or "://" not in value:
        return value
    parts = urlsplit(value)
    if parts.password is None:
        return value
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:{MASK}@{host}"))


def _toml(value: Any) -> str:
    if isinstance(value, dict):
        return toml_inline(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return repr(value)
