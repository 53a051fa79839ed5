"""How a settings field is declared: its default, documentation and limits in its metadata.

:func:`setting` declares a plain setting, :func:`table_meta` a table of named tables
(``[media.presets.NAME]``, ``[classes.NAME]``) whose values are a frozen :class:`Tables`.
The loader validates by this metadata, and ``batchfarm config show`` explains by it.
"""

from __future__ import annotations

import json
from dataclasses import field
from typing import Any


def setting(
    default: Any,
    doc: str,
    *,
    min: float | None = None,
    max: float | None = None,
    url: tuple[str, ...] | None = None,
    secret: bool = False,
) -> Any:
    """Declare a settings field: its default, one line of documentation, and its limits.

    ``url`` names the URL schemes the value may use; the empty tuple means "any SQLAlchemy
    database URL". A ``secret`` value is never printed (``config show`` masks it).
    """
    meta = {"doc": doc, "min": min, "max": max, "url": url, "secret": secret}
    return field(default=default, metadata=meta)


def table_meta(doc: str, schema: type) -> dict[str, Any]:
    """Metadata of a table of named tables (``[media.presets.NAME]``, ``[classes.NAME]``).

    Its documentation, and the dataclass each named table is checked against; for
    ``field(default=Tables(), metadata=table_meta(...))``.
    """
    return {"doc": doc, "min": None, "max": None, "url": None, "secret": False, "table": schema}


class Tables(dict[str, dict[str, Any]]):
    """A table of named tables: name -> its checked values (a hashable, frozen default).

    The field (or section) holding one names its schema dataclass in its ``table`` metadata.
    """

    def __hash__(self) -> int:  # type: ignore[override]  # settings are never mutated
        return hash(tuple(sorted((k, tuple(sorted(v.items()))) for k, v in self.items())))

    def __repr__(self) -> str:
        # As a TOML inline table, so `config show` prints what a config file would hold.
        return toml_inline(self)


def toml_inline(value: Any) -> str:
    """``value`` (a table, possibly of tables, or a scalar) as TOML inline text."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_inline(v)}" for k, v in value.items()) + "}"
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value) if isinstance(value, str) else repr(value)
