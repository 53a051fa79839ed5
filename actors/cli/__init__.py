"""The ``batchfarm`` command: one verb per job, every verb reading one config file.

Settings are loaded once, on first use, from ``--config FILE`` (or ``BATCHFARM_CONFIG``)
and the environment, and passed down to the verb. A bad config stops the command with its
one-line error and exit code 1; usage errors exit 2 (click's convention).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from batchfarm.actors.cli.config_cmd import config
from batchfarm.actors.cli.context import CliState
from batchfarm.actors.cli.manager_cmd import manager
from batchfarm.actors.cli.node_cmd import node
from batchfarm.actors.errors import BatchfarmError
from batchfarm.actors.settings import CONFIG_ENV


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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


cli.add_command(config)
cli.add_command(manager)
cli.add_command(node)


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
