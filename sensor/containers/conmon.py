"""Which podman container a process runs in when no cgroup says so: rootless podman on a cgroup v1 (or hybrid)
host leaves its containers in the launching user's cgroup, so only namespaces set them apart.

Every podman container has a conmon monitor on the host as its init's parent (and as the grandparent of a
`podman exec`), started with the container's id (`-c`), name (`-n`) and bundle (`-b`,
`<store>/<driver>-containers/<id>/userdata`). Nothing in the container can reach conmon (another pid namespace,
outside the container's user namespace), so its argv is the runtime's word. The image comes from the store's
`containers.json`, in the user's home: read with userfiles.read_small, which that user cannot freeze or misdirect.
Both reads run on the container-lookup worker, never on the event loop: reading another process's cmdline takes
that process's memory map lock, which its owner can hold.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from .info import ContainerMetadata
from .userfiles import Refused, read_small

_HEX64 = re.compile(r"[0-9a-f]{64}")
MAX_CMDLINE_BYTES = 64 * 1024
MAX_STORE_INDEX_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ConmonArgs:
    container_id: str
    name: str | None
    bundle: str | None


def parse_conmon_argv(argv: list[str]) -> ConmonArgs | None:
    """The container id, name and bundle conmon was started with; None for anything that is not conmon with
    a 64-hex container id."""
    if not argv or not Path(argv[0]).name.startswith("conmon"):
        return None
    values: dict[str, str] = {}
    flags = {"-c": "cid", "--cid": "cid", "-n": "name", "--name": "name", "-b": "bundle", "--bundle": "bundle"}
    i = 1
    while i < len(argv):
        arg = argv[i]
        key, sep, inline = arg.partition("=")
        if key in flags and sep:
            values.setdefault(flags[key], inline)
        elif arg in flags and i + 1 < len(argv):
            values.setdefault(flags[arg], argv[i + 1])
            i += 1
        i += 1
    cid = values.get("cid", "")
    if not _HEX64.fullmatch(cid):
        return None
    return ConmonArgs(cid, values.get("name") or None, values.get("bundle") or None)


def read_conmon(proc_root: Path, pid: int) -> ConmonArgs | None:
    try:
        with open(proc_root / str(pid) / "cmdline", "rb") as fh:
            raw = fh.read(MAX_CMDLINE_BYTES)
    except OSError:
        return None
    return parse_conmon_argv([a.decode(errors="replace") for a in raw.split(b"\0") if a])


def store_index_of(args: ConmonArgs) -> Path | None:
    """`<store>/<driver>-containers/containers.json` when the bundle has podman's shape for this id."""
    if not args.bundle:
        return None
    bundle = Path(args.bundle)
    if bundle.name != "userdata" or bundle.parent.name != args.container_id \
            or not bundle.parent.parent.name.endswith("-containers"):
        return None
    return bundle.parent.parent / "containers.json"


def lookup(args: ConmonArgs) -> tuple[ContainerMetadata, str | None]:
    """What the store says of the container (name and image), with conmon's name where the store has none;
    the second value says why the store could not be read (None when it was)."""
    index = store_index_of(args)
    entry: dict = {}
    problem: str | None = None
    if index is None:
        problem = "no podman bundle in conmon's arguments"
    else:
        try:
            data = json.loads(read_small(index, MAX_STORE_INDEX_BYTES))
            entry = next((c for c in data if isinstance(c, dict) and c.get("id") == args.container_id), {}) \
                if isinstance(data, list) else {}
        except (Refused, OSError, ValueError) as exc:
            problem = str(exc)
    try:
        meta = json.loads(entry.get("metadata") or "{}")
    except (TypeError, ValueError):
        meta = {}
    if not isinstance(meta, dict):
        meta = {}
    names = entry.get("names") or []
    name = meta.get("name") or (names[0] if isinstance(names, list) and names else None) or args.name
    return ContainerMetadata(runtime="podman", name=name if isinstance(name, str) else args.name,
                             image=meta.get("image-name") or None,
                             source=str(index) if index and problem is None else "conmon"), problem
