"""The OFF_* macros the BPF program needs, taken from the running kernel's BTF."""

from __future__ import annotations

import contextlib

from sensor.probe.btf import BTFError, KernelBTF

# macro -> (struct, member path); each is a byte offset inside that struct.
MEMBER_OFFSETS: dict[str, tuple[str, str]] = {
    "OFF_TASK_PID": ("task_struct", "pid"),
    "OFF_TASK_TGID": ("task_struct", "tgid"),
    "OFF_TASK_REAL_PARENT": ("task_struct", "real_parent"),
    "OFF_TASK_CHILDREN": ("task_struct", "children"),
    "OFF_TASK_SIBLING": ("task_struct", "sibling"),
    "OFF_TASK_START_BOOTTIME": ("task_struct", "start_boottime"),
    "OFF_TASK_NSPROXY": ("task_struct", "nsproxy"),
    "OFF_TASK_SIGNAL": ("task_struct", "signal"),
    "OFF_TASK_THREAD_PID": ("task_struct", "thread_pid"),
    "OFF_TASK_CRED": ("task_struct", "cred"),
    "OFF_TASK_MM": ("task_struct", "mm"),
    "OFF_TASK_EXIT_CODE": ("task_struct", "exit_code"),
    "OFF_TASK_FS": ("task_struct", "fs"),
    "OFF_TASK_GROUP_LEADER": ("task_struct", "group_leader"),
    "OFF_FS_PWD": ("fs_struct", "pwd"),
    "OFF_FS_ROOT": ("fs_struct", "root"),
    "OFF_PATH_MNT": ("path", "mnt"),
    "OFF_PATH_DENTRY": ("path", "dentry"),
    "OFF_DENTRY_D_PARENT": ("dentry", "d_parent"),
    "OFF_DENTRY_D_NAME": ("dentry", "d_name"),
    "OFF_QSTR_NAME": ("qstr", "name"),
    "OFF_VFSMOUNT_MNT_ROOT": ("vfsmount", "mnt_root"),
    "OFF_MOUNT_MNT": ("mount", "mnt"),
    "OFF_MOUNT_MNT_PARENT": ("mount", "mnt_parent"),
    "OFF_MOUNT_MNT_MOUNTPOINT": ("mount", "mnt_mountpoint"),
    "OFF_MM_ARG_START": ("mm_struct", "arg_start"),
    "OFF_MM_ARG_END": ("mm_struct", "arg_end"),
    "OFF_MM_ENV_START": ("mm_struct", "env_start"),
    "OFF_MM_ENV_END": ("mm_struct", "env_end"),
    "OFF_BPRM_FILE": ("linux_binprm", "file"),
    "OFF_BPRM_FILENAME": ("linux_binprm", "filename"),
    "OFF_BPRM_ARGC": ("linux_binprm", "argc"),
    "OFF_BPRM_BUF": ("linux_binprm", "buf"),
    "OFF_INODE_I_SIZE": ("inode", "i_size"),
    "OFF_FILE_F_INODE": ("file", "f_inode"),
    "OFF_FILE_F_PATH": ("file", "f_path"),
    "OFF_INODE_I_INO": ("inode", "i_ino"),
    "OFF_INODE_I_SB": ("inode", "i_sb"),
    "OFF_SB_S_DEV": ("super_block", "s_dev"),
    "OFF_NSPROXY_MNT_NS": ("nsproxy", "mnt_ns"),
    "OFF_NSPROXY_NET_NS": ("nsproxy", "net_ns"),
    "OFF_NSPROXY_UTS_NS": ("nsproxy", "uts_ns"),
    "OFF_NSPROXY_IPC_NS": ("nsproxy", "ipc_ns"),
    "OFF_NSPROXY_CGROUP_NS": ("nsproxy", "cgroup_ns"),
    "OFF_MNT_NS_INUM": ("mnt_namespace", "ns.inum"),
    "OFF_NET_NS_INUM": ("net", "ns.inum"),
    "OFF_UTS_NS_INUM": ("uts_namespace", "ns.inum"),
    "OFF_IPC_NS_INUM": ("ipc_namespace", "ns.inum"),
    "OFF_CGROUP_NS_INUM": ("cgroup_namespace", "ns.inum"),
    "OFF_PID_NS_INUM": ("pid_namespace", "ns.inum"),
    "OFF_USER_NS_INUM": ("user_namespace", "ns.inum"),
    "OFF_PID_LEVEL": ("pid", "level"),
    "OFF_PID_NUMBERS": ("pid", "numbers"),
    "OFF_UPID_NR": ("upid", "nr"),
    "OFF_UPID_NS": ("upid", "ns"),
    "OFF_CRED_EUID": ("cred", "euid"),
    "OFF_CRED_EGID": ("cred", "egid"),
    # kernel_cap_t: a u64 since 6.3, two u32 words before, which read as the same u64 on little-endian machines
    "OFF_CRED_CAP_EFFECTIVE": ("cred", "cap_effective"),
    "OFF_CRED_CAP_PERMITTED": ("cred", "cap_permitted"),
    "OFF_CRED_USER_NS": ("cred", "user_ns"),
    "OFF_SIGNAL_PIDS": ("signal_struct", "pids"),
    "OFF_SIGNAL_TTY": ("signal_struct", "tty"),
    "OFF_SIGNAL_FLAGS": ("signal_struct", "flags"),
    "OFF_SIGNAL_GROUP_EXIT_CODE": ("signal_struct", "group_exit_code"),
    "OFF_TTY_INDEX": ("tty_struct", "index"),
    "OFF_TTY_DRIVER": ("tty_struct", "driver"),
    "OFF_TTY_DRIVER_MAJOR": ("tty_driver", "major"),
    "OFF_TTY_DRIVER_MINOR_START": ("tty_driver", "minor_start"),
}

# What connection_accepted records need (a socket found from a descriptor, its addresses): optional, since a
# kernel built without IPv6 has no skc_v6_* members; without them the probe reports no accepted connections.
ACCEPT_OFFSETS: dict[str, tuple[str, str]] = {
    "OFF_TASK_FILES": ("task_struct", "files"),
    "OFF_FILES_FDT": ("files_struct", "fdt"),
    "OFF_FDTABLE_MAX_FDS": ("fdtable", "max_fds"),
    "OFF_FDTABLE_FD": ("fdtable", "fd"),
    "OFF_FILE_PRIVATE_DATA": ("file", "private_data"),
    "OFF_SOCKET_SK": ("socket", "sk"),
    "OFF_SOCK_FAMILY": ("sock", "__sk_common.skc_family"),
    "OFF_SOCK_NUM": ("sock", "__sk_common.skc_num"),
    "OFF_SOCK_DPORT": ("sock", "__sk_common.skc_dport"),
    "OFF_SOCK_DADDR": ("sock", "__sk_common.skc_daddr"),
    "OFF_SOCK_RCV_SADDR": ("sock", "__sk_common.skc_rcv_saddr"),
    "OFF_SOCK_V6_DADDR": ("sock", "__sk_common.skc_v6_daddr"),
    "OFF_SOCK_V6_RCV_SADDR": ("sock", "__sk_common.skc_v6_rcv_saddr"),
    "OFF_SOCK_PROTOCOL": ("sock", "sk_protocol"),
}


def inode_ctime_offsets(btf: KernelBTF) -> tuple[int, int]:
    """(seconds, nanoseconds) of struct inode's change time, which has moved between kernel versions:
    i_ctime_sec/i_ctime_nsec since 6.11, a struct timespec64 named __i_ctime (6.6) or i_ctime before."""
    try:
        return btf.offset("inode", "i_ctime_sec"), btf.offset("inode", "i_ctime_nsec")
    except BTFError:
        pass
    for name in ("__i_ctime", "i_ctime"):
        try:
            base = btf.offset("inode", name)
        except BTFError:
            continue
        return base + btf.offset("timespec64", "tv_sec"), base + btf.offset("timespec64", "tv_nsec")
    raise BTFError("struct inode has no change time member the probe knows")


def kernel_macros(btf: KernelBTF) -> dict[str, int]:
    """Every macro the BPF program expects, or BTFError naming the first one the kernel lacks."""
    macros = {name: btf.offset(struct, path) for name, (struct, path) in MEMBER_OFFSETS.items()}
    macros["OFF_INODE_CTIME_SEC"], macros["OFF_INODE_CTIME_NSEC"] = inode_ctime_offsets(btf)
    macros["SIZEOF_UPID"] = btf.size(btf.struct_id("upid"))
    macros["PIDTYPE_SID_INDEX"] = btf.enum_value("pid_type", "PIDTYPE_SID")
    macros["PIDTYPE_PGID_INDEX"] = btf.enum_value("pid_type", "PIDTYPE_PGID")
    with contextlib.suppress(BTFError):  # the loader sees they are missing and says so
        macros.update({name: btf.offset(struct, path) for name, (struct, path) in ACCEPT_OFFSETS.items()})
    return macros


def main() -> None:
    """Prints the offsets in use, for debugging a kernel the probe misreads."""
    for name, value in sorted(kernel_macros(KernelBTF.from_file()).items()):
        print(f"{name:32} {value}")


if __name__ == "__main__":
    main()
