"""The package layout's direction (pyproject.toml [tool.importlinter]) holds, and a back-edge breaks it.

The contracts are checked with import-linter on this checkout; the same check is run on a copy of the package
with one forbidden import added, to show that each kind of back-edge fails the suite.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# import-linter finds `sensor` through the import system: run it in a fresh interpreter whose first path entry is
# the tree under test, so that neither an installed copy nor this process's imports are what it reads.
LINT = ("import sys; from importlinter.cli import lint_imports; "
        "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True, no_logo=True))")


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([sys.executable, "-c", LINT], cwd=root, env=env, capture_output=True, text=True,
                          timeout=120, check=False)


def test_the_contracts_hold() -> None:
    result = _lint(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 2 kept, 0 broken." in result.stdout, result.stdout


@pytest.mark.parametrize(("module", "line", "expected"), [
    # the model knowing about ECS: the back-edge Leaders once was
    ("model/sessions.py", "from sensor.ecs import builder", "sensor.model is not allowed to import sensor.ecs"),
    # a lazy import inside a function counts as well
    ("probe/loader.py", "def _later():\n    from sensor.ops import preflight",
     "sensor.probe is not allowed to import sensor.ops"),
    # siblings in one layer stay independent
    ("outputs/base.py", "import sensor.rules.alerts", "sensor.outputs is not allowed to import sensor.rules"),
    # the bottom imports no stage
    ("config/settings.py", "import sensor.model.records", "sensor.config is not allowed to import sensor.model"),
    # a replay must not need BCC
    ("ecs/encoding.py", "import bcc", "sensor.ecs is not allowed to import bcc"),
])
def test_a_back_edge_fails(tmp_path: Path, module: str, line: str, expected: str) -> None:
    shutil.copytree(REPO / "sensor", tmp_path / "sensor", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    target = tmp_path / "sensor" / module
    target.write_text(target.read_text() + "\n\n" + line + "\n")
    result = _lint(tmp_path)
    assert result.returncode != 0, result.stdout
    assert expected in result.stdout, result.stdout
