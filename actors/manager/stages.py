"""A job spec's stages: each read and checked into a :class:`StageSpec`.

Stages form a line: the first reads the job's inputs, each later one is fed by the one
before it. A ``from`` naming anything else (itself, a later stage, an earlier one skipping a
stage, no stage) is refused, saying which stage would fit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from batchfarm.actors.backends.store.models import StageMode
from batchfarm.actors.errors import NO_VALUE, SpecError, TaskError, UnknownHandlerError
from batchfarm.actors.errors import did_you_mean as hint
from batchfarm.actors.handlers.params import ParamError, UnknownParamError
from batchfarm.actors.handlers.registry import check_handler_name, check_params, known_names
from batchfarm.actors.manager import values as v
from batchfarm.actors.messages import IDENT
from batchfarm.actors.settings import TasksSettings

#: Stage names that would collide with the job's own keys (``jobs/<job>/input/...``).
RESERVED_STAGES = ("input", "params", "control")
#: Most tasks a first stage may have (inputs, or ``parts``).
MAX_PARTS = 100_000

STAGE_KEYS = (
    "name",
    "handler",
    "params",
    "from",
    "mode",
    "per",
    "parts",
    "range",
    "max_attempts",
    "time_limit",
    "retry_backoff",
    "node_class",
)
_RANGE_KEYS = ("param", "start", "step", "values")
_NAME_RULE = "expected 1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit"


@dataclass(frozen=True)
class PartRange:
    """A first stage's parameter range: part ``i`` gets ``params[param] = start + i * step``.

    With ``values`` (a list of JSON values), part ``i`` gets ``values[i]`` instead, and the
    stage has one part per value: a ladder's renditions, a list of presets.
    """

    param: str
    start: int | float = 0
    step: int | float = 1
    values: tuple[Any, ...] | None = None

    def value(self, part: int) -> Any:
        """The parameter's value in part ``part``."""
        if self.values is not None:
            return self.values[part]
        return self.start + part * self.step


@dataclass(frozen=True)
class StageSpec:
    """One checked stage: a handler and its params, and how the stage gets its tasks.

    The first stage splits the job's inputs: one task per input, or ``parts`` tasks (each
    with every input, ``range`` setting a param per part). A later stage is fed by the stage
    before it (``source``): ``chain`` makes a task of each completed part, ``fan_in`` one
    task of all their outputs, ``fan_out`` one task per output (once the stage before is
    done). Limits left None take the grid's ``[tasks]`` defaults.
    """

    name: str
    index: int
    handler: str
    params: dict[str, Any] = field(default_factory=dict)
    source: str | None = None
    mode: str = StageMode.CHAIN
    parts: int | None = None
    range: PartRange | None = None
    max_attempts: int | None = None
    time_limit: float | None = None
    retry_backoff: float | None = None
    node_class: str = "default"


def stage_dict(stage: StageSpec) -> dict[str, Any]:
    """The stage as a spec tree (JSON values) that :func:`read_stage` reads back."""
    out: dict[str, Any] = {"name": stage.name, "handler": stage.handler, "params": stage.params}
    if stage.source is not None:
        out["from"] = stage.source
        out["mode"] = str(stage.mode)
    if stage.parts is not None:
        out["parts"] = stage.parts
    if stage.range is not None and stage.range.values is not None:
        out["range"] = {"param": stage.range.param, "values": list(stage.range.values)}
    elif stage.range is not None:
        out["range"] = {"param": stage.range.param, "start": stage.range.start}
        out["range"]["step"] = stage.range.step
    for name in ("max_attempts", "time_limit", "retry_backoff"):
        if getattr(stage, name) is not None:
            out[name] = getattr(stage, name)
    out["node_class"] = stage.node_class
    return out


def read_stage(
    source: str, raw: Any, earlier: Sequence[StageSpec], names: Sequence[Any], *, submit: bool
) -> StageSpec:
    """Check the stage after ``earlier``, given every stage's name as written (``names``).

    With ``submit``, the handler name and a built-in's params are checked too.
    """
    index = len(earlier)
    table = v.Table(source, raw, f"stages[{index}]", STAGE_KEYS)
    if "handler" not in table:
        raise table.error("handler", NO_VALUE, "expected a handler name")
    handler = table.text("handler", "", "a handler name")
    name = _name(table, handler)
    for other in earlier:
        if other.name == name:
            expected = f"expected a name no other stage has (stages[{other.index}] has it)"
            raise table.error("name", name, expected)
    params = v.json_table(source, table.get("params", {}), table.path("params"))
    stage = StageSpec(name=name, index=index, handler=handler, params=params)
    if earlier:
        stage = _later_feed(table, stage, earlier[-1].name, names)
    else:
        stage = _first_feed(table, stage)
    stage = _limits(table, stage)
    if submit:
        check_handler(source, stage)
    return stage


def _name(table: v.Table, handler: str) -> str:
    # Unnamed, a stage takes its handler's name (the function's, for module:function).
    default = handler.rpartition(":")[2]
    if "name" not in table and not IDENT.fullmatch(default):
        raise table.error("name", NO_VALUE, "expected a stage name")
    name = table.text("name", default, "a stage name")
    if not IDENT.fullmatch(name):
        raise table.error("name", name, _NAME_RULE)
    if name in RESERVED_STAGES:
        expected = f"expected a name other than {', '.join(RESERVED_STAGES)} (reserved)"
        raise table.error("name", name, expected)
    return name


def _first_feed(table: v.Table, stage: StageSpec) -> StageSpec:
    """The first stage: one task per input, or ``parts`` tasks (with an optional range)."""
    for key in ("from", "mode"):
        if key in table:
            expected = "expected no from or mode in the first stage: it reads the job's inputs"
            raise table.error(key, table.get(key), expected)
    per = table.text("per", "input", '"input"')
    if per != "input":
        raise table.error("per", per, 'expected "input" (or parts = N instead)')
    part_range = _range(table, stage) if "range" in table else None
    if part_range is not None and part_range.values is not None:
        # A list of values sets the parts: one per value.
        count = len(part_range.values)
        if "parts" in table and table.get("parts") != count:
            expected = f"expected {count} (one part per range value) or no parts"
            raise table.error("parts", table.get("parts"), expected)
        if "per" in table:
            raise table.error("range", table.get("range"), 'expected per = "input" or a range')
        return replace(stage, parts=count, range=part_range)
    if "parts" not in table:
        if part_range is not None:
            raise table.error("range", NO_VALUE, "expected parts = N with a range")
        return stage
    if "per" in table:
        raise table.error("parts", table.get("parts"), 'expected per = "input" or parts')
    parts = table.integer("parts", 1, MAX_PARTS)
    return replace(stage, parts=parts, range=part_range)


def _later_feed(table: v.Table, stage: StageSpec, previous: str, names: Sequence[Any]) -> StageSpec:
    """A later stage: fed by the stage before it, in ``chain``, ``fan_in`` or ``fan_out`` mode."""
    for key in ("per", "parts", "range"):
        if key in table:
            expected = f"expected {key} only in the first stage; later stages are fed by mode"
            raise table.error(key, table.get(key), expected)
    fed_by = table.text("from", previous, "the name of the stage before")
    if fed_by != previous:
        raise table.error("from", fed_by, _pipeline_problem(fed_by, stage, names, previous))
    modes = [str(mode) for mode in StageMode]
    mode = table.text("mode", StageMode.CHAIN, v.choices(modes))
    if mode not in modes:
        raise table.error("mode", mode, f"expected {v.choices(modes)}")
    return replace(stage, source=fed_by, mode=StageMode(mode))


def _pipeline_problem(fed_by: str, stage: StageSpec, names: Sequence[Any], previous: str) -> str:
    """Why ``from = fed_by`` breaks the line of stages, and which stage would fit."""
    fix = f"expected {previous!r}: stages form a line, each fed by the one before it"
    if fed_by == stage.name:
        return f"a stage cannot feed itself (a cycle); {fix}"
    if fed_by in names:
        position = names.index(fed_by)
        if position > stage.index:
            return f"stages[{position}] comes later (a cycle or forward reference); {fix}"
        return f"stages[{position}] is not the stage before (a gap); {fix}"
    return f"no stage has this name; {fix}{hint(fed_by, [n for n in names if isinstance(n, str)])}"


def _range(stage_table: v.Table, stage: StageSpec) -> PartRange:
    source, at = stage_table.source, stage_table.path("range")
    table = v.Table(source, stage_table.get("range"), at, _RANGE_KEYS)
    param = table.text("param", "", "the name of a param")
    if not param:
        raise table.error("param", table.get("param", NO_VALUE), "expected the name of a param")
    if param in stage.params:
        expected = f"expected a param the range alone sets (remove params.{param})"
        raise table.error("param", param, expected)
    if "values" not in table:
        return PartRange(param=param, start=table.number("start", 0), step=table.number("step", 1))
    for key in ("start", "step"):
        if key in table:
            raise table.error(key, table.get(key), "expected start and step, or values, not both")
    values = table.get("values")
    if not isinstance(values, list) or not 1 <= len(values) <= MAX_PARTS:
        expected = f"expected a list of 1 to {MAX_PARTS:,} values, one part each"
        raise table.error("values", values, expected)
    checked = v.json_table(source, {"values": values}, table.at)["values"]
    return PartRange(param=param, values=tuple(checked))


def _limits(table: v.Table, stage: StageSpec) -> StageSpec:
    """The stage's own retry and time limits, within the ``[tasks]`` settings' bounds."""
    bounds = {f.name: (f.metadata["min"], f.metadata["max"]) for f in fields(TasksSettings)}
    changes: dict[str, Any] = {}
    if "max_attempts" in table:
        low, high = bounds["max_attempts"]
        changes["max_attempts"] = table.integer("max_attempts", int(low), int(high))
    for key in ("time_limit", "retry_backoff"):
        if key in table:
            low, high = bounds[key]
            seconds = table.number(key)
            # A task's time limit must be positive: 0 ("none") is the grid's default only.
            positive = key == "time_limit"
            if not low <= seconds <= high or (positive and seconds == 0):
                what = "more than 0" if positive else f"from {low:g}"
                raise table.error(key, seconds, f"expected a number of seconds {what} to {high:g}")
            changes[key] = float(seconds)
    node_class = table.text("node_class", "default", "a node class name")
    if not IDENT.fullmatch(node_class):
        raise table.error("node_class", node_class, _NAME_RULE)
    return replace(stage, node_class=node_class, **changes)


def check_handler(source: str, stage: StageSpec) -> None:
    """The handler exists, and a built-in's params are what its tasks will accept."""
    at = f"stages[{stage.index}]"
    try:
        check_handler_name(stage.handler)
    except UnknownHandlerError as e:
        problem = str(e)
        if "expected" not in problem:
            problem += f"; expected one of {', '.join(known_names())} or module:function"
        problem += hint(stage.handler, known_names())
        raise SpecError(source, f"{at}.handler", stage.handler, problem) from None
    samples = [stage.params]
    if stage.range is not None and stage.range.values is not None:
        # Every value of a list: each is its own part's param.
        samples = [{**stage.params, stage.range.param: value} for value in stage.range.values]
    elif stage.range is not None and stage.parts is not None:
        # Both ends of the range: a value past either would fail its part.
        ends = {stage.range.value(0), stage.range.value(stage.parts - 1)}
        samples = [{**stage.params, stage.range.param: end} for end in sorted(ends)]
    for number, params in enumerate(samples):
        try:
            check_params(stage.handler, params)
        except TaskError as e:
            error = _param_error(source, f"{at}.params", params, e)
            if stage.range is not None and stage.range.values is not None:
                error = _at_value(error, f"{at}.params.{stage.range.param}", at, number)
            raise error from None


def _at_value(error: SpecError, param: str, at: str, number: int) -> SpecError:
    """An error in a param a range value set, reported at that value (``range.values[1]``)."""
    if error.field != param and not error.field.startswith(param + "."):
        return error
    field = f"{at}.range.values[{number}]{error.field[len(param) :]}"
    return SpecError(error.source, field, error.value, error.expected)


def _param_error(source: str, at: str, params: dict[str, Any], error: TaskError) -> SpecError:
    """The handler's own refusal, reported against the spec's field for the parameter."""
    if isinstance(error, UnknownParamError):
        expected = f"unknown param: expected {error.expected}{hint(error.name, error.known)}"
        return SpecError(source, f"{at}.{error.name}", params.get(error.name, NO_VALUE), expected)
    if isinstance(error, ParamError):
        return SpecError(source, f"{at}.{error.name}", error.value, f"expected {error.expected}")
    return SpecError(source, at, NO_VALUE, str(error))
