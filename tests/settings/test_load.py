"""Settings: defaults, the shipped files, environment overrides, and one clear line per error."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from batchfarm.actors.errors import ConfigError
from batchfarm.actors.settings import Settings, load

REPO = Path(__file__).resolve().parents[2]
DEFAULT_FILE = REPO / "config" / "batchfarm.toml"
AWS_FILE = REPO / "config" / "aws.example.toml"


def every_key() -> set[str]:
    return {
        f"{section.name}.{f.name}"
        for section in dataclasses.fields(Settings)
        if not section.metadata.get("table")  # [classes.NAME] tables: none by default
        for f in dataclasses.fields(section.default_factory())  # type: ignore[misc]
    }


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "grid.toml"
    path.write_text(text)
    return path


def test_no_file_needed_every_field_has_a_default():
    loaded = load(None, environ={})
    assert loaded.path is None
    assert set(loaded.sources) == every_key()
    assert set(loaded.sources.values()) == {"default"}
    state = Path("~/.local/state/batchfarm").expanduser()
    assert loaded.settings.queue.url == f"local://{state}/queue.db"
    assert loaded.settings.store.url == f"sqlite:///{state}/grid.db"
    assert loaded.settings.node.workers == "auto"


def test_settings_are_frozen():
    settings = load(None, environ={}).settings
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.queue.max_receives = 9  # type: ignore[misc]


def test_the_default_file_has_every_key_and_equals_the_defaults():
    with DEFAULT_FILE.open("rb") as f:
        data = tomllib.load(f)
    assert {f"{s}.{k}" for s, table in data.items() for k in table} == every_key()
    assert load(DEFAULT_FILE, environ={}).settings == load(None, environ={}).settings


def test_every_key_is_commented_in_the_default_file():
    lines = DEFAULT_FILE.read_text().splitlines()
    for i, line in enumerate(lines):
        if "=" in line and not line.startswith("#"):
            assert lines[i - 1].startswith("#"), f"no comment above {line!r}"


def test_the_aws_example_loads():
    settings = load(AWS_FILE, environ={}).settings
    assert settings.queue.url.startswith("sqs://")
    assert settings.storage.url.startswith("s3://")
    assert settings.store.url.startswith("postgresql+psycopg://")


def test_environment_overrides_the_file_and_sources_say_so(tmp_path):
    path = write(tmp_path, "[node]\nworkers = 4\npin = false\n[queue]\nwait = 2\n")
    loaded = load(path, environ={"BATCHFARM_NODE_WORKERS": "2", "BATCHFARM_STORE_BATCH_SIZE": "50"})
    assert loaded.settings.node.workers == 2
    assert loaded.settings.node.pin is False
    assert loaded.settings.queue.wait == 2.0
    assert isinstance(loaded.settings.queue.wait, float)
    assert loaded.settings.store.batch_size == 50
    assert loaded.sources["node.workers"] == "BATCHFARM_NODE_WORKERS"
    assert loaded.sources["node.pin"] == str(path)
    assert loaded.sources["queue.url"] == "default"


def test_state_dir_is_substituted_in_urls(tmp_path):
    path = write(tmp_path, f'[grid]\nstate_dir = "{tmp_path}/state"\n')
    settings = load(path, environ={}).settings
    assert settings.queue.url == f"local://{tmp_path}/state/queue.db"
    assert settings.storage.url == f"file://{tmp_path}/state/blobs"
    assert settings.store.url == f"sqlite:///{tmp_path}/state/grid.db"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("auto", "auto"), ("3", 3), (" 7 ", 7)],
)
def test_environment_values_take_the_field_type(raw, expected):
    assert load(None, environ={"BATCHFARM_NODE_WORKERS": raw}).settings.node.workers == expected


@pytest.mark.parametrize(("raw", "expected"), [("true", True), ("0", False), ("No", False)])
def test_environment_booleans(raw, expected):
    assert load(None, environ={"BATCHFARM_NODE_PIN": raw}).settings.node.pin is expected


def test_unrelated_environment_variables_are_ignored():
    settings = load(None, environ={"BATCHFARM_CONFIG": "x", "BATCHFARM_SOMETHING_ELSE": "1"})
    assert settings.settings == load(None, environ={}).settings


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "[queue]\nvisibilty_timeout = 30\n",
            "[queue] visibilty_timeout = 30: unknown key; did you mean 'visibility_timeout'?",
        ),
        ("[nodes]\nworkers = 2\n", "[nodes]: unknown section; did you mean 'node'?"),
        ('[node]\nworkers = "many"\n', '[node] workers = "many": expected "auto" or an integer'),
        (
            "[node]\nworkers = 0\n",
            '[node] workers = 0: expected "auto" or an integer of at least 1',
        ),
        ("[node]\npin = 1\n", "[node] pin = 1: expected true or false"),
        ("[node]\nprefetch = true\n", "[node] prefetch = true: expected an integer from 0 to 9"),
        ("[node]\nprefetch = 2.5\n", "[node] prefetch = 2.5: expected an integer from 0 to 9"),
        ("[queue]\nvisibility_timeout = 0\n", "expected a number from 1 to 43200"),
        ("[queue]\nwait = 21\n", "[queue] wait = 21: expected a number from 0 to 20"),
        ("[queue]\nwait = nan\n", "[queue] wait = nan: expected a number from 0 to 20"),
        ('[queue]\nmax_receives = "5"\n', '[queue] max_receives = "5": expected an integer'),
        ("[grid]\nname = 5\n", "[grid] name = 5: expected a string"),
        ("queue = 5\n", "queue = 5: expected a [section] table"),
        ('[queue]\nurl = "redis://x"\n', "expected a URL of the form local:///absolute/path"),
        ('[queue]\nurl = "local://relative/q.db"\n', "(three slashes, absolute path)"),
        ('[queue]\nurl = "sqs://bad name"\n', "sqs://queue-name-prefix"),
        ('[queue]\nurl = "local:///q.db?x=1"\n', "without ?query or #fragment"),
        ('[storage]\nurl = "s3://Bad_Bucket/x"\n', "with a valid bucket name"),
        ('[storage]\nurl = "file:///"\n', "file:///absolute/path"),
        ('[storage]\nurl = "file:///{home}/x"\n', "only {state_dir} may be substituted"),
        ('[store]\nurl = "nonsense"\n', "expected a SQLAlchemy URL"),
        ('[store]\nurl = "oracle+nope://h/db"\n', "no SQLAlchemy dialect 'oracle+nope'"),
        ('[store]\nurl = "sqlite:///relative.db"\n', "four slashes: an absolute path"),
        ("[queue\nurl = 1\n", "syntax: expected valid TOML"),
    ],
)
def test_bad_files_stop_with_one_line_naming_file_key_value_and_expectation(
    tmp_path, text, message
):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load(path, environ={})
    line = str(info.value)
    assert "\n" not in line
    assert line.startswith(f"{path}: ")
    assert message in line


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.toml: file: no such file"):
        load(tmp_path / "nope.toml", environ={})


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {"BATCHFARM_QUEUE_WAITT": "3"},
            'environment: BATCHFARM_QUEUE_WAITT = "3": unknown setting; '
            "did you mean 'BATCHFARM_QUEUE_WAIT'?",
        ),
        ({"BATCHFARM_NODE_PIN": "maybe"}, 'BATCHFARM_NODE_PIN = "maybe": expected true or false'),
        ({"BATCHFARM_NODE_WORKERS": "lots"}, 'BATCHFARM_NODE_WORKERS = "lots": expected "auto"'),
        ({"BATCHFARM_QUEUE_WAIT": "99"}, "BATCHFARM_QUEUE_WAIT = 99.0: expected a number from 0"),
        ({"BATCHFARM_QUEUE_URL": "local://x"}, "(three slashes, absolute path)"),
    ],
)
def test_bad_environment_values_are_named(environ, message):
    with pytest.raises(ConfigError) as info:
        load(None, environ=environ)
    assert message in str(info.value)
    assert str(info.value).startswith("environment: ")


@pytest.mark.parametrize(
    "endpoint", ["tcp://manager", "tcp://manager:0", "tcp://:5555", "ipc:///tmp/x", "tcp://h:99999"]
)
def test_a_bad_manager_endpoint_is_refused(tmp_path, endpoint):
    path = write(tmp_path, f'[node]\nmanager = "{endpoint}"\n')
    with pytest.raises(
        ConfigError,
        match=r"\[node\] manager = .*expected a (ZeroMQ endpoint|URL) of the form tcp://host:port",
    ):
        load(path, environ={})


def test_a_manager_endpoint_by_name_or_address_loads(tmp_path):
    environ = {"BATCHFARM_NODE_MANAGER": "tcp://10.0.0.10:5555"}
    assert load(None, environ=environ).settings.node.manager == "tcp://10.0.0.10:5555"
    path = write(tmp_path, '[node]\nmanager = "tcp://manager.internal:6000"\n')
    assert load(path, environ={}).settings.node.manager == "tcp://manager.internal:6000"
