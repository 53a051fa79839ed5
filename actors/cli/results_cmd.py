"""``batchfarm results JOB --to DIR``: download a job's results, one file per output."""

from __future__ import annotations

import filecmp
import os
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import click

from batchfarm.actors.cli.client import ApiClient, ApiError
from batchfarm.actors.cli.context import CliState
from batchfarm.actors.cli.show import byte_progress, size
from batchfarm.actors.errors import BatchfarmError


class ResultsError(BatchfarmError):
    """Results could not be written as asked (a file in the way, a bad name)."""


@click.command("results")
@click.argument("job")
@click.option(
    "--to",
    "folder",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder to download into (made if missing).",
)
@click.option("--force", is_flag=True, help="Overwrite existing files that differ.")
@click.pass_obj
def results(state: CliState, job: str, folder: Path, force: bool) -> None:
    """Download every result of JOB (its last stage's outputs) into DIR/<stage>/<part>/.

    A file already there with the same bytes is kept; one that differs stops the command
    (exit 1, naming it) unless --force. Prints how many files went where.
    """
    with ApiClient.from_loaded(state.loaded) as api:
        items = api.results(job)
        planned = [(item, _target(folder, job, item)) for item in items]
        if not force:
            clashes = [
                str(path)
                for item, path in planned
                if path.is_file() and path.stat().st_size != int(item.get("size", -1))
            ]
            if clashes:
                raise ResultsError(_clash_message(clashes))
        total = sum(int(item.get("size") or 0) for item in items)
        kept: list[str] = []
        with byte_progress(f"downloading {len(items)} results ({size(total)})", total) as step:
            for item, path in planned:
                path.parent.mkdir(parents=True, exist_ok=True)
                if not path.exists() or force:
                    api.download(item["url"], path, step)
                    continue
                if path.is_dir():
                    raise ResultsError(f"{path}: a folder is in the way of result {item['key']}")
                # Same size already: fetch beside it and compare, so equal files are kept.
                fresh = path.with_name(f".{path.name}.new")
                try:
                    api.download(item["url"], fresh, step)
                    if not filecmp.cmp(fresh, path, shallow=False):
                        kept.append(str(path))
                finally:
                    fresh.unlink(missing_ok=True)
    if kept:
        raise ResultsError(_clash_message(kept))
    click.echo(f"{len(items)} results ({size(total)}) in {os.path.abspath(folder)}")


def _target(folder: Path, job: str, item: Mapping[str, Any]) -> Path:
    """``DIR/<stage>/<part>/<name>`` for the output ``jobs/<job>/<stage>/<part>/<name>``."""
    key = str(item.get("key", ""))
    prefix = f"jobs/{job}/{item.get('stage')}/{item.get('part')}/"
    name = PurePosixPath(key[len(prefix) :] if key.startswith(prefix) else key.rpartition("/")[2])
    if not name.parts or any(p in ("", ".", "..") for p in name.parts) or name.is_absolute():
        raise ApiError(f"result {key!r}: expected a key under {prefix}")
    return folder / str(item["stage"]) / str(item["part"]) / Path(*name.parts)


def _clash_message(paths: list[str]) -> str:
    shown = ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
    return f"{shown}: a different file is already there; expected none (or --force to overwrite)"
