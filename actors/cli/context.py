"""What every verb shares: the config file named on the command line, loaded once."""

from __future__ import annotations

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
