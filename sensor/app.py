"""Builds every stage from one configuration: the only place stages are wired (sensor.run runs them)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sensor.containers.namespaces import host_namespaces
from sensor.ecs.builder import DocumentBuilder
from sensor.model import host as host_facts
from sensor.model.processes import ProcessTable
from sensor.model.records import Namespaces
from sensor.outputs.base import Output
from sensor.outputs.stdout import StdoutOutput
from sensor.pipeline import Pipeline

if TYPE_CHECKING:
    from sensor.config.sections import DetectionConfig, OutputsConfig, ProbeConfig, ResolverConfig
    from sensor.config.settings import Config
    from sensor.probe.loader import ProbeOptions

log = logging.getLogger("container_sensor")


CGROUP_V2_CANDIDATES = (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup"))


# A replay's detector looks at no /proc: a directory that never exists, so every look finds nothing.
NO_PROC = "/nonexistent/container-sensor-replay"


def cgroup_v2_root() -> Path | None:
    for candidate in CGROUP_V2_CANDIDATES:
        if (candidate / "cgroup.procs").exists() and (candidate / "cgroup.controllers").exists():
            return candidate
    return None


def boot_wall_offset_ns() -> int:
    return time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)


def build_outputs(config: OutputsConfig) -> list[Output]:
    """Every configured output; the factory in sensor.outputs handles files and Elasticsearch."""
    from sensor.outputs.factory import build_outputs as factory

    specs = list(config.kinds)
    if specs == ["stdout"]:
        return [StdoutOutput(compact=config.format == "compact")]
    return factory(specs, config)


class DetectionUnavailable(RuntimeError):
    """The rule engine cannot be imported (a dependency missing from the installation). The sensor stops at
    start rather than run on without detection: a sensor that emits documents but can raise no alert looks
    healthy while it protects nothing."""


def build_detector(config: DetectionConfig, *, live: bool = True) -> Any:
    """live: looks at the executed files go through this host's /proc; a replay's processes are gone (and this
    host's pids are others), so it looks at none and recognises ssh by name and by known inode only."""
    try:
        from sensor.rules.detector import Detector
        from sensor.rules.loader import load_rules
    except ImportError as exc:
        raise DetectionUnavailable(f"detection cannot start: {exc} (a dependency is missing: run scripts/install.sh "
                                   "again, or pip install the sensor with its dependencies)") from exc
    rules: list[Any] = []
    for path in config.rules_paths:
        loaded, refused = load_rules(path)
        rules.extend(loaded)
        for refusal in refused:
            log.warning("rule refused: %s (%s): %s", refusal.name, refusal.path, refusal.reason)
    return Detector(rules, builtin_ssh=config.builtin, fold_window_s=config.fold_window,
                    proc_root="/proc" if live else NO_PROC, host_mnt_ns=host_namespaces().mnt if live else None)


def build_pod_index(config: ResolverConfig, node_name: str | None) -> Any:
    """This node's pods from the API server: only with kubernetes.api auto and a service account token mounted."""
    from sensor.containers.kubeapi import PodIndex, in_cluster

    if config.kubernetes_api == "off" or not in_cluster():
        return None
    node = node_name or os.uname().nodename
    log.info("kubernetes API: reading the pods of node %s for their labels and workload kinds", node)
    return PodIndex(node)


def build_resolver(host_ns: Namespaces, config: ResolverConfig | None, node_name: str | None = None) -> Any:
    """config: the live resolver's section; None for a replay."""
    from sensor.containers.metadata import StateRoots
    from sensor.containers.resolver import ContainerResolver

    if config is not None:
        # runtime_state_root: the host's / as mounted in a DaemonSet (/host), so that only /run and /var/lib are
        # mounted, not each runtime's directory (which the kubelet would create on nodes without that runtime).
        state_root = config.runtime_state_root
        roots = StateRoots.under(state_root) if state_root != Path("/") else None
        return ContainerResolver(host_ns=host_ns, cgroup_root=cgroup_v2_root(), state_roots=roots,
                                 pods=build_pod_index(config, node_name))
    # A replay knows cgroups only from the recording: nothing is read from this host's cgroupfs or /proc, which
    # may not be the recorded host's. Runtime state (names, images) is still looked up where it exists.
    nowhere = Path("/nonexistent/container-sensor-replay")
    return ContainerResolver(host_ns=host_ns, cgroup_root=nowhere, proc_root=nowhere)


def build_leaders() -> Callable:
    from sensor.model.sessions import SessionModel

    return SessionModel()


def build_keep(sections: Any) -> Any:
    """Which documents reach the outputs; raises FilterError (a configuration error) for a bad `filter.where`."""
    if not sections.filter.active:
        return None  # nothing to import or call: every document goes out
    try:
        from sensor.rules.noise import build_filter
    except ImportError as exc:
        raise DetectionUnavailable(f"filters cannot start: {exc} (a dependency is missing: run scripts/install.sh "
                                   "again, or pip install the sensor with its dependencies)") from exc
    return build_filter(sections.filter)


def build_pipeline(config: Config, outputs: list[Output], *, live: bool,
                   meta: dict[str, Any] | None = None) -> Pipeline:
    """meta: a recording's metadata, so a replay reproduces the recorded boot id and timestamps."""
    meta = meta or {}
    sections = config.sections
    facts = host_facts.gather(hostname=sections.host.node_name or meta.get("hostname"))
    if meta.get("boot_id"):
        facts = replace(facts, boot_id=meta["boot_id"])
    table = ProcessTable(facts.boot_id or "unknown-boot")
    builder = DocumentBuilder(facts, boot_wall_offset_ns=meta.get("boot_wall_offset_ns") or boot_wall_offset_ns(),
                              cluster_name=sections.host.cluster_name)
    accounts = None
    if live:
        from sensor.containers.accounts import ContainerAccounts

        resolver = build_resolver(host_namespaces(), sections.resolver, sections.host.node_name)
        accounts = ContainerAccounts()
    elif meta.get("host_ns"):
        resolver = build_resolver(Namespaces(*meta["host_ns"]), None)
    else:
        resolver = None
    return Pipeline(table=table, builder=builder, outputs=outputs, resolver=resolver, keep=build_keep(sections),
                    detector=build_detector(sections.detection, live=live), leaders=build_leaders(),
                    emit_already_running=sections.events.already_running, emit_fork=sections.probe.fork,
                    accounts=accounts,
                    alert_metadata_wait_s=sections.detection.alert_metadata_wait if live else 0.0,
                    measure_latency=live)


def probe_options(config: ProbeConfig) -> ProbeOptions:
    from sensor.probe.loader import ProbeOptions

    return ProbeOptions(ringbuf_pages=max(1, config.ringbuf_size // 4096), args_max=config.argv_max_bytes,
                        ring_reader=config.ring_reader, cred_events=config.cred_changes,
                        net_events=config.network, env_vars=config.env_vars, fork_events=config.fork,
                        module_events=config.modules)
