"""The page is served by the manager: public, static, under a strict Content-Security-Policy."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from batchfarm.actors.api import page
from tests.api.apigrid import start_api

TOKEN = "serving-test-token"
STATIC = Path(page.__file__).with_name("static")


@pytest.fixture
def grid(tmp_path):
    started = start_api(tmp_path / "state", token=TOKEN)
    yield started
    started.close()


def anonymous(grid) -> httpx.Client:
    return httpx.Client(base_url=grid.server.url, timeout=10)


def test_the_page_needs_no_token_and_the_api_still_does(grid):
    with anonymous(grid) as client:
        home = client.get("/")
        assert home.status_code == 307
        assert home.headers["location"] == "/ui/"
        shown = client.get("/ui/")
        assert shown.status_code == 200
        assert shown.headers["content-type"].startswith("text/html")
        assert "<title>batchfarm</title>" in shown.text
        assert client.head("/ui/app.js").status_code == 200

        refused = client.get("/api/v1/jobs")
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"] == "Bearer"
        # Only reads of the page are public; a path that climbs out of /ui/ reaches nothing.
        assert client.post("/ui/app.js").status_code == 401
        climbed = client.get("/ui/%2e%2e/api/v1/jobs")
        assert climbed.status_code == 404
        assert "jobs" not in climbed.json()
        assert client.get("/ui/missing.js").status_code == 404


def test_every_file_of_the_page_carries_the_content_security_policy(grid):
    index = (STATIC / "index.html").read_text()
    linked = re.findall(r'(?:src|href)="([^"#]+)"', index)
    assert {"app.js", "style.css", "icon.svg"} <= set(linked)
    with anonymous(grid) as client:
        for name in ["", *sorted(p.name for p in STATIC.iterdir())]:
            got = client.get(f"/ui/{name}")
            assert got.status_code == 200, name
            policy = got.headers["content-security-policy"]
            assert "script-src 'self'" in policy, name
            assert "default-src 'none'" in policy, name
            assert got.headers["x-content-type-options"] == "nosniff", name
        # Module scripts run only when served as JavaScript.
        for script in (p.name for p in STATIC.glob("*.js")):
            kind = client.get(f"/ui/{script}").headers["content-type"]
            assert kind.startswith("text/javascript"), script


def test_the_page_has_no_inline_code_and_never_parses_data_as_html():
    index = (STATIC / "index.html").read_text()
    # The policy allows no inline script or style: each script is a file, no style attributes.
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", index, re.S)
    assert scripts
    assert all("src=" in attrs and not body.strip() for attrs, body in scripts), scripts
    assert " style=" not in index
    assert not re.search(r"\son[a-z]+=", index)
    for script in STATIC.glob("*.js"):
        code = script.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in code, f"{script.name} uses {sink}"
