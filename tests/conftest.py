"""Fixtures shared by the unit and the integration tests."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def world_tmp() -> Iterator[Path]:
    """A directory like /tmp: anyone may create files in it, only the owner of a file may remove it."""
    directory = Path(tempfile.mkdtemp(prefix="state-files-", dir="/tmp"))
    os.chmod(directory, 0o1777)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)
