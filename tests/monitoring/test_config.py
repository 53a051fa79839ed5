"""config/prometheus.yml, config/alerts.yml and config/grafana/: checked as their tools would.

``promtool`` (Debian's ``prometheus`` package) checks the scrape config and the rules and
runs the alerts' unit tests in config/alerts_test.yml; the Grafana files are read as Grafana
reads them. Whether every panel's query returns data is tests/monitoring/test_prometheus.py.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.monitoring.prometheus import tool

CONFIG = Path(__file__).parents[2] / "config"
GRAFANA = CONFIG / "grafana"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("promtool"), *args],
        capture_output=True,
        text=True,
        cwd=CONFIG,
        timeout=60,
        check=False,
    )


def test_the_scrape_config_and_its_rules_pass_promtool():
    checked = promtool("check", "config", "prometheus.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "1 rule files found" in checked.stdout + checked.stderr
    rules = promtool("check", "rules", "alerts.yml")
    assert rules.returncode == 0, rules.stdout + rules.stderr


def test_the_alerts_fire_as_their_unit_tests_expect():
    tested = promtool("test", "rules", "alerts_test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_alert_the_issue_asks_for_is_there_and_unit_tested():
    rules = yaml.safe_load((CONFIG / "alerts.yml").read_text())
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    for wanted in (
        "BatchfarmBacklogNotDraining",
        "BatchfarmNodeLost",
        "BatchfarmHighFailureRate",
        "BatchfarmDeadLettersWaiting",
    ):
        assert wanted in alerts
    tests = yaml.safe_load((CONFIG / "alerts_test.yml").read_text())["tests"]
    firing = {
        case["alertname"]
        for test in tests
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert firing == alerts


def test_the_scrape_config_finds_nodes_by_their_auto_scaling_group():
    config = yaml.safe_load((CONFIG / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["batchfarm-manager"]["metrics_path"] == "/metrics"
    (ec2,) = jobs["batchfarm-nodes"]["ec2_sd_configs"]
    filters = {f["name"]: f["values"] for f in ec2["filters"]}
    assert filters["tag:aws:autoscaling:groupName"] == ["batchfarm-nodes"]
    # The port of the nodes' own /metrics, as config/batchfarm.toml's example gives it.
    assert ec2["port"] == 9470
    assert ":9470" in (CONFIG / "batchfarm.toml").read_text()


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in dashboard["panels"]:
        found += [panel, *panel.get("panels", [])]
    return found


def test_grafana_provisions_the_datasource_and_the_dashboard():
    sources = yaml.safe_load((GRAFANA / "provisioning/datasources/batchfarm.yml").read_text())
    (source,) = sources["datasources"]
    assert source["type"] == "prometheus"
    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/batchfarm.yml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"]

    dashboard = json.loads((GRAFANA / "dashboards/batchfarm.json").read_text())
    assert dashboard["uid"] == "batchfarm-grid"
    (variable,) = dashboard["templating"]["list"]
    assert (variable["name"], variable["type"], variable["query"]) == (
        "datasource",
        "datasource",
        "prometheus",
    )
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids))
    titles = {panel["title"] for panel in panels(dashboard)}
    for row in ("Grid overview", "Jobs", "Task durations", "Failures", "Nodes", "Autoscaling"):
        assert row in titles
    for panel in panels(dashboard):
        position = panel["gridPos"]
        assert position["x"] + position["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
    heatmaps = {panel["title"] for panel in panels(dashboard) if panel["type"] == "heatmap"}
    assert "Task duration" in heatmaps
