from __future__ import annotations

from pathlib import Path

from sensor.config.settings import Config
from sensor.ops.deploy_checks import (
    check_cgroupfs,
    check_kernel,
    check_ready_file,
    check_runtime_state,
    check_spool,
    deployment_checks,
)

# /proc/self/mountinfo lines as seen on the development machine (Debian 12, hybrid cgroups) and on a
# cgroup v2-only node (Debian 12 default), trimmed to the cgroup mounts and one other (and some options).
HYBRID_MOUNTINFO = """\
24 30 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
35 24 0:30 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
36 35 0:31 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
37 35 0:32 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
40 35 0:35 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,memory
"""
V2_MOUNTINFO = """\
24 30 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate
"""


def fake_proc(tmp_path: Path, comms: list[str]) -> Path:
    proc = tmp_path / "proc"
    for pid, comm in enumerate(comms, start=100):
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "comm").write_text(comm + "\n")
    (proc / "self").mkdir(parents=True, exist_ok=True)  # not a pid: ignored
    return proc


def test_cgroupfs_hybrid_and_v2(tmp_path):
    path = tmp_path / "mountinfo"
    path.write_text(HYBRID_MOUNTINFO)
    check = check_cgroupfs(path)
    assert check.ok and check.detail == "cgroup2 at /sys/fs/cgroup/unified; 2 cgroup v1 hierarchies"
    path.write_text(V2_MOUNTINFO)
    assert check_cgroupfs(path).detail == "cgroup2 at /sys/fs/cgroup"


def test_cgroupfs_ignores_other_containers_mounts(tmp_path):
    # Seen in the sensor's container with the host's /var/lib/containers mounted: a running container's cgroup
    # mount shows up below its overlay root.
    other = ("1409 1387 0:31 / /var/lib/containers/storage/overlay/a76eecb08f825bf9d656afa1a14f3a374cc612e5cc6a41"
             "1773e98f4e4eeee14c/merged/sys/fs/cgroup/unified ro,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw\n")
    path = tmp_path / "mountinfo"
    path.write_text(HYBRID_MOUNTINFO + other)
    assert check_cgroupfs(path).detail == "cgroup2 at /sys/fs/cgroup/unified; 2 cgroup v1 hierarchies"


def test_cgroupfs_missing_names_the_mount(tmp_path):
    path = tmp_path / "mountinfo"
    path.write_text(HYBRID_MOUNTINFO.splitlines()[0] + "\n")
    check = check_cgroupfs(path)
    assert not check.ok and check.fatal
    assert "hostPath /sys/fs/cgroup" in check.fix


def test_runtime_running_without_visible_state(tmp_path):
    # comm names as the processes show them on a containerd node and on a CRI-O node.
    proc = fake_proc(tmp_path, ["systemd", "containerd", "containerd-shim", "crio", "lxc-start", "kubelet"])
    root = tmp_path / "root"
    (root / "run/containerd/io.containerd.runtime.v2.task").mkdir(parents=True)
    (root / "var/lib/lxc").mkdir(parents=True)  # empty: LXC keeps its containers under another lxcpath
    check = check_runtime_state(proc, root)  # nothing of cri-o's exists: its mounts are missing
    assert not check.ok and not check.fatal
    assert check.detail == ("state visible for containerd; lxc running, state directories empty; "
                            "cri-o running, state not visible (/run/crio, /run/containers)")
    assert "hostPaths /run/crio and /run/containers, read-only" in check.fix


def test_runtime_state_visible(tmp_path):
    proc = fake_proc(tmp_path, ["containerd", "dockerd"])
    root = tmp_path / "root"
    (root / "run/containerd/runc").mkdir(parents=True)
    (root / "var/lib/docker/containers/0123").mkdir(parents=True)
    check = check_runtime_state(proc, root)
    assert check.ok and check.detail == "state visible for containerd, docker"


def test_no_runtime(tmp_path):
    check = check_runtime_state(fake_proc(tmp_path, ["systemd", "sshd"]), tmp_path)
    assert check.ok and "no container runtime" in check.detail


def test_kernel_too_old_or_locked_down(tmp_path):
    assert not check_kernel("5.4.0-150-generic").ok
    lockdown = tmp_path / "lockdown"
    lockdown.write_text("none integrity [confidentiality]\n")
    check = check_kernel("6.1.0-56-amd64", lockdown)
    assert not check.ok and "lockdown=confidentiality" in check.detail
    lockdown.write_text("[none] integrity confidentiality\n")
    assert check_kernel("6.1.0-56-amd64", lockdown).detail == "6.1.0-56-amd64, lockdown none"


def test_spool_writable_creatable_or_not(tmp_path):
    assert check_spool(Config(spool_dir=tmp_path)).detail == f"{tmp_path} is writable"
    assert check_spool(Config(spool_dir=tmp_path / "a/b")).detail == f"{tmp_path / 'a/b'} can be created"
    assert not (tmp_path / "a").exists()  # the check leaves nothing behind
    assert list(tmp_path.iterdir()) == []
    # procfs refuses new directories, even to root.
    blocked = check_spool(Config(spool_dir=Path("/proc/container-sensor-spool")))
    assert not blocked.ok and not blocked.fatal  # only fatal when Elasticsearch needs the spool
    needed = Config(spool_dir=Path("/proc/container-sensor-spool"), outputs=("elasticsearch",),
                    elasticsearch_url="https://es:9200")
    assert check_spool(needed).fatal
    assert "hostPath /var/lib/container-sensor" in check_spool(needed).fix


def test_ready_file(tmp_path):
    assert check_ready_file(Config()).ok
    assert check_ready_file(Config(ready_file=tmp_path / "ready")).ok
    assert not check_ready_file(Config(ready_file=Path("/proc/x/ready"))).ok


def test_deployment_checks_run_here(tmp_path):
    checks = [check() for check in deployment_checks(Config(spool_dir=tmp_path))]
    assert [c.name for c in checks] == ["kernel", "cgroupfs", "host namespaces", "runtime state", "spool",
                                        "ready file", "file output"]
