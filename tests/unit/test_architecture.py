"""The package layout's direction (pyproject.toml [tool.importlinter]) holds, and a back-edge breaks it.

The contracts are checked with import-linter on this checkout; the same check is run on a copy of the package
with one forbidden import added, to show that each kind of back-edge fails the suite. Inside sensor.config the
modules' own order is checked with grimp (import-linter's graph), leaving type-only imports out.
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
    assert "Contracts: 3 kept, 0 broken." in result.stdout, result.stdout


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
    # the long-lived sensor must not map the compiler: only the loader child imports BCC
    ("probe/loader.py", "def _later():\n    from bcc import BPF", "sensor.probe.loader is not allowed to import bcc"),
])
def test_a_back_edge_fails(tmp_path: Path, module: str, line: str, expected: str) -> None:
    shutil.copytree(REPO / "sensor", tmp_path / "sensor", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    target = tmp_path / "sensor" / module
    target.write_text(target.read_text() + "\n\n" + line + "\n")
    result = _lint(tmp_path)
    assert result.returncode != 0, result.stdout
    assert expected in result.stdout, result.stdout


# Inside sensor.config the modules import one way at run time, top to bottom; statefiles stands apart. The type-only
# imports of Config (sections.py, credentials.py) go the other way and are left out, as they never run.
CONFIG_LAYERS = ["settings", "sections", "options", "parsing", "credentials"]
CONFIG_CHECK = ("import grimp, sys; graph = grimp.build_graph('sensor', exclude_type_checking_imports=True, "
                "cache_dir=None); found = graph.find_illegal_dependencies_for_layers(layers=sys.argv[1:], "
                "containers={'sensor.config'}); print(sorted((d.importer, d.imported) for d in found))")


def _config_back_edges(root: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(root)}
    result = subprocess.run([sys.executable, "-c", CONFIG_CHECK, *CONFIG_LAYERS], cwd=root, env=env,
                            capture_output=True, text=True, timeout=120, check=True)
    return result.stdout.strip()


def test_the_configuration_modules_import_one_way() -> None:
    assert _config_back_edges(REPO) == "[]"


def test_a_back_edge_inside_the_configuration_fails(tmp_path: Path) -> None:
    shutil.copytree(REPO / "sensor", tmp_path / "sensor", ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "sensor" / "config" / "parsing.py"
    target.write_text(target.read_text() + "\n\ndef _later():\n    from sensor.config import options\n")
    assert _config_back_edges(tmp_path) == "[('sensor.config.parsing', 'sensor.config.options')]"
