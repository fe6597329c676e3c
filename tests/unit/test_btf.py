"""The BTF reader against the running kernel's own BTF (readable without root)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from sensor.probe.btf import BTFError, KernelBTF
from sensor.probe.kernel_offsets import MEMBER_OFFSETS, kernel_macros

VMLINUX = Path("/sys/kernel/btf/vmlinux")
needs_btf = pytest.mark.skipif(not VMLINUX.exists(), reason="kernel without BTF")


@pytest.fixture(scope="module")
def btf() -> KernelBTF:
    return KernelBTF.from_file(VMLINUX)


@needs_btf
def test_every_offset_the_probe_needs_exists(btf: KernelBTF) -> None:
    macros = kernel_macros(btf)
    assert set(MEMBER_OFFSETS) <= set(macros)
    assert macros["OFF_TASK_PID"] + 4 == macros["OFF_TASK_TGID"], "pid and tgid are adjacent in task_struct"
    assert macros["OFF_MM_ARG_END"] == macros["OFF_MM_ARG_START"] + 8
    assert macros["SIZEOF_UPID"] == 16
    assert macros["PIDTYPE_SID_INDEX"] == 3


@needs_btf
def test_members_inside_anonymous_unions_are_found(btf: KernelBTF) -> None:
    # struct file's f_inode and struct inode's i_ino are plain members; ns.inum goes through a nested struct
    assert btf.offset("mnt_namespace", "ns.inum") == btf.offset("mnt_namespace", "ns") + btf.offset(
        "ns_common", "inum")


@needs_btf
def test_unknown_member_is_a_clear_error(btf: KernelBTF) -> None:
    with pytest.raises(BTFError, match="task_struct has no member no_such_member"):
        btf.offset("task_struct", "no_such_member")


def test_garbage_is_refused() -> None:
    with pytest.raises(BTFError):
        KernelBTF(b"\x00" * 64)
    with pytest.raises(BTFError):
        KernelBTF(struct.pack("<HBBI", 0xEB9F, 1, 0, 24)[:4])


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BTFError, match="cannot read kernel BTF"):
        KernelBTF.from_file(tmp_path / "vmlinux")
