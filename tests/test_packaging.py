"""The installable package carries what the processes read at run time besides code: the
migrations' config, the dashboard's files, the email templates and the default on-call policy
(the image installs the wheel and drops the sources)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc")


def test_the_wheel_carries_the_files_processes_read(tmp_path: Path) -> None:
    # Built from a copy: setuptools writes build/ and *.egg-info next to the sources.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "worker.py"):
        shutil.copy(ROOT / name, source / name)
    for package in {name.split(".")[0] for name in PACKAGES}:
        shutil.copytree(ROOT / package, source / package, ignore=IGNORED)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(source)],
        check=True,
        timeout=120,
    )
    (wheel,) = tmp_path.glob("switchboard-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in (
        "core/alerting.yaml",
        "migrations/alembic.ini",
        "api/static/dashboard.js",
        "api/templates/dashboard.html",
    ):
        assert needed in names, f"{needed} is missing from the wheel"
    assert any(name.startswith("activities/templates/") for name in names)
    assert not any(name.startswith(("tests/", "benchmarks/")) for name in names)
