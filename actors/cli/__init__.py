"""The ``batchfarm`` command: one verb per job, every verb reading one config file.

Settings are loaded once, on first use, from ``--config FILE`` (or ``BATCHFARM_CONFIG``)
and the environment, and passed down to the verb. A bad config stops the command with its
one-line error and exit code 1; usage errors exit 2 (click's convention).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import click

from batchfarm.actors.cli.context import CliState
from batchfarm.actors.errors import BatchfarmError
from batchfarm.actors.settings import CONFIG_ENV

#: Every verb, as ``module:command`` under this package. Imported when used: a verb that only
#: talks to the API should not pay for importing the manager, the store and SQLAlchemy.
VERBS = {
    "up": "up_cmd:up",
    "manager": "manager_cmd:manager",
    "node": "node_cmd:node",
    "submit": "submit_cmd:submit",
    "status": "status_cmd:status",
    "watch": "watch_cmd:watch",
    "results": "results_cmd:results",
    "cancel": "jobs_cmd:cancel",
    "retry": "jobs_cmd:retry",
    "nodes": "nodes_cmd:nodes",
    "drain": "nodes_cmd:drain",
    "pause": "nodes_cmd:pause",
    "resume": "nodes_cmd:resume",
    "cordon": "nodes_cmd:cordon",
    "uncordon": "nodes_cmd:uncordon",
    "config": "config_cmd:config",
    "scaling": "scaling_cmd:scaling",
}


class _Verbs(click.Group):
    """A group whose commands are imported on first use (see :data:`VERBS`)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(VERBS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        where = VERBS.get(cmd_name)
        if where is None:
            return None
        module, _, attr = where.partition(":")
        command = getattr(importlib.import_module(f"{__name__}.{module}"), attr)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=_Verbs, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar=CONFIG_ENV,
    help=f"Config file (TOML). Default: ${CONFIG_ENV}, else built-in defaults.",
)
@click.version_option(package_name="batchfarm", prog_name="batchfarm")
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None) -> None:
    """batchfarm: a batch-processing grid that keeps every core busy."""
    ctx.obj = CliState(config_path)


def main() -> None:
    """Console-script entry point."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(1)
    except BatchfarmError as e:
        click.echo(f"batchfarm: {e}", err=True)
        sys.exit(1)
