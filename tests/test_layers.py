"""The import contracts in pyproject.toml ([tool.importlinter]) hold, the import graph of the
three packages has no cycle, and the contracts do catch a broken layer."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("hostcp_core", "app", "worker")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT_IMPORTS), "--config", str(cwd / "pyproject.toml")], cwd=cwd,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(cwd)},
                          capture_output=True, text=True, timeout=120)


def _layers() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = [c for c in config["contracts"] if c["type"] == "layers"]
    return contract["layers"]


def test_contracts_kept():
    proc = _lint(ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


def test_every_service_module_is_in_a_layer():
    # import-linter's layers need containers to be exhaustive; this is that check
    named = {m.strip() for layer in _layers() for m in layer.split("|")}
    children = {f"app.{p.stem if p.is_file() else p.name}" for p in (ROOT / "app").iterdir()
                if (p.suffix == ".py" and p.stem != "__init__")
                or (p.is_dir() and (p / "__init__.py").exists())}
    assert children <= named, f"modules in no layer: {sorted(children - named)}"


def test_no_import_cycles():
    graph = grimp.build_graph(*PACKAGES)
    modules = set(graph.modules)
    adj = {m: [x for x in graph.find_modules_directly_imported_by(m) if x in modules]
           for m in modules}
    # iterative DFS colouring: a grey module met again closes a cycle
    colour = dict.fromkeys(modules, 0)
    for start in sorted(modules):
        if colour[start]:
            continue
        stack = [(start, iter(adj[start]))]
        colour[start] = 1
        path = [start]
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                colour[node] = 2
                stack.pop()
                path.pop()
            elif colour[nxt] == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(nxt):]
                                                                    + [nxt]))
            elif colour[nxt] == 0:
                colour[nxt] = 1
                stack.append((nxt, iter(adj[nxt])))
                path.append(nxt)


def test_api_never_imports_worker():
    graph = grimp.build_graph(*PACKAGES)
    assert graph.find_shortest_chain(importer="app.api", imported="worker",
                                     as_packages=True) is None


def test_a_broken_layer_is_caught(tmp_path):
    for name in PACKAGES:
        shutil.copytree(ROOT / name, tmp_path / name,
                        ignore=shutil.ignore_patterns("__pycache__", "static", "sample_data"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    schemas = tmp_path / "app" / "api" / "schemas.py"
    schemas.write_text(schemas.read_text() + "\nfrom worker.runner import RunnerWakeup  # noqa\n")
    proc = _lint(tmp_path)
    assert proc.returncode != 0
    assert "app.api.schemas -> worker.runner" in proc.stdout
