"""hostcp_core is a pure library: it imports neither the web, queue nor database layer."""

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import hostcp_core

FORBIDDEN = {"fastapi", "celery", "sqlalchemy", "app", "worker", "starlette", "alembic"}


def test_no_forbidden_import_statements():
    root = Path(hostcp_core.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert not offenders


def test_importing_every_module_loads_none_of_them():
    modules = [m.name for m in pkgutil.walk_packages(hostcp_core.__path__, "hostcp_core.")]
    assert "hostcp_core.hostcp" in modules and "hostcp_core.selection" in modules
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {sorted(FORBIDDEN)!r})\n"
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
