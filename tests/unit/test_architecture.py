"""The layering of README "Architecture": the import-linter contract in pyproject.toml is kept, names every module,
and really catches an import that goes upwards."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("streams", "agents", "models", "infra")


def _layers() -> list[list[str]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]
    (contract,) = [c for c in config["contracts"] if c["type"] == "layers"]
    return [[name.strip() for name in layer.split(":")] for layer in contract["layers"]]


def _modules() -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found.append(".".join(parts))
    return found


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(*PACKAGES, cache_dir=None)


def test_the_layers_contract_is_kept() -> None:
    # What CI's `lint-imports` runs, in a process of its own (import-linter reconfigures logging when it runs).
    script = ("import sys; from importlinter.cli import lint_imports; "
              f"sys.exit(lint_imports(config_filename={str(ROOT / 'pyproject.toml')!r}, no_cache=True, no_logo=True))")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_module_is_named_in_exactly_one_layer() -> None:
    # A module no layer names would escape the contract: say where each new module belongs.
    layers = _layers()
    for module in _modules():
        if module == "streams":
            continue  # the package itself, an empty __init__: its modules are named one by one
        owners = [i for i, layer in enumerate(layers)
                  if any(module == name or module.startswith(name + ".") for name in layer)]
        assert len(owners) == 1, f"{module} is named in layers {owners} of pyproject.toml's contract"


def test_there_is_no_import_circle(graph: grimp.ImportGraph) -> None:
    # Within a layer modules may import each other, but never in a circle (function-level imports included).
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            assert not graph.chain_exists(imported, module), \
                f"circle: {module} -> {imported} -> ... -> {module}"


def test_an_upward_import_breaks_the_contract(graph: grimp.ImportGraph) -> None:
    layers = [grimp.Layer(*layer, independent=False) for layer in _layers()]
    assert graph.find_illegal_dependencies_for_layers(layers) == set()
    graph.add_import(importer="models.clusters", imported="agents.serving")  # the domain reaching into an agent
    broken = graph.find_illegal_dependencies_for_layers(layers)
    assert {(d.importer, d.imported) for d in broken} == {("models", "agents")}


def test_agent_functions_stay_short() -> None:
    # An agent is wiring around small steps (README "Architecture"): a long function there hides logic that a unit
    # test without a broker should be able to reach.
    import ast

    long = []
    for path in sorted((ROOT / "agents").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
                long.append(f"{path.name}:{node.lineno} {node.name}")
    assert long == []
