"""config/aws.example.toml: it loads, it covers the AWS grid, and it holds no credential."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

from sqlalchemy.engine import make_url

from batchfarm.actors.settings import load
from batchfarm.actors.settings.model import Settings

AWS_FILE = Path(__file__).resolve().parents[2] / "config" / "aws.example.toml"
#: Sections a grid on AWS sets (the rest keep their defaults).
AWS_SECTIONS = {"grid", "queue", "storage", "store", "node", "media", "api", "autoscale"}
# AWS access key ids (long-term AKIA, temporary ASIA) and the names credentials go by.
ACCESS_KEY = re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b")
CREDENTIAL_NAMES = re.compile(
    r"aws_secret_access_key|aws_session_token|secret_key|access_key_id", re.IGNORECASE
)


def file_values() -> dict[str, dict[str, object]]:
    with AWS_FILE.open("rb") as f:
        return tomllib.load(f)


def test_the_example_loads_with_the_settings_loader_and_sets_up_an_aws_grid():
    settings = load(AWS_FILE, environ={}).settings
    assert settings.queue.url.startswith("sqs://")
    assert settings.storage.url.startswith("s3://")
    store = make_url(settings.store.url)
    assert store.get_backend_name() == "postgresql"
    assert store.host.endswith(".rds.amazonaws.com")
    # RDS the way AWS advises: TLS checked against its CA bundle, IAM database auth.
    assert settings.store.ssl_mode == "verify-full"
    assert settings.store.ssl_ca.endswith(".pem")
    assert settings.store.iam_auth is True
    assert settings.autoscale.provider == "aws"
    assert settings.autoscale.group == settings.node.autoscaling_group
    assert settings.node.metadata_url == "http://169.254.169.254"


def test_the_example_sets_every_section_an_aws_grid_uses():
    sections = set(file_values())
    assert sections >= AWS_SECTIONS
    assert sections <= {f.name for f in dataclasses.fields(Settings)}


def test_the_example_names_no_credentials():
    text = AWS_FILE.read_text()
    assert not ACCESS_KEY.search(text)
    values = file_values()
    for section, table in values.items():
        for key, value in table.items():
            assert not CREDENTIAL_NAMES.search(key), f"[{section}] {key}"
            if isinstance(value, str) and "://" in value:
                # No user:password@ in any URL (the store's password comes from the env).
                assert not re.search(r"://[^/@]*:[^/@]*@", value), f"[{section}] {key}"
    # The secret settings (API tokens) are left to the environment.
    secret = {
        (section.name, field.name)
        for section in dataclasses.fields(Settings)
        if not section.metadata.get("table")  # [classes.NAME] tables hold no secret
        for field in dataclasses.fields(section.default_factory())  # type: ignore[misc]
        if field.metadata.get("secret")
    }
    assert secret
    for section, key in secret:
        assert key not in values.get(section, {}), f"[{section}] {key} belongs in the env"
    assert make_url(load(AWS_FILE, environ={}).settings.store.url).password is None
