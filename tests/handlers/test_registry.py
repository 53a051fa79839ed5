"""Handler lookup: built-ins, entry points from real package metadata, module:function."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from batchfarm.actors.errors import UnknownHandlerError
from batchfarm.actors.handlers import (
    BUILTINS,
    ENTRY_POINT_GROUP,
    check_handler_name,
    known_names,
    resolve,
)
from batchfarm.actors.handlers.builtin import checksum, noop
from batchfarm.actors.handlers.probe import probe
from batchfarm.actors.handlers.thumbnail import thumbnail
from batchfarm.actors.handlers.transcode import transcode
from tests.handlers import user_handlers

SHOUT = "tests.handlers.user_handlers:shout"


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A real installed distribution (a dist-info folder on sys.path) with handler entry points."""
    site = tmp_path / "site"
    info = site / "batchfarm_test_plugin-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: batchfarm-test-plugin\nVersion: 1.0\n"
    )
    (info / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\n"
        f"shout = {SHOUT}\n"
        "noop = tests.handlers.user_handlers:shout\n"
        "missing-module = tests.handlers.no_such_module:run\n"
        "not-callable = tests.handlers.user_handlers:NOT_CALLABLE\n"
        "\n[other.group]\n"
        "elsewhere = tests.handlers.user_handlers:shout\n"
    )
    monkeypatch.syspath_prepend(str(site))
    return site


def test_builtins_are_an_explicit_dict():
    mine = {
        "noop": noop,
        "checksum": checksum,
        "transcode": transcode,
        "probe": probe,
        "thumbnail": thumbnail,
    }
    # The segment-parallel and ladder handlers are built in too (tests/handlers/test_ladder.py).
    assert {name: BUILTINS[name] for name in mine} == mine
    for name, handler in BUILTINS.items():
        assert resolve(name) is handler
        check_handler_name(name)


def test_module_function_resolves_and_is_cached(make_ctx):
    handler = resolve(SHOUT)
    assert handler is user_handlers.shout
    assert resolve(SHOUT) is handler
    harness = make_ctx(SHOUT, params={"text": "hi"})
    assert handler(harness.ctx) == {"length": 2}
    assert (harness.ctx.output_dir / "shout.txt").read_text() == "HI"


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("tests.handlers.no_such_module:run", "failed to import: ModuleNotFoundError"),
        ("tests.handlers.broken_handlers:run", "failed to import: RuntimeError: broken on purpose"),
        ("tests.handlers.user_handlers:absent", "has no absent"),
        ("tests.handlers.user_handlers:NOT_CALLABLE", "int object is not callable"),
        ("os:system", "standard library"),
        ("subprocess:run", "standard library"),
        ("tests.handlers.user_handlers:_private", "expected module:function"),
        ("tests handlers:shout", "expected module:function"),
        ("tests.handlers.user_handlers:", "expected module:function"),
        (":shout", "expected module:function"),
        ("a:b:c", "expected module:function"),
    ],
)
def test_bad_module_function_names_say_why(name, why):
    with pytest.raises(UnknownHandlerError) as caught:
        resolve(name)
    assert why in str(caught.value)
    assert repr(name) in str(caught.value)
    assert caught.value.permanent is True


def test_unknown_names_list_the_known_ones():
    with pytest.raises(UnknownHandlerError) as caught:
        resolve("resize")
    message = str(caught.value)
    assert message.startswith("unknown handler 'resize': expected one of checksum, ")
    listed = (
        message.split("expected one of ", 1)[1].split(", an entry point", maxsplit=1)[0].split(", ")
    )
    assert listed == sorted(listed)
    assert {"checksum", "noop", "probe", "thumbnail", "transcode"} <= set(listed)
    assert ENTRY_POINT_GROUP in message
    assert caught.value.permanent is True


def test_entry_points_are_found_through_package_metadata(plugin, make_ctx):
    assert resolve("shout") is user_handlers.shout
    assert "shout" in known_names()
    # A group it does not belong to does not count.
    with pytest.raises(UnknownHandlerError, match="unknown handler 'elsewhere'") as caught:
        resolve("elsewhere")
    assert "shout" in str(caught.value)


def test_a_builtin_name_cannot_be_taken_by_an_entry_point(plugin):
    assert resolve("noop") is noop


def test_broken_entry_points_say_why(plugin):
    with pytest.raises(UnknownHandlerError, match="failed to load: ModuleNotFoundError"):
        resolve("missing-module")
    with pytest.raises(UnknownHandlerError, match="int object is not callable"):
        resolve("not-callable")


def test_failures_are_not_cached(plugin):
    with pytest.raises(UnknownHandlerError):
        resolve("later")
    (plugin / "batchfarm_test_plugin-1.0.dist-info" / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\nlater = {SHOUT}\n"
    )
    assert resolve("later") is user_handlers.shout


def test_check_handler_name_imports_no_user_code(plugin):
    check_handler_name("shout")
    # Well formed: accepted without importing it (the manager need not have the code).
    check_handler_name("acme_media.handlers:resize")
    assert "acme_media" not in sys.modules
    check_handler_name("tests.handlers.broken_handlers:run")
    assert "tests.handlers.broken_handlers" not in sys.modules


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("resize", "unknown handler 'resize'"),
        ("", "expected a non-empty name"),
        ("os:system", "standard library"),
        ("bad name:x", "expected module:function"),
        ("mod:_hidden", "expected module:function"),
    ],
)
def test_check_handler_name_refuses(name, why):
    with pytest.raises(UnknownHandlerError, match=why):
        check_handler_name(name)
