"""Fixtures every suite may use: the AWS-compatible server the AWS backends are tested on."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.aws import MotoServer, aws_credentials, start_moto


@pytest.fixture(scope="session")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """One ``moto_server`` for the run, with boto3's credential chain pointed at it.

    The credentials go in this process's environment, so the manager and node processes that
    tests start inherit them, as they would an instance role's.
    """
    with aws_credentials():
        server = start_moto(tmp_path_factory.mktemp("moto") / "moto.log")
        try:
            yield server
        finally:
            server.stop()
