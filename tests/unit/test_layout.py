"""Import rules: the wire contract (farm_protocol) is a leaf and holds only the contract;
the shared runtime (farm_runtime) imports only the contract; the services never import
each other; the worker needs neither a database driver nor a web framework."""

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = {"coordinator", "fleet_worker", "webapp"}
SHARED = {"farm_protocol", "farm_runtime"}
OURS = SERVICES | SHARED | {"llama_farm"}
# What the contract is made of; anything else (a loop, a client, a server) is runtime.
CONTRACT_MODULES = {
    "__init__",
    "acl",
    "browser",
    "chat",
    "codec",
    "errors",
    "ids",
    "joining",
    "models",
    "payloads",
    "topics",
    "version",
}


def imports_of(package: str) -> dict[str, set[str]]:
    """Top-level modules imported by each file of ``package``."""
    found: dict[str, set[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


def test_farm_protocol_imports_nothing_of_ours() -> None:
    for path, names in imports_of("farm_protocol").items():
        assert not names & (OURS - {"farm_protocol"}), path


def test_farm_protocol_holds_only_the_contract() -> None:
    modules = {path.stem for path in (ROOT / "farm_protocol").glob("*.py")}
    assert modules <= CONTRACT_MODULES, modules - CONTRACT_MODULES
    for path, names in imports_of("farm_protocol").items():
        assert not names & {"aiomqtt", "paho", "quart", "hypercorn", "asyncio"}, path


def test_farm_runtime_imports_only_the_contract() -> None:
    for path, names in imports_of("farm_runtime").items():
        assert not names & (OURS - SHARED), f"{path} imports {names & (OURS - SHARED)}"


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_services_never_import_each_other(service: str) -> None:
    forbidden = OURS - {service} - SHARED
    for path, names in imports_of(service).items():
        assert not names & forbidden, f"{path} imports {names & forbidden}"


def test_the_worker_needs_no_database_or_web_framework() -> None:
    for path, names in imports_of("fleet_worker").items():
        assert not names & {"peewee", "quart", "hypercorn", "amqtt"}, path
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    worker_deps = project["dependencies"] + project["optional-dependencies"]["worker"]
    assert not [d for d in worker_deps if d.startswith(("peewee", "quart", "hypercorn"))]
