"""The package boundaries the layout promises: the serving core and its stores know nothing of
HTTP frameworks, and `index/` nothing of `models/`. Checked on every module's import statements
(also those inside functions) and by importing the packages in a fresh interpreter."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from tests.helpers import REPO

# server-side frameworks; an HTTP client (httpx, the router calling its shards) is allowed
HTTP_FRAMEWORKS = {"fastapi", "starlette", "uvicorn"}


def imported_roots(package: str) -> dict[str, set[str]]:
    """module path -> top-level names of everything it imports, at any depth of the file."""
    found: dict[str, set[str]] = {}
    for path in sorted((REPO / package).rglob("*.py")):
        roots: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                roots.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                roots.add(node.module.split(".")[0])
        found[str(path.relative_to(REPO))] = roots
    return found


@pytest.mark.parametrize("package", ["service/core", "service/store"])
def test_the_serving_core_and_stores_import_no_http_framework(package: str) -> None:
    modules = imported_roots(package)
    assert len(modules) >= 5  # the package is really there
    offenders = {path: roots & HTTP_FRAMEWORKS for path, roots in modules.items()}
    assert not {path: names for path, names in offenders.items() if names}
    # ...nor through what they import: a fresh interpreter imports every module of the package
    code = (
        "import importlib, pkgutil, sys\n"
        f"pkg = importlib.import_module({package.replace('/', '.')!r})\n"
        "for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "    importlib.import_module(m.name)\n"
        "print(sorted({n.split('.')[0] for n in sys.modules} & set(sys.argv[1:])))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, *HTTP_FRAMEWORKS],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "[]", out.stdout


def test_the_index_package_does_not_import_models() -> None:
    modules = imported_roots("index")
    assert "index/publish.py" in modules
    assert not {path for path, roots in modules.items() if "models" in roots or "service" in roots}
