"""What every verb shares: the config file named on the command line, loaded once."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from batchfarm.actors.settings import Loaded, load


@dataclass
class CliState:
    """The command line's state, kept on click's context object."""

    config_path: Path | None
    _loaded: Loaded | None = field(default=None, repr=False)

    @property
    def loaded(self) -> Loaded:
        """The settings, loaded on first use (so ``config check`` works with a bad default)."""
        if self._loaded is None:
            self._loaded = load(self.config_path)
        return self._loaded


def log_to_stderr() -> None:
    """Log INFO and above to stderr, as the long-running verbs (manager, node) do.

    httpx logs every request at INFO; a node polling the instance metadata service every few
    seconds would fill its log with them, so httpx only says what went wrong.
    """
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
