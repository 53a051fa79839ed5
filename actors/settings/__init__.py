"""Typed settings: loaded once at the entry point, frozen, and passed down.

``load()`` reads the defaults, an optional TOML file and ``BATCHFARM_<SECTION>_<KEY>``
environment variables, validates every value and returns :class:`Loaded`.
"""

from batchfarm.actors.settings.load import CONFIG_ENV, ENV_PREFIX, Loaded, load
from batchfarm.actors.settings.model import (
    ApiSettings,
    GridSettings,
    MediaSettings,
    NodeSettings,
    QueueSettings,
    Settings,
    StorageSettings,
    StoreSettings,
    TasksSettings,
)

__all__ = [
    "CONFIG_ENV",
    "ENV_PREFIX",
    "ApiSettings",
    "GridSettings",
    "Loaded",
    "MediaSettings",
    "NodeSettings",
    "QueueSettings",
    "Settings",
    "StorageSettings",
    "StoreSettings",
    "TasksSettings",
    "load",
]
