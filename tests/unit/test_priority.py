"""priority_boost: the nice value, and the autogroup when the sensor leads its own session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.sensor_process import REPO

CHILD = """
import os, sys
from pathlib import Path
from sensor.run import boost_priority
boost_priority(int(sys.argv[1]), Path(sys.argv[2]))
print(os.getpriority(os.PRIO_PROCESS, 0))
"""


def boosted(levels: int, proc_root: Path, new_session: bool) -> int:
    out = subprocess.run([sys.executable, "-c", CHILD, str(levels), str(proc_root)], cwd=REPO, check=True,
                         capture_output=True, text=True, start_new_session=new_session)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(os.geteuid() != 0, reason="raising a priority needs CAP_SYS_NICE")
def test_session_leader_boosts_its_autogroup_and_a_session_member_only_itself(tmp_path: Path) -> None:
    (tmp_path / "self").mkdir()
    autogroup = tmp_path / "self" / "autogroup"
    autogroup.write_text("/autogroup-1 nice 0\n")
    base = os.getpriority(os.PRIO_PROCESS, 0)
    assert boosted(3, tmp_path, new_session=False) == base - 3
    assert autogroup.read_text() == "/autogroup-1 nice 0\n", "a group shared with the caller's session is left"
    assert boosted(3, tmp_path, new_session=True) == base - 3
    assert autogroup.read_text() == "-3\n"
    assert boosted(0, tmp_path, new_session=False) == base
