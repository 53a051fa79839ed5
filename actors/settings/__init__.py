"""Typed settings: loaded once at the entry point, frozen, and passed down.

``load()`` reads the defaults, an optional TOML file and ``BATCHFARM_<SECTION>_<KEY>``
environment variables, validates every value and returns :class:`Loaded`.
"""

from batchfarm.actors.settings.classes import node_class_names, node_class_settings
from batchfarm.actors.settings.load import CONFIG_ENV, ENV_PREFIX, Loaded, load
from batchfarm.actors.settings.model import (
    DEFAULT_CLASS,
    ApiSettings,
    GridSettings,
    MediaSettings,
    NodeClassSettings,
    NodeSettings,
    QueueSettings,
    Settings,
    StorageSettings,
    StoreSettings,
    TasksSettings,
)

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CLASS",
    "ENV_PREFIX",
    "ApiSettings",
    "GridSettings",
    "Loaded",
    "MediaSettings",
    "NodeClassSettings",
    "NodeSettings",
    "QueueSettings",
    "Settings",
    "StorageSettings",
    "StoreSettings",
    "TasksSettings",
    "load",
    "node_class_names",
    "node_class_settings",
]
