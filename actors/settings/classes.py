"""Node classes: the ``default`` class (``[autoscale]``) and the ``[classes.NAME]`` tables.

A node class (``cpu``, ``gpu``, ``highmem``) has its own task queues, its own fleet and its
own limits; a stage names the class it needs (``node_class``) and a node serves one class
(``[node] node_class``). :func:`node_class_settings` answers "the settings of class X" for
the default class and the tables alike; :func:`check_classes` is the loader's check of the
names, which become queue names (``tasks-NAME``, ``tasks-NAME-high``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import fields
from urllib.parse import urlsplit

from batchfarm.actors.errors import NO_VALUE, ConfigError
from batchfarm.actors.settings.model import DEFAULT_CLASS, NodeClassSettings, Settings

#: A class name: it goes into queue names, so SQS's characters only, and short.
CLASS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}")
_NAME_RULE = (
    "expected a name of 1 to 32 letters, digits, '_' or '-', starting with a letter or digit"
)
#: SQS's longest queue name; a class's longest is ``PREFIX-tasks-NAME-high-dlq``.
_SQS_NAME_MAX = 80


def node_class_names(settings: Settings) -> list[str]:
    """Every node class of the grid: ``default`` first, then the ``[classes.NAME]`` tables."""
    return [DEFAULT_CLASS, *sorted(settings.classes)]


def node_class_settings(settings: Settings, node_class: str) -> NodeClassSettings:
    """The fleet, limits and price of ``node_class``.

    For ``default`` they are ``[autoscale]``'s provider, group, min_nodes, max_nodes,
    workers_per_node and price_per_hour; for any other class its ``[classes.NAME]`` table's.
    Raises KeyError for a class the settings do not define.
    """
    if node_class == DEFAULT_CLASS:
        scale = settings.autoscale
        values = {f.name: getattr(scale, f.name) for f in fields(NodeClassSettings)}
        return NodeClassSettings(**values)
    return NodeClassSettings(**settings.classes[node_class])


def check_classes(settings: Settings, sources: Mapping[str, str]) -> None:
    """Refuse class names that cannot name queues, and a node serving an undefined class.

    Raises :class:`ConfigError` naming the table (or ``[node] node_class``) and its source.
    """
    prefix = ""
    parts = urlsplit(settings.queue.url)
    if parts.scheme == "sqs":
        prefix = parts.netloc
    for name in settings.classes:
        source = sources.get(f"classes.{name}", "settings")
        where = f"[classes.{name}]"
        if name == DEFAULT_CLASS:
            expected = "expected another name: [autoscale] describes the default class"
            raise ConfigError(source, where, NO_VALUE, expected)
        if not CLASS_NAME.fullmatch(name):
            raise ConfigError(source, where, NO_VALUE, _NAME_RULE)
        longest = f"{prefix}-tasks-{name}-high-dlq"
        if prefix and len(longest) > _SQS_NAME_MAX:
            expected = (
                f"expected a name short enough for its SQS queue {longest!r} (at most"
                f" {_SQS_NAME_MAX} characters): use a shorter class name or sqs:// prefix"
            )
            raise ConfigError(source, where, NO_VALUE, expected)
    node_class = settings.node.node_class
    if node_class not in node_class_names(settings):
        known = ", ".join(f'"{n}"' for n in node_class_names(settings))
        expected = f"expected a node class of this config: {known}"
        source = sources.get("node.node_class", "settings")
        raise ConfigError(source, "[node] node_class", node_class, expected)
