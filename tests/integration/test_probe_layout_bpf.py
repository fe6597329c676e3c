"""The record layout checks compiled into the BPF program itself (sensor/probe/loader.py appends them to bpf/sensor.c):
BCC's clang, for the BPF target, holds sensor.h to sensor/probe/layout.py at every load."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.kernel

REPO = Path(__file__).resolve().parents[2]
LOAD = ("from sensor.app import probe_options; from sensor.config.settings import Config;"
        " from sensor.probe.loader import Probe;"
        " p = Probe(lambda r: None, probe_options(Config().sections.probe)); p.load(); p.close(); print('loaded')")


def _load(bpf_dir: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, SENSOR_BPF_DIR=str(bpf_dir))
    return subprocess.run([sys.executable, "-c", LOAD], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300, check=False)


def test_a_member_moved_in_sensor_h_stops_the_load_and_is_named(tmp_path: Path) -> None:
    shutil.copytree(REPO / "bpf", tmp_path / "bpf")
    header = tmp_path / "bpf" / "sensor.h"
    text = header.read_text()
    assert text.count("    u16 cwd_len;\n") == 1
    header.write_text(text.replace("    u16 cwd_len;\n", "").replace("    u16 filename_len;\n",
                                                                     "    u16 cwd_len;\n    u16 filename_len;\n"))
    result = _load(tmp_path / "bpf")
    assert result.returncode != 0 and "loaded" not in result.stdout
    assert "exec_record.cwd_len: sensor/probe/layout.py reads it at offset 174" in result.stderr
    assert "ProbeError: cannot compile or load the BPF program" in result.stderr


def test_the_unchanged_program_loads_with_the_checks(tmp_path: Path) -> None:
    shutil.copytree(REPO / "bpf", tmp_path / "bpf")
    result = _load(tmp_path / "bpf")
    assert result.returncode == 0, result.stderr
    assert "loaded" in result.stdout
