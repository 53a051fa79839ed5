"""Who may call the API, and how its errors look: tokens, the loopback rule, limits, routes."""

from __future__ import annotations

import pytest

from batchfarm.actors.api.auth import check_exposure
from batchfarm.actors.api.server import ApiServer
from batchfarm.actors.errors import ConfigError
from batchfarm.actors.settings import ApiSettings
from tests.api.apigrid import API, noop_spec, start_api, with_token


@pytest.fixture
def guarded(tmp_path):
    started = start_api(tmp_path / "state", token="s3cret-admin", read_token="s3cret-read")
    yield started
    started.close()


def test_without_a_token_a_loopback_api_answers_anyone_on_this_machine(grid):
    health = grid.client.get(f"{API}/health")
    assert health.status_code == 200
    body = health.json()
    assert (body["status"], body["grid"]) == ("ok", "batchfarm")
    assert body["version"]


def test_with_a_token_every_request_needs_it(guarded):
    missing = guarded.client.get(f"{API}/health")
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert missing.json()["status"] == 401
    assert "Authorization: Bearer" in missing.json()["error"]
    assert guarded.client.get("/metrics").status_code == 401

    with with_token(guarded, "wrong") as wrong:
        response = wrong.get(f"{API}/jobs")
        assert response.status_code == 401
        assert "s3cret" not in response.text
    with with_token(guarded, "s3cret-admin") as admin:
        assert admin.get(f"{API}/jobs").status_code == 200
        assert admin.post(f"{API}/jobs", json={"spec": noop_spec()}).status_code == 201


def test_the_read_token_reads_and_may_not_write(guarded):
    with with_token(guarded, "s3cret-read") as reader:
        assert reader.get(f"{API}/jobs").status_code == 200
        assert reader.get("/metrics").status_code == 200
        refused = reader.post(f"{API}/jobs", json={"spec": noop_spec()})
        assert refused.status_code == 403
        assert "read token" in refused.json()["error"]
        assert reader.post(f"{API}/jobs/any/cancel").status_code == 403
    assert guarded.store.jobs() == []


def test_a_body_over_the_cap_is_refused_whether_its_length_is_declared_or_not(tmp_path):
    grid = start_api(tmp_path / "state", max_request_bytes=1024)
    try:
        big = {"spec": noop_spec(), "id": "x" * 2000}
        declared = grid.client.post(f"{API}/jobs", json=big)
        assert declared.status_code == 413
        assert "1024" in declared.json()["error"]

        def chunks():
            yield b'{"spec": {"stages": [{"handler": "noop", "params": {"pad": "'
            yield b"p" * 2000
            yield b'"}}]}}'

        chunked = grid.client.post(f"{API}/jobs", content=chunks())
        assert chunked.status_code == 413
        assert grid.store.jobs() == []
    finally:
        grid.close()


def test_unknown_routes_and_wrong_methods_answer_json(grid):
    unknown = grid.client.get(f"{API}/nope")
    assert unknown.status_code == 404
    assert unknown.json() == {
        "error": f"no route GET {API}/nope: see /openapi.json for the API's routes",
        "status": 404,
    }
    wrong = grid.client.delete(f"{API}/jobs")
    assert wrong.status_code == 405
    assert "DELETE" in wrong.json()["error"]
    assert "GET" in wrong.json()["error"]


def test_an_api_beyond_loopback_needs_a_token():
    with pytest.raises(ConfigError, match=r"\[api\] token") as refused:
        check_exposure(ApiSettings(listen="http://0.0.0.0:8470"))
    assert "BATCHFARM_API_TOKEN" in str(refused.value)
    check_exposure(ApiSettings(listen="http://0.0.0.0:8470", token="t"))
    check_exposure(ApiSettings(listen="http://localhost:8470"))
    check_exposure(ApiSettings(listen="http://[::1]:8470"))


def test_a_taken_port_is_refused_naming_the_setting(grid):
    second = ApiServer(grid.server.app, "127.0.0.1", grid.server.port)
    with pytest.raises(ConfigError, match=r"\[api\] listen") as refused:
        second.start()
    assert str(grid.server.port) in str(refused.value)
    assert grid.client.get(f"{API}/health").status_code == 200  # the first one serves on
