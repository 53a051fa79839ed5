"""Job specs: TOML and JSON read alike, defaults, inputs found, and every refusal named."""

from __future__ import annotations

import os
import pickle
import tomllib
from datetime import UTC, datetime

import pytest

from batchfarm.actors.errors import SpecError
from batchfarm.actors.handlers.registry import BUILTINS, PARAM_CHECKS
from batchfarm.actors.manager.spec import JobSpec, load_spec, parse_spec, spec_from_flags
from batchfarm.actors.manager.stages import PartRange
from tests.manager.specs import (
    EXAMPLE,
    check_error,
    make_files,
    one_stage,
    refused,
    write_json,
    write_toml,
)


def test_toml_and_json_are_the_same_tree(tmp_path):
    make_files(tmp_path, "clips/b.mov", "clips/a.mov", "raw/intro.mp4", "clips/skip.txt")
    from_toml = load_spec(write_toml(tmp_path, EXAMPLE))
    from_json = load_spec(write_json(tmp_path, tomllib.loads(EXAMPLE)))
    assert from_toml == from_json
    assert from_toml.source.endswith("job.toml")
    assert [f.name for f in from_toml.files] == ["clips/a.mov", "clips/b.mov", "raw/intro.mp4"]
    assert [f.path for f in from_toml.files][2] == tmp_path / "raw/intro.mp4"
    transcode, thumbs = from_toml.stages
    assert (transcode.name, transcode.handler, transcode.params) == (
        "transcode",
        "transcode",
        {"height": 720, "preset": "veryfast"},
    )
    assert (transcode.max_attempts, transcode.time_limit, transcode.retry_backoff) == (3, 1800, 5)
    assert (thumbs.source, thumbs.mode, thumbs.index) == ("transcode", "fan_in", 1)
    assert from_toml.priority == "high"
    assert from_toml.after_s == 7200
    assert from_toml.next_stage("transcode") == thumbs
    assert from_toml.next_stage("thumbs") is None


def test_defaults_stage_names_and_feeds(tmp_path):
    make_files(tmp_path, "a.bin")
    spec = load_spec(
        write_toml(
            tmp_path,
            'inputs.files = ["a.bin"]\n'
            '[[stages]]\nhandler = "checksum"\n'
            '[[stages]]\nhandler = "tests.handlers.user_handlers:shout"\n',
        )
    )
    first, second = spec.stages
    assert (first.name, first.source, first.parts, first.max_attempts) == (
        "checksum",
        None,
        None,
        None,
    )
    assert (second.name, second.source, second.mode) == ("shout", "checksum", "chain")
    assert (spec.name, spec.priority, spec.start_at, spec.after_s) == ("", "normal", None, None)


def test_parts_with_a_range_need_no_inputs(tmp_path):
    spec = load_spec(
        write_toml(
            tmp_path, one_stage(stage='range = { param = "sleep_s", start = 0.5, step = 0.25 }')
        )
    )
    stage = spec.stages[0]
    assert stage.parts == 2
    assert stage.range == PartRange("sleep_s", 0.5, 0.25)
    assert [stage.range.value(p) for p in range(2)] == [0.5, 0.75]
    assert spec.input_count == 0


@pytest.mark.parametrize(
    ("value", "seconds"), [('"90s"', 90), ('"15m"', 900), ('"1d12h"', 129_600), ("30", 30)]
)
def test_after_takes_durations(tmp_path, value, seconds):
    spec = load_spec(write_toml(tmp_path, one_stage(f"after = {value}")))
    assert spec.after_s == seconds
    assert spec.start_time(1000.0) == 1000.0 + seconds


def test_start_at_as_toml_datetime_or_text(tmp_path):
    want = datetime(2026, 12, 3, 20, 0, tzinfo=UTC).timestamp()
    toml = load_spec(write_toml(tmp_path, one_stage("start_at = 2026-12-03T21:00:00+01:00")))
    assert toml.start_at == want
    text = parse_spec(
        {"start_at": "2026-12-03T20:00:00Z", "stages": [{"handler": "noop", "parts": 1}]},
        source="t",
        base_dir=tmp_path,
    )
    assert text.start_at == want
    assert text.start_time(0.0) == want


def test_stored_spec_reads_back_without_local_files(tmp_path):
    make_files(tmp_path, "clips/a.mov", "raw/intro.mp4")
    spec = load_spec(write_toml(tmp_path, EXAMPLE))
    keys = ["jobs/j/input/clips/a.mov", "jobs/j/input/raw/intro.mp4"]
    stored = spec.to_stored(keys, 1_800_000_000.0)
    again = JobSpec.from_stored(stored)
    assert again.stages == spec.stages
    assert again.keys == tuple(keys)
    assert again.files == ()
    assert again.start_at == 1_800_000_000.0
    assert (again.name, again.priority) == (spec.name, spec.priority)
    assert pickle.loads(pickle.dumps(spec)) == spec


def test_every_builtin_has_a_params_check():
    assert set(PARAM_CHECKS) == set(BUILTINS)


# ---------------------------------------------------------------------------------------
# Refusals: each names the file, the field's path, the value and what was expected

REFUSALS = [
    # (spec text, field, fragments of the message)
    (one_stage('nmae = "x"'), "nmae", "unknown key", "did you mean 'name'"),
    (one_stage('priority = "urgent"'), "priority", '"urgent"', '"normal", "high"'),
    (one_stage("name = 5"), "name", "expected text"),
    (one_stage('after = "2h"\nstart_at = 2026-12-03T20:00:00Z'), "after", "not both"),
    (one_stage("start_at = 2026-12-03T20:00:00"), "start_at", "with its zone"),
    (one_stage('start_at = "tomorrow"'), "start_at", "with its zone"),
    (one_stage('after = "2 weeks"'), "after", "a duration"),
    (one_stage("after = -5"), "after", "a duration"),
    ('name = "x"\n', "stages", "one or more stages"),
    ("stages = []\n", "stages", "one or more stages"),
    ("[[stages]]\nparts = 1\n", "stages[0].handler", "a handler name"),
    (one_stage(handler="transcod"), "stages[0].handler", "unknown handler", "did you mean"),
    (one_stage(handler="os:system"), "stages[0].handler", "standard library"),
    (one_stage(stage="hander = 1"), "stages[0].hander", "did you mean 'handler'"),
    (
        one_stage(handler="transcode", stage="params = { height = 721 }"),
        "stages[0].params.height",
        "721",
        "an even integer from 16 to 4320",
    ),
    (
        one_stage(handler="transcode", stage="params = { heigth = 720 }"),
        "stages[0].params.heigth",
        "unknown param",
        "did you mean 'height'",
    ),
    (
        one_stage(handler="checksum", stage='params = { manifest = "../x" }'),
        "stages[0].params.manifest",
        "a plain file name",
    ),
    (one_stage(stage="params = { when = 2026-01-01 }"), "stages[0].params.when", "dates as text"),
    (one_stage(stage="params = { sleep_s = nan }"), "stages[0].params.sleep_s", "finite"),
    (one_stage(stage='params = "x"'), "stages[0].params", "a table of params"),
    (one_stage(stage='name = "bad name"'), "stages[0].name", "letters, digits"),
    (one_stage(stage='name = "input"'), "stages[0].name", "reserved"),
    (
        one_stage(handler="tests.handlers.user_handlers:shout.x"),
        "stages[0].handler",
        "module:function",
    ),
    (
        one_stage() + '[[stages]]\nhandler = "noop"\n',
        "stages[1].name",
        "no other stage has",
        "stages[0]",
    ),
    (
        one_stage() + '[[stages]]\nhandler = "noop"\nname = "b"\nfrom = "b"\n',
        "stages[1].from",
        "cycle",
        "expected 'noop'",
    ),
    (
        one_stage()
        + '[[stages]]\nhandler = "noop"\nname = "b"\nfrom = "c"\n'
        + '[[stages]]\nhandler = "noop"\nname = "c"\n',
        "stages[1].from",
        "stages[2] comes later",
        "expected 'noop'",
    ),
    (
        one_stage()
        + '[[stages]]\nhandler = "noop"\nname = "b"\n'
        + '[[stages]]\nhandler = "noop"\nname = "c"\nfrom = "noop"\n',
        "stages[2].from",
        "a gap",
        "expected 'b'",
    ),
    (
        one_stage() + '[[stages]]\nhandler = "noop"\nname = "b"\nfrom = "nop"\n',
        "stages[1].from",
        "no stage has this name",
        "did you mean 'noop'",
    ),
    (
        one_stage() + '[[stages]]\nhandler = "noop"\nname = "b"\nmode = "fan-in"\n',
        "stages[1].mode",
        '"chain", "fan_in"',
    ),
    (
        one_stage() + '[[stages]]\nhandler = "noop"\nname = "b"\nparts = 3\n',
        "stages[1].parts",
        "only in the first stage",
    ),
    (one_stage(stage='from = "x"'), "stages[0].from", "first stage"),
    (one_stage(stage='mode = "chain"'), "stages[0].mode", "first stage"),
    ('[[stages]]\nhandler = "noop"\nper = "file"\n', "stages[0].per", '"input"'),
    ('[[stages]]\nhandler = "noop"\nparts = 0\n', "stages[0].parts", "from 1 to 100000"),
    ('[[stages]]\nhandler = "noop"\nparts = 2\nper = "input"\n', "stages[0].parts", "or parts"),
    (
        '[[stages]]\nhandler = "noop"\nrange = { param = "sleep_s" }\n',
        "stages[0].range",
        "parts = N",
    ),
    (
        one_stage(stage='params = { sleep_s = 1 }\nrange = { param = "sleep_s" }'),
        "stages[0].range.param",
        "remove params.sleep_s",
    ),
    (one_stage(stage='range = { parm = "x" }'), "stages[0].range.parm", "did you mean 'param'"),
    (
        one_stage(stage='range = { param = "sleep_s", start = 0, step = 100000 }'),
        "stages[0].params.sleep_s",
        "100000",
        "a number from 0 to 86400",
    ),
    (one_stage(stage="max_attempts = 0"), "stages[0].max_attempts", "from 1 to 1000"),
    (one_stage(stage="max_attempts = 1001"), "stages[0].max_attempts", "from 1 to 1000"),
    (one_stage(stage="max_attempts = true"), "stages[0].max_attempts", "an integer"),
    (one_stage(stage="time_limit = 0"), "stages[0].time_limit", "more than 0 to 43200"),
    (one_stage(stage="retry_backoff = -1"), "stages[0].retry_backoff", "from 0 to 43200"),
    (one_stage(stage='node_class = "big box"'), "stages[0].node_class", "letters, digits"),
    (one_stage("inputs = 3"), "inputs", "a table"),
    (one_stage('[inputs]\nfile = ["a"]'), "inputs.file", "did you mean 'files'"),
    (one_stage('[inputs]\nfiles = "a.mov"'), "inputs.files", "a list of strings"),
    (one_stage('[inputs]\nfiles = [""]'), "inputs.files[0]", "a non-empty string"),
    (one_stage('[inputs]\nfiles = ["missing.mov"]'), "inputs.files[0]", "an existing file"),
    (one_stage('[inputs]\nfiles = ["none/*.mov"]'), "inputs.files[0]", "at least one file"),
    (one_stage('[inputs]\nkeys = ["a//b"]'), "inputs.keys[0]", "no empty segment"),
    (one_stage('[inputs]\nkeys = ["a/b", "a/b"]'), "inputs.keys[1]", "each key once"),
    ('[[stages]]\nhandler = "noop"\n', "inputs", "at least one input"),
]


@pytest.mark.parametrize(("text", "field", "fragments"), [(t, f, fr) for t, f, *fr in REFUSALS])
def test_refusals_name_file_field_and_expected(tmp_path, text, field, fragments):
    refused(write_toml(tmp_path, text), field, *fragments)


def test_refused_in_json_too(tmp_path):
    tree = {"stages": [{"handler": "transcode", "params": {"height": 721}}]}
    refused(write_json(tmp_path, tree), "stages[0].params.height", "even integer")
    refused(
        write_json(tmp_path, {"stages": [{"handler": "noop", "parts": 1.5}]}), "stages[0].parts"
    )


def test_an_empty_folder_and_colliding_names_are_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    refused(write_toml(tmp_path, 'inputs.files = ["empty"]\n' + one_stage()), "inputs.files[0]")
    make_files(tmp_path, "x\\y.mov", "x_y.mov")
    error = refused(
        write_toml(tmp_path, 'inputs.files = ["x_y.mov", "x\\\\y.mov"]\n' + one_stage()),
        "inputs.files[1]",
        "distinct names",
    )
    assert "input/x_y.mov" in str(error)


@pytest.mark.parametrize(
    ("name", "content", "field", "fragment"),
    [
        ("job.yaml", "", "file", "a .toml or .json"),
        ("job.toml", "[[stages]\n", "syntax", "valid TOML"),
        ("job.json", '{"stages": [', "syntax", "valid JSON"),
        ("job.json", '{"name": "a", "name": "b"}', "syntax", "repeats"),
        ("job.json", '{"stages": [{"handler": "noop", "parts": NaN}]}', "syntax", "NaN"),
        ("job.json", "[1]", "spec", "a table"),
    ],
)
def test_bad_files(tmp_path, name, content, field, fragment):
    path = tmp_path / name
    path.write_text(content)
    refused(path, field, fragment)


def test_missing_file(tmp_path):
    refused(tmp_path / "nope.toml", "file", "an existing file")


# ---------------------------------------------------------------------------------------
# Inputs: globs, folders, relative and outside paths


def test_folders_recurse_and_hidden_files_stay_out(tmp_path):
    make_files(tmp_path, "in/b/2.mov", "in/a.mov", "in/.DS_Store", "in/.git/x", "in/b/1.mov")
    spec = load_spec(write_toml(tmp_path, 'inputs.files = ["in", "in/a.mov"]\n' + one_stage()))
    assert [f.name for f in spec.files] == ["in/a.mov", "in/b/1.mov", "in/b/2.mov"]
    assert [f.size for f in spec.files] == [3, 3, 3]


def test_recursive_globs_and_paths_relative_to_the_spec(tmp_path):
    make_files(tmp_path, "media/x/one.mov", "media/two.mov", "media/x/three.mp4")
    spec_dir = tmp_path / "specs"
    spec_dir.mkdir()
    (spec_dir / "sub").mkdir()
    make_files(spec_dir, "sub/local.mov")
    text = 'inputs.files = ["../media/**/*.mov", "sub/*.mov", "./sub/../sub/local.mov"]\n'
    spec = load_spec(write_toml(spec_dir, text + one_stage()))
    # Outside the spec's folder: named from the glob's folder; inside: from the spec's.
    assert [f.name for f in spec.files] == ["two.mov", "x/one.mov", "sub/local.mov"]


def test_absolute_paths_outside_the_spec_folder(tmp_path):
    other = tmp_path / "elsewhere"
    make_files(other, "clip.mov", "deep/a.mov")
    spec_dir = tmp_path / "specs"
    spec_dir.mkdir()
    text = f'inputs.files = ["{other / "clip.mov"}", "{other / "deep"}", "{other}/*/*.mov"]\n'
    spec = load_spec(write_toml(spec_dir, text + one_stage()))
    assert [f.name for f in spec.files] == ["clip.mov", "deep/a.mov"]


def test_unreadable_files_are_refused(tmp_path):
    if os.geteuid() == 0:
        # root reads every file: check the message with a file that is not a regular file.
        os.mkfifo(tmp_path / "fifo.mov")
        text = 'inputs.files = ["fifo.mov"]\n' + one_stage()
        refused(write_toml(tmp_path, text), "inputs.files[0]", "a regular file")
        return
    (path,) = make_files(tmp_path, "locked.mov")
    path.chmod(0)
    text = 'inputs.files = ["locked.mov"]\n' + one_stage()
    refused(write_toml(tmp_path, text), "inputs.files[0]", "a readable file")


# ---------------------------------------------------------------------------------------
# One-stage jobs from command-line flags


def test_flags_make_the_same_spec_as_a_file(tmp_path):
    make_files(tmp_path, "clips/a.mov", "clips/b.mov")
    from_file = load_spec(
        write_toml(
            tmp_path,
            'name = "quick"\npriority = "high"\nafter = "15m"\n'
            'inputs.files = ["clips/*.mov"]\ninputs.keys = ["uploads/c.mov"]\n'
            '[[stages]]\nhandler = "transcode"\nmax_attempts = 2\ntime_limit = 60\n'
            'params = { height = 480, preset = "fast", name = "x.mp4" }\n',
        )
    )
    from_flags = spec_from_flags(
        "transcode",
        ["clips/*.mov"],
        params=["height=480", "preset=fast", 'name="x.mp4"'],
        keys=["uploads/c.mov"],
        name="quick",
        priority="high",
        after="15m",
        max_attempts=2,
        time_limit=60,
        base_dir=tmp_path,
    )
    assert from_flags == from_file
    assert from_flags.source == "command line"


@pytest.mark.parametrize(
    ("kwargs", "field", "fragment"),
    [
        ({"handler": "transcod"}, "--handler", "did you mean"),
        ({"params": ["height=721"]}, "--param height", "even integer"),
        ({"params": ["heigth=720"]}, "--param heigth", "did you mean 'height'"),
        ({"params": ["height"]}, "--param", "key=value"),
        ({"inputs": ["nope/*.mov"]}, "INPUTS", "at least one file"),
        ({"inputs": []}, "INPUTS", "at least one input"),
        ({"keys": ["/abs"]}, "--key", "no leading '/'"),
        ({"at": "soon"}, "--at", "with its zone"),
        ({"after": "later"}, "--after", "a duration"),
        ({"priority": "low"}, "--priority", '"normal"'),
        ({"parts": 0, "inputs": []}, "--parts", "from 1"),
        ({"max_attempts": 0}, "--max-attempts", "from 1"),
    ],
)
def test_flag_errors_name_the_flag(tmp_path, kwargs, field, fragment):
    make_files(tmp_path, "a.mov")
    args = {"handler": "transcode", "inputs": ["a.mov"], "base_dir": tmp_path, **kwargs}
    handler = args.pop("handler")
    with pytest.raises(SpecError) as caught:
        spec_from_flags(handler, **args)
    check_error(caught.value, "command line", field, fragment)
