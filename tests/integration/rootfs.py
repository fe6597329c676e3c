"""A small root filesystem for real containers: busybox-static plus the host's ssh and sshd.

Built once and cached under /var/tmp (keyed by the host binaries it copies, so an upgrade rebuilds it), and
importable into podman as a named image. Several test sessions may build at once: a file lock serialises them.
Used by every test that starts a real container; nothing here is specific to one runtime.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

CACHE_DIR = Path("/var/tmp/container-sensor-test")
BUSYBOX = Path("/bin/busybox")
SSH_BINARIES = (Path("/usr/bin/ssh"), Path("/usr/sbin/sshd"))
IMAGE_NAME = "localhost/container-sensor-test"
IMAGE_TAG = "1"

_LDD_PATH = re.compile(r"(/\S+)")


class RootfsUnavailable(RuntimeError):
    """The host lacks what the root filesystem is built from (busybox-static, ssh, sshd)."""


def _check_sources() -> None:
    missing = [str(p) for p in (BUSYBOX, *SSH_BINARIES) if not p.exists()]
    if missing:
        raise RootfsUnavailable(
            "missing " + ", ".join(missing)
            + ": apt-get install -y busybox-static openssh-server openssh-client"
        )
    ldd = subprocess.run(["ldd", str(BUSYBOX)], capture_output=True, text=True)
    if "not a dynamic executable" not in (ldd.stdout + ldd.stderr):
        raise RootfsUnavailable(f"{BUSYBOX} is not static: apt-get install -y busybox-static")


def _shared_libraries(binary: Path) -> list[Path]:
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True).stdout
    libs = []
    for line in out.splitlines():
        match = _LDD_PATH.search(line.split("=>")[-1])
        if match:
            libs.append(Path(match.group(1)))
    return libs


def _fingerprint() -> str:
    digest = hashlib.sha256()
    for path in (BUSYBOX, *SSH_BINARIES):
        st = path.stat()
        digest.update(f"{path}:{st.st_size}:{st.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def _copy_into(root: Path, source: Path) -> None:
    target = root / source.relative_to("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source.resolve(), target)


def _populate(root: Path) -> None:
    for sub in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "tmp", "root", "run",
                "var/empty", "run/sshd", "etc/ssh"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "tmp", 0o1777)
    shutil.copy2(BUSYBOX, root / "bin/busybox")
    listing = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True, check=True)
    applets = listing.stdout.split()
    for applet in applets:
        link = root / "bin" / applet
        if applet != "busybox" and not link.exists():
            link.symlink_to("busybox")
    for binary in SSH_BINARIES:
        _copy_into(root, binary)
        for lib in _shared_libraries(binary):
            _copy_into(root, lib)
    (root / "etc/passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nsshd:x:100:65534::/run/sshd:/bin/false\nnobody:x:65534:65534::/:/bin/false\n"
    )
    (root / "etc/group").write_text("root:x:0:\nnogroup:x:65534:\n")
    (root / "etc/hostname").write_text("sensor-test\n")


def rootfs() -> Path:
    """The cached root filesystem directory, built on first use. Raises RootfsUnavailable."""
    _check_sources()
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    final = CACHE_DIR / f"rootfs-{_fingerprint()}"
    with open(CACHE_DIR / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / "bin/busybox").exists() and (final / ".complete").exists():
            return final
        staging = CACHE_DIR / f".staging-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        _populate(staging)
        (staging / ".complete").write_text("")
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
        return final


def copy_rootfs(dest: Path) -> Path:
    """A private writable copy (runtimes such as LXC and nspawn write into their root)."""
    shutil.copytree(rootfs(), dest, symlinks=True)
    return dest


def podman_image(name: str = IMAGE_NAME, tag: str = IMAGE_TAG) -> str:
    """`podman import`s the root filesystem once as NAME:TAG and returns that reference."""
    ref = f"{name}:{tag}"
    root = rootfs()
    with open(CACHE_DIR / "import.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if subprocess.run(["podman", "image", "exists", ref]).returncode == 0:
            return ref
        tarball = CACHE_DIR / f"{root.name}.tar"
        if not tarball.exists():
            with tarfile.open(tarball.with_suffix(".partial"), "w") as tar:
                for entry in sorted(root.iterdir()):
                    tar.add(entry, arcname=entry.name)
            tarball.with_suffix(".partial").rename(tarball)
        subprocess.run(
            ["podman", "import", "--change", "CMD=/bin/sh", str(tarball), ref],
            check=True, capture_output=True,
        )
    return ref
