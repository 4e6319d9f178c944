"""The two products in one repository stay apart: the service runs without the model
toolchain, and the toolchain (training, evaluation, export) runs without Flask."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap

from supersizeme.service.config import REPO_ROOT

PACKAGE = REPO_ROOT / "supersizeme"


def run_without(blocked: str, code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter in which importing ``blocked`` (a package and
    everything under it) fails, as if it were not installed."""
    guard = textwrap.dedent(
        f"""
        import importlib.abc, sys

        class Absent(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == {blocked!r} or name.startswith({blocked!r} + "."):
                    raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
                return None

        sys.meta_path.insert(0, Absent())
        """
    )
    return subprocess.run(
        [sys.executable, "-c", guard + textwrap.dedent(code)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_the_service_imports_and_builds_its_app_without_the_toolchain(tiny_model_dir):
    result = run_without(
        "supersizeme.toolchain",
        f"""
        import pkgutil, importlib
        import supersizeme.service
        for module in pkgutil.iter_modules(supersizeme.service.__path__):
            importlib.import_module("supersizeme.service." + module.name)
        from supersizeme.service.app import create_app
        app = create_app({{"TESTING": True, "MODEL_DIR": {str(tiny_model_dir)!r}, "TILE": 64,
                          "PHOTO_MODEL_DIR": None}})
        assert app.test_client().get("/readyz").status_code == 200
        print("served")
        """,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "served" in result.stdout


def test_the_training_entry_point_runs_without_flask():
    result = run_without(
        "flask",
        """
        import runpy, sys
        sys.argv = ["train", "--help"]
        try:
            runpy.run_module("supersizeme.toolchain.train", run_name="__main__")
        except SystemExit as exit:
            assert exit.code == 0, exit.code
        assert "flask" not in sys.modules
        """,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "usage" in result.stdout


def imported_modules(path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_no_service_module_imports_the_toolchain_and_no_toolchain_module_imports_flask():
    for path in (PACKAGE / "service").glob("*.py"):
        assert not any(m.startswith("supersizeme.toolchain") for m in imported_modules(path)), path
    for path in [*(PACKAGE / "toolchain").glob("*.py"), *PACKAGE.glob("*.py")]:
        modules = imported_modules(path)
        assert not any(m.split(".")[0] in ("flask", "werkzeug", "gunicorn") for m in modules), path
        assert (
            "supersizeme.service.app" not in modules and "supersizeme.service.api" not in modules
        ), path
