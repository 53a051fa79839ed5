"""Typed settings: loaded once at the entry point, frozen, and passed down.

``load()`` reads the defaults, an optional TOML file and ``BATCHFARM_<SECTION>_<KEY>``
environment variables, validates every value and returns :class:`Loaded`.
"""

from batchfarm.actors.settings.load import CONFIG_ENV, ENV_PREFIX, Loaded, load
from batchfarm.actors.settings.model import (
    GridSettings,
    NodeSettings,
    QueueSettings,
    Settings,
    StorageSettings,
    StoreSettings,
)

__all__ = [
    "CONFIG_ENV",
    "ENV_PREFIX",
    "GridSettings",
    "Loaded",
    "NodeSettings",
    "QueueSettings",
    "Settings",
    "StorageSettings",
    "StoreSettings",
    "load",
]
