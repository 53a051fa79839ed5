"""Node class settings: ``[classes.NAME]`` tables, ``[node] node_class``, and one answer to
"the settings of class X" for the default class and the tables alike.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from batchfarm.actors.backends.fleet.local import settings_environment
from batchfarm.actors.errors import ConfigError
from batchfarm.actors.manager.autoscaler import open_autoscaled_fleets
from batchfarm.actors.settings import (
    NodeClassSettings,
    load,
    node_class_names,
    node_class_settings,
)
from batchfarm.actors.settings.model import NodeClasses
from tests.settings.test_cli_config import batchfarm

GRID = """\
[node]
node_class = "heavy"

[autoscale]
provider = "local"
max_nodes = 3
price_per_hour = 0.1

[classes.heavy]
provider = "aws"
group = "batchfarm-heavy"
min_nodes = 1
max_nodes = 8
workers_per_node = 16
price_per_hour = 1.53

[classes.gpu]
"""


def test_class_tables_load_and_each_class_has_one_settings_answer(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text(GRID)
    loaded = load(path, environ={})
    settings = loaded.settings
    assert settings.node.node_class == "heavy"
    assert node_class_names(settings) == ["default", "gpu", "heavy"]
    assert node_class_settings(settings, "heavy") == NodeClassSettings(
        provider="aws",
        group="batchfarm-heavy",
        min_nodes=1,
        max_nodes=8,
        workers_per_node=16,
        price_per_hour=1.53,
    )
    assert node_class_settings(settings, "gpu") == NodeClassSettings()  # every key defaults
    # The default class is [autoscale]'s fleet, limits and price.
    assert node_class_settings(settings, "default") == NodeClassSettings(
        provider="local", max_nodes=3, price_per_hour=0.1
    )
    with pytest.raises(KeyError):
        node_class_settings(settings, "tiny")
    assert loaded.sources["classes.heavy"] == str(path)
    # Local nodes get the manager's settings as variables: the tables survive the trip.
    assert load(None, environ=settings_environment(settings)).settings == settings


def test_the_environment_replaces_the_files_tables(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text(GRID.replace('node_class = "heavy"', ""))
    env = {"BATCHFARM_CLASSES": "{cpu = {max_nodes = 2}}", "BATCHFARM_NODE_NODE_CLASS": "cpu"}
    loaded = load(path, environ=env)
    assert dict(loaded.settings.classes) == {"cpu": {"max_nodes": 2}}
    assert loaded.sources["classes.cpu"] == "BATCHFARM_CLASSES"
    assert loaded.settings.node.node_class == "cpu"


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        (
            "[classes.default]\nmax_nodes = 2\n",
            {},
            "[classes.default]: expected another name: [autoscale] describes the default class",
        ),
        (
            "[classes.gpu]\nmax_node = 2\n",
            {},
            "[classes.gpu] max_node = 2: unknown key; did you mean 'max_nodes'?",
        ),
        (
            '[classes.gpu]\nprovider = "gcp"\n',
            {},
            '[classes.gpu] provider = "gcp": expected "" or "aws" or "local"',
        ),
        ("[classes]\ngpu = 3\n", {}, "[classes.gpu] = 3: expected a table"),
        (
            "[classes.a_very_long_class_name_of_33_chars]\n",
            {},
            "[classes.a_very_long_class_name_of_33_chars]: expected a name of 1 to 32 letters",
        ),
        (
            '[node]\nnode_class = "gpu"\n',
            {},
            '[node] node_class = "gpu": expected a node class of this config: "default"',
        ),
        (
            "[classes.highmem]\n",
            {"BATCHFARM_QUEUE_URL": f"sqs://{'p' * 60}"},
            "[classes.highmem]: expected a name short enough for its SQS queue",
        ),
        ("", {"BATCHFARM_CLASSES_GPU": "{}"}, "expected BATCHFARM_CLASSES (an inline table"),
    ],
)
def test_bad_class_settings_name_the_table_and_what_was_expected(tmp_path, text, env, message):
    path = tmp_path / "grid.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as refused:
        load(path, environ=env)
    assert message in str(refused.value)


def test_config_show_prints_each_class_table_with_its_source(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text(GRID)
    shown = batchfarm("--config", str(path), "config", "show")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    tables = lines[lines.index("[classes]") + 1 :]
    assert [line.split("#")[0].rstrip() for line in tables] == [
        'heavy = {provider = "aws", group = "batchfarm-heavy", min_nodes = 1, max_nodes = 8,'
        " workers_per_node = 16, price_per_hour = 1.53}",
        "gpu = {}",
    ]
    assert all(line.endswith(f"# {path}") for line in tables)
    as_json = json.loads(batchfarm("--config", str(path), "config", "show", "--json").stdout)
    assert as_json["classes"]["gpu"] == {"value": {}, "source": str(path)}
    assert as_json["node"]["node_class"] == {"value": "heavy", "source": str(path)}


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (
            {"provider": "local", "min_nodes": 3, "max_nodes": 2},
            "[classes.gpu] min_nodes = 3: expected at most max_nodes (2)",
        ),
        ({"provider": "aws"}, '[classes.gpu] group = "": expected the Auto Scaling group'),
    ],
)
def test_a_class_fleet_the_autoscaler_cannot_run_stops_the_manager_naming_it(table, message):
    settings = load(None, environ={"BATCHFARM_AUTOSCALE_PROVIDER": "local"}).settings
    settings = dataclasses.replace(settings, classes=NodeClasses({"gpu": table}))
    with pytest.raises(ConfigError) as refused:
        open_autoscaled_fleets(settings)
    assert message in str(refused.value)
    off = dataclasses.replace(settings, classes=NodeClasses({"gpu": {}}))
    fleets = open_autoscaled_fleets(off)
    try:
        assert list(fleets) == ["default"]  # a class without a provider is not scaled
    finally:
        for fleet in fleets.values():
            fleet.close()
