"""Facts about the host the sensor runs on, gathered once at start-up."""

from __future__ import annotations

import ipaddress
import os
import platform
import socket
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class HostFacts:
    hostname: str
    host_id: str
    architecture: str
    kernel: str
    os_name: str
    os_version: str
    os_family: str
    os_platform: str
    ips: tuple[str, ...]
    macs: tuple[str, ...]
    boot_id: str


def read_os_release(path: Path = Path("/etc/os-release")) -> dict[str, str]:
    values: dict[str, str] = {}
    try:
        for line in path.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep:
                values[key.strip()] = value.strip().strip('"')
    except OSError:
        pass
    return values


def host_addresses() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(IP addresses, MAC addresses) of the host's interfaces, loopback left out; empty when unreadable."""
    try:
        from pyroute2 import IPRoute
    except ImportError:
        return (), ()
    ips: list[str] = []
    macs: list[str] = []
    try:
        with IPRoute() as ipr:
            for addr in ipr.get_addr():
                value = addr.get_attr("IFA_ADDRESS")
                if value and not ipaddress.ip_address(value).is_loopback:
                    ips.append(value)
            for link in ipr.get_links():
                mac = link.get_attr("IFLA_ADDRESS")
                if mac and mac != "00:00:00:00:00:00" and len(mac) == 17:
                    macs.append(mac.upper().replace(":", "-"))
    except OSError:
        return (), ()
    return tuple(dict.fromkeys(ips)), tuple(dict.fromkeys(macs))


def gather(proc_root: Path = Path("/proc"), etc: Path = Path("/etc"), hostname: str | None = None) -> HostFacts:
    os_release = read_os_release(etc / "os-release")
    try:
        host_id = (etc / "machine-id").read_text().strip()
    except OSError:
        host_id = ""
    try:
        boot_id = (proc_root / "sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot_id = ""
    ips, macs = host_addresses()
    uname = os.uname()
    return HostFacts(
        hostname=hostname or socket.gethostname(),
        host_id=host_id,
        architecture=platform.machine(),
        kernel=uname.release,
        os_name=os_release.get("NAME", "Linux"),
        os_version=os_release.get("VERSION_ID", ""),
        os_family=os_release.get("ID_LIKE", os_release.get("ID", "")).split()[0] if os_release else "",
        os_platform=os_release.get("ID", ""),
        ips=ips,
        macs=macs,
        boot_id=boot_id,
    )
