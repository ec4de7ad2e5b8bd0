"""The wheel: what ``pip install`` gives a user. Built offline from a copy of the source tree
(the build writes into the tree it builds), with this environment's setuptools and wheel."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from powerstrip_dev.processes import ServiceError, start_service

ROOT = Path(__file__).resolve().parents[2]
#: Not the source of any package, and big or volatile: left out of the copy that is built.
NOT_COPIED = (".git", ".venv", ".run", ".hypothesis", ".ruff_cache", ".pytest_cache",
              "__pycache__", "*.egg-info", "build", "dist")

pytestmark = pytest.mark.timeout(60)


def pip(*args: str, cwd: Path) -> None:
    """Run this environment's pip offline, ignoring any user configuration."""
    result = subprocess.run(
        [sys.executable, "-m", "pip", "--isolated", "--disable-pip-version-check", *args],
        capture_output=True, text=True, timeout=50, cwd=cwd,
    )
    assert result.returncode == 0, f"pip {' '.join(args)}\n{result.stdout}\n{result.stderr}"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """The copied source tree and the wheel built from it."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_COPIED))
    pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
        "-w", str(work / "dist"), str(source), cwd=work)
    (wheel,) = (work / "dist").glob("powerstrip-*.whl")
    yield source, wheel


@pytest.fixture(scope="module")
def names(built: tuple[Path, Path]) -> set[str]:
    """The files in the wheel."""
    with zipfile.ZipFile(built[1]) as archive:
        return set(archive.namelist())


def test_the_wheel_holds_the_example_adapters_and_their_rules(names: set[str]) -> None:
    for name in ("__init__", "debug", "volumes", "network", "policy"):
        assert f"powerstrip_adapters/{name}.py" in names
    assert "powerstrip_adapters/policy.yml" in names


def test_the_wheel_holds_every_module_of_the_packages(built: tuple[Path, Path],
                                                     names: set[str]) -> None:
    """setup.cfg lists the packages one by one: a new subpackage left off would be missing."""
    source = built[0]
    for package in ("powerstrip", "powerstrip_dev"):
        for path in (source / package).rglob("*.py"):
            assert path.relative_to(source).as_posix() in names


def test_the_wheel_holds_no_tests_and_no_repository_top_level(names: set[str]) -> None:
    assert not [name for name in names if name.startswith(("tests/", "adapters/", "bench/"))]
    tops = {name.split("/", 1)[0] for name in names}
    assert tops == {"powerstrip", "powerstrip_dev", "powerstrip_adapters",
                    "powerstrip-0.1.0.dist-info"}


def test_the_wheel_declares_the_commands(names: set[str], built: tuple[Path, Path]) -> None:
    with zipfile.ZipFile(built[1]) as archive:
        entry_points = archive.read("powerstrip-0.1.0.dist-info/entry_points.txt").decode()
    assert "powerstrip-adapter = powerstrip.kit.sdk:main" in entry_points
    assert "[powerstrip.commands]" in entry_points


@pytest.fixture(scope="module")
def installed(built: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel installed into a directory of its own (its dependencies are this
    environment's)."""
    target = tmp_path_factory.mktemp("installed")
    pip("install", "--no-deps", "--no-index", "-q", "--target", str(target), str(built[1]),
        cwd=target)
    return target


def installed_env(target: Path) -> dict[str, str]:
    """PYTHONPATH for ``python -S``: the installed wheel, then this environment's packages for
    the dependencies; -S keeps out the editable install of the checkout."""
    site = sysconfig.get_paths()["purelib"]
    return {"PYTHONPATH": f"{target}:{site}"}


def test_the_installed_examples_import_from_the_install(installed: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-S", "-c",
         "import powerstrip, powerstrip_adapters.policy as p\n"
         "print(powerstrip.__file__)\nprint(p.__file__)\nprint(p.EXAMPLE_RULES.is_file())"],
        capture_output=True, text=True, timeout=30, cwd=installed, env=installed_env(installed),
    )
    assert result.returncode == 0, result.stderr
    package, policy, rules = result.stdout.split()
    assert package.startswith(str(installed)) and policy.startswith(str(installed))
    assert rules == "True"


def test_the_installed_powerstrip_adapter_runs_an_example_by_its_bare_name(
    installed: Path, tmp_path: Path,
) -> None:
    """The console script's entry, as the installed metadata declares it, serving
    ``powerstrip-adapter policy --listen 127.0.0.1:0`` with the packaged example rules."""
    script = (
        "import sys\n"
        "from importlib.metadata import entry_points\n"
        "(main,) = [e for e in entry_points(group='console_scripts')\n"
        "           if e.name == 'powerstrip-adapter'][:1]\n"
        "sys.argv[0] = 'powerstrip-adapter'\n"
        "main.load()()\n"
    )
    try:
        service = start_service(
            "policy", [sys.executable, "-S", "-c", script, "policy", "--listen", "127.0.0.1:0"],
            tmp_path, timeout=30, cwd=tmp_path, env=installed_env(installed),
        )
    except ServiceError as exc:
        pytest.fail(str(exc))
    try:
        assert service.url.startswith("http://127.0.0.1:")
    finally:
        assert service.stop() == 0, service.log()
