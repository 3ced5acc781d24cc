"""The wheel is the whole service: built from the checkout without leaving scratch folders there, and installed
apart from the checkout, its `hpo` migrates a fresh database from any folder.

The install is a virtual environment that holds only the wheel and reaches the project's dependencies through a
``.pth`` file naming this interpreter's site-packages. Python searches no further ``.pth`` files in a folder a
``.pth`` file adds, so the editable install's import hook in that site-packages stays out, and with it the checkout.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text

from hpo_service.store.models import Base

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("hpo_service", "trainer")
MIGRATIONS = REPO / "migrations"  # installed as hpo_service/migrations


@dataclass(frozen=True)
class Build:
    wheel: Path
    scratch_before: dict[str, int]
    scratch_after: dict[str, int]


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``command`` in ``cwd`` with no PYTHONPATH and no database from the environment; fail with its output."""
    hidden = {"PYTHONPATH", "PYTHONHOME", "PYTHONSAFEPATH", "HPO_DATABASE_URL"}
    env = {key: value for key, value in os.environ.items() if key not in hidden}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{' '.join(command)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
    return result


def scratch_files() -> dict[str, int]:
    """setuptools' scratch folders in the checkout (``build/``, ``*.egg-info``), file by file, with their mtimes."""
    tops = [path for path in REPO.iterdir() if path.name == "build" or path.name.endswith(".egg-info")]
    return {str(path.relative_to(REPO)): path.stat().st_mtime_ns for top in tops for path in (top, *top.rglob("*"))}


def files_under(folder: Path) -> set[str]:
    """The files of a source folder, as paths relative to it, without Python's bytecode caches."""
    return {
        path.relative_to(folder).as_posix()
        for path in folder.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    """The wheel, built from the checkout as `pip install .` builds it (without build isolation, so offline)."""
    dist = tmp_path_factory.mktemp("dist")
    before = scratch_files()
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"]
    run([*pip_wheel, "--wheel-dir", str(dist), str(REPO)], cwd=dist)
    (wheel,) = dist.glob("completedp_hpo-*.whl")
    return Build(wheel, before, scratch_files())


@pytest.fixture(scope="module")
def venv(build: Build, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment holding the wheel, with the project's dependencies from this interpreter's."""
    venv = tmp_path_factory.mktemp("venv")
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=venv)
    python = str(venv / "bin" / "python")
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=venv).stdout.strip())
    dependencies = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
    (site / "dependencies.pth").write_text("".join(f"{folder}\n" for folder in dependencies))
    run([python, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", str(build.wheel)], cwd=venv)
    return venv


def test_building_the_wheel_leaves_no_scratch_folders_in_the_checkout(build: Build):
    assert build.scratch_after == build.scratch_before


def test_the_wheel_ships_every_file_of_the_packages_and_the_migrations_and_nothing_else(build: Build):
    with zipfile.ZipFile(build.wheel) as wheel:
        shipped = set(wheel.namelist())
    expected = {f"{package}/{name}" for package in PACKAGES for name in files_under(REPO / package)}
    expected |= {f"hpo_service/migrations/{name}" for name in files_under(MIGRATIONS)}
    assert sorted(expected - shipped) == []
    assert {name.split("/")[0] for name in shipped if ".dist-info/" not in name} == set(PACKAGES)


def test_the_installed_package_and_its_migrations_come_from_the_install_not_the_checkout(venv: Path, tmp_path: Path):
    probe = "import hpo_service, hpo_service.store.database as db; print(hpo_service.__file__, db.migrations_folder())"
    package, migrations = map(Path, run([str(venv / "bin" / "python"), "-c", probe], cwd=tmp_path).stdout.split())
    for path in (package, migrations):
        assert path.is_relative_to(venv) and not path.is_relative_to(REPO)
    assert (migrations / "env.py").is_file()


def test_the_installed_hpo_migrates_a_fresh_database_from_another_folder(venv: Path, tmp_path: Path):
    result = run([str(venv / "bin" / "hpo"), "db", "upgrade", "--db", "fresh.db"], cwd=tmp_path)
    assert "is at the latest schema" in result.stdout
    engine = create_engine(f"sqlite:///{tmp_path / 'fresh.db'}")
    with engine.connect() as connection:
        tables = set(inspect(connection).get_table_names())
        version = connection.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
    engine.dispose()
    assert tables == set(Base.metadata.tables) | {"alembic_version"}
    assert version == ScriptDirectory(str(MIGRATIONS)).get_current_head()
