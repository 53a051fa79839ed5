"""The submit-time check that every stage names a node class the grid has.

A stage of a class no node serves and no fleet scales would wait forever, so a job naming
one is refused before anything is uploaded or recorded, naming the field
(``stages[i].node_class``) and the classes the grid's config defines. The manager knows its
classes from the task queues it opened for them (:meth:`TaskQueues.node_classes`); the CLI
asks the manager's ``GET /api/v1/scaling``.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from batchfarm.actors.errors import SpecError
from batchfarm.actors.manager.stages import StageSpec


def check_node_classes(stages: Sequence[StageSpec], classes: Collection[str], source: str) -> None:
    """Raise :class:`SpecError` for the first stage whose ``node_class`` is not in ``classes``."""
    for stage in stages:
        if stage.node_class not in classes:
            known = ", ".join(f'"{name}"' for name in classes)
            expected = f"expected a node class of the grid: {known} (see [classes.NAME])"
            raise SpecError(source, f"stages[{stage.index}].node_class", stage.node_class, expected)
