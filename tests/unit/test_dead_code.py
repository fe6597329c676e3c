"""No dead code in sensor/: vulture finds nothing unused that tests/vulture_whitelist.py does not explain.

Tests and scripts count as users (a counter a test reads is not dead); only sensor/ is reported, since pytest's
conventions (fixtures, `pytestmark`, hooks) are all "unused" to vulture.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_vulture_finds_no_dead_code_in_the_sensor() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "vulture", "sensor", "tests", "scripts", "tests/vulture_whitelist.py"],
        capture_output=True, text=True, cwd=REPO, timeout=120)
    assert "No module named vulture" not in done.stderr, "vulture is a test dependency: scripts/install.sh --test"
    assert done.returncode in (0, 3), done.stderr   # 3: it found something
    dead = [line for line in done.stdout.splitlines() if line.startswith("sensor/")]
    assert dead == [], "remove the dead code, or add the name to tests/vulture_whitelist.py with why it is used"
