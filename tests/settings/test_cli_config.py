"""``batchfarm config show`` and ``batchfarm config check``, as an operator runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.settings.test_load import AWS_FILE, DEFAULT_FILE, every_key


def batchfarm(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # The caller's environment minus any BATCHFARM_ settings, which would change the answers.
    base = {k: v for k, v in os.environ.items() if not k.startswith("BATCHFARM_")}
    return subprocess.run(
        [sys.executable, "-m", "batchfarm.actors.cli", *args],
        capture_output=True,
        text=True,
        env=base | (env or {}),
        timeout=60,
        check=False,
    )


def test_show_prints_every_key_with_its_source(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text("[queue]\nwait = 3\n")
    run = batchfarm("--config", str(path), "config", "show", env={"BATCHFARM_NODE_WORKERS": "2"})
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert any(line.startswith("wait = 3.0") and line.endswith(f"# {path}") for line in lines)
    assert any(
        line.startswith("workers = 2") and line.endswith("# BATCHFARM_NODE_WORKERS")
        for line in lines
    )
    assert any(line.startswith("pin = true") and line.endswith("# default") for line in lines)


def test_show_json_and_batchfarm_config_variable(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text('[grid]\nname = "farm-7"\n')
    run = batchfarm("config", "show", "--json", env={"BATCHFARM_CONFIG": str(path)})
    assert run.returncode == 0, run.stderr
    shown = json.loads(run.stdout)
    assert {f"{s}.{k}" for s, keys in shown.items() for k in keys} == every_key()
    assert shown["grid"]["name"] == {"value": "farm-7", "source": str(path)}
    assert shown["node"]["pin"] == {"value": True, "source": "default"}


def test_check_accepts_the_shipped_files():
    for path in (DEFAULT_FILE, AWS_FILE):
        run = batchfarm("config", "check", str(path))
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip() == f"{path}: ok"


def test_check_names_the_problem_and_exits_1(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[node]\nworkres = 2\n")
    run = batchfarm("config", "check", str(path))
    assert run.returncode == 1
    assert run.stderr.strip() == (
        f"batchfarm: {path}: [node] workres = 2: unknown key; did you mean 'workers'?"
    )


def test_a_bad_environment_stops_any_verb_that_needs_settings():
    run = batchfarm("config", "show", env={"BATCHFARM_STORE_URL": "nonsense"})
    assert run.returncode == 1
    assert run.stderr.startswith('batchfarm: environment: BATCHFARM_STORE_URL = "nonsense"')


def test_usage_errors_exit_2():
    assert batchfarm("config", "nope").returncode == 2


def test_show_masks_a_password_in_the_store_url():
    url = "postgresql+psycopg://batchfarm:s3cret-Pa55@db.example:5432/grid"
    run = batchfarm("config", "show", "--json", env={"BATCHFARM_STORE_URL": url})
    assert run.returncode == 0, run.stderr
    assert "s3cret-Pa55" not in run.stdout
    shown = json.loads(run.stdout)
    store_url = shown["store"]["url"]
    store_url = store_url["value"] if isinstance(store_url, dict) else store_url
    assert store_url == "postgresql+psycopg://batchfarm:***@db.example:5432/grid"
    plain = batchfarm("config", "show", env={"BATCHFARM_STORE_URL": url})
    assert "s3cret-Pa55" not in plain.stdout
    assert "batchfarm:***@db.example" in plain.stdout
