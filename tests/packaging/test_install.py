"""A new user's install: batchfarm and supervisord's ``supervisor`` live side by side."""

from __future__ import annotations

import os
import subprocess
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run(*argv: str | Path, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run(
        [str(a) for a in argv],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, f"{argv} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def source_copy(dest: Path) -> Path:
    """The project's files as a fresh clone has them (pip builds in the tree it is given)."""
    listed = run("git", "ls-files", "--cached", "--others", "--exclude-standard", cwd=REPO)
    for name in listed.splitlines():
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            (dest / name).write_bytes(src.read_bytes())
    return dest


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_batchfarm_and_supervisord_install_into_one_venv(tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    project = source_copy(tmp_path / "src")
    run(python, "-m", "pip", "install", "-q", str(project), "supervisor", cwd=tmp_path)
    # Run from elsewhere than the source tree: there, `python -c` would put the folder named
    # supervisor/ (ours) first on sys.path, which is a checkout's quirk, not the install's.

    # Both import roots resolve to their own distributions.
    out = run(
        python,
        "-c",
        "import supervisor, supervisor.supervisord, batchfarm.actors, batchfarm.supervisor;"
        "print(supervisor.__file__); print(batchfarm.supervisor.__file__)",
        cwd=tmp_path,
    )
    supervisord_file, ours = out.splitlines()
    assert "site-packages/supervisor/" in supervisord_file
    assert "site-packages/batchfarm/supervisor/" in ours

    # Every module of ours is in the wheel and imports (nothing left out of setup.cfg). Alembic's
    # migration scripts are listed but not imported: they run only inside Alembic's context.
    listed = run(
        python,
        "-c",
        "import pkgutil, importlib, batchfarm.actors, batchfarm.supervisor\n"
        "for pkg in (batchfarm.actors, batchfarm.supervisor):\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        if m.name.endswith('__main__'):\n"
        "            continue\n"
        "        if '.migrations.' not in m.name or m.ispkg:\n"
        "            importlib.import_module(m.name)\n"
        "        print(m.name)\n",
        cwd=tmp_path,
    ).split()
    sources = {
        p.relative_to(REPO).with_suffix("").as_posix().replace("/", ".")
        for top in ("actors", "supervisor")
        for p in (REPO / top).rglob("*.py")
        if p.name not in ("__init__.py", "__main__.py")
    }
    installed = {name.removeprefix("batchfarm.") for name in listed}
    assert sources <= installed
    # Package data: the PEP 561 markers, Alembic's revision template and the web page.
    where = "import batchfarm.actors as a; print(a.__path__[0])"
    actors_dir = Path(run(python, "-c", where, cwd=tmp_path).strip())
    for data in ("py.typed", "backends/store/migrations/script.py.mako", "api/static/index.html"):
        assert (actors_dir / data).is_file(), data

    # The one console script works, with the shipped config.
    bf = env_dir / "bin" / "batchfarm"
    assert "batchfarm, version" in run(bf, "--version", cwd=tmp_path)
    checked = run(bf, "config", "check", REPO / "config" / "batchfarm.toml", cwd=tmp_path)
    assert checked.strip().endswith(": ok")


def test_setup_cfg_lists_every_package():
    """A package folder missing from setup.cfg would silently vanish from the wheel."""
    text = (REPO / "setup.cfg").read_text()
    for top in ("actors", "supervisor"):
        for init in (REPO / top).rglob("__init__.py"):
            dotted = "batchfarm." + init.parent.relative_to(REPO).as_posix().replace("/", ".")
            assert f"    {dotted}\n" in text, f"{dotted} is not in setup.cfg's packages"
