"""Finds a kernel header tree for BCC's own includes.

The program reads no kernel struct through these headers (offsets come from BTF), so any reasonably recent
tree will do when the running kernel's own is missing, as on hosts that ship none. BCC looks for
/lib/modules/$(uname -r)/{build,source}; when those are missing we point them at a fallback tree.
"""

from __future__ import annotations

import os
from pathlib import Path

MODULES = Path("/lib/modules")
USR_SRC = Path("/usr/src")


class HeaderError(Exception):
    pass


def running_release() -> str:
    return os.uname().release


def has_headers(build: Path) -> bool:
    return (build / "include").is_dir() or (build / "Makefile").is_file()


# The kernel's name of the machine -> Debian's name of the architecture, which its header packages end with.
DEBIAN_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}


def debian_arch(machine: str | None = None) -> str:
    machine = machine or os.uname().machine
    return DEBIAN_ARCH.get(machine, machine)


def fallback_tree(usr_src: Path = USR_SRC, machine: str | None = None) -> tuple[Path, Path] | None:
    """(build, source) of the newest Debian-style linux-headers-*-<arch> tree of this machine's architecture
    (an arm64 node must not compile against x86 headers: their asm/ directories differ), and its -common
    sibling."""
    arch = debian_arch(machine)
    candidates = sorted(usr_src.glob(f"linux-headers-*-{arch}"), reverse=True)
    for build in candidates:
        if not (build / "include").is_dir():
            continue
        prefix = build.name.rsplit("-", 1)[0]
        common = usr_src / f"{prefix}-common"
        return build, common if common.is_dir() else build
    return None


def ensure_kernel_headers(release: str | None = None) -> Path:
    release = release or running_release()
    module_dir = MODULES / release
    build = module_dir / "build"
    if has_headers(build):
        return build
    tree = fallback_tree()
    if tree is None:
        raise HeaderError(
            f"no kernel headers for {release} and no fallback tree under {USR_SRC}: "
            f"install Debian's linux-headers-{debian_arch()} (any version works; offsets come from BTF)"
        )
    fallback_build, fallback_source = tree
    try:
        module_dir.mkdir(parents=True, exist_ok=True)
        for link, target in ((build, fallback_build), (module_dir / "source", fallback_source)):
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(target)
    except OSError as exc:
        raise HeaderError(
            f"cannot link {build} to the fallback headers {fallback_build}: {exc.strerror}; "
            f"run 'ln -sfn {fallback_build} {build}' as root"
        ) from exc
    return build
