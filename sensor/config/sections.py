"""The stages' sections: what each stage is built from, typed and frozen, cut from one `Config`.

Every default lives once, in `Config`'s fields (settings.py); the sections have none, so a stage never falls back to
a value of its own. A stage imports its section from here and never needs the flat `Config`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

from sensor.config.options import shown_value

if TYPE_CHECKING:
    from sensor.config.settings import Config  # settings.py imports this module: Config.sections builds them


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeConfig:
    ringbuf_size: int  # bytes, a power of two of at least one page
    argv_max_bytes: int
    ring_reader: str
    cred_changes: bool  # compile in the set*id/setsid probes
    network: bool  # compile in the TCP connect/accept probes
    env_vars: tuple[str, ...]  # environment variables kept per exec; () reads no environment
    fork: bool  # send every fork record at once, and write each as a fork document
    modules: bool  # compile in the module load probe where the kernel has it


@dataclass(frozen=True, slots=True, kw_only=True)
class HostConfig:
    node_name: str | None  # None: the kernel's hostname
    cluster_name: str | None  # orchestrator.cluster.name; None: not written


@dataclass(frozen=True, slots=True, kw_only=True)
class ResolverConfig:
    runtime_state_root: Path
    kubernetes_api: str  # "auto": this node's pods from the API server when in a pod with a token; "off": never


@dataclass(frozen=True, slots=True, kw_only=True)
class EventsConfig:
    already_running: bool  # a document per process running at start-up


@dataclass(frozen=True, slots=True, kw_only=True)
class DetectionConfig:
    rules_paths: tuple[Path, ...]
    builtin: bool
    fold_window: float
    alert_metadata_wait: float  # seconds an alert waits for its container's runtime state (live only)


@dataclass(frozen=True, slots=True, kw_only=True)
class FileOutputConfig:
    path: Path | None
    max_bytes: int
    backups: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SpoolConfig:
    dir: Path
    limit: int
    policy: str  # one of options.SPOOL_POLICIES


@dataclass(frozen=True, slots=True, kw_only=True)
class ElasticsearchConfig:
    url: str | None
    api_key: str | None
    username: str | None
    password: str | None
    ca_cert: Path | None
    verify_tls: bool
    ca_fingerprint: str | None
    index: str | None
    alerts_index: str | None
    timeout: float
    spool: SpoolConfig

    def __repr__(self) -> str:
        # Masked as Config's repr is: the secrets and the URL's credentials never reach a log line.
        shown = (f"{f.name}={shown_value('elasticsearch_' + f.name, getattr(self, f.name))!r}" for f in fields(self))
        return f"ElasticsearchConfig({', '.join(shown)})"


@dataclass(frozen=True, slots=True, kw_only=True)
class OutputsConfig:
    kinds: tuple[str, ...]  # output kinds in order, without targets (load_config folds those into file/es)
    format: str  # stdout's encoding
    file: FileOutputConfig
    elasticsearch: ElasticsearchConfig


@dataclass(frozen=True, slots=True, kw_only=True)
class LogConfig:
    format: str
    level: str


@dataclass(frozen=True, slots=True, kw_only=True)
class OpsConfig:
    metrics_address: str | None  # None: no /metrics, /healthz and /livez server
    stall_timeout: float  # 0: never stalled
    drain_timeout: float
    ready_file: Path | None
    priority_boost: int
    log: LogConfig


@dataclass(frozen=True, slots=True, kw_only=True)
class FilterConfig:
    where: str | None  # EQL condition a written document meets; None: any
    alerts_only: bool
    containers_allow: tuple[str, ...]  # globs on container name, image name or id; (): any
    containers_deny: tuple[str, ...]
    namespaces_allow: tuple[str, ...]  # globs on orchestrator.namespace; (): any
    namespaces_deny: tuple[str, ...]

    @property
    def active(self) -> bool:
        """Whether any document can be left out (else nothing need be imported or called per document)."""
        return bool(self.where or self.alerts_only or self.containers_allow or self.containers_deny
                    or self.namespaces_allow or self.namespaces_deny)


@dataclass(frozen=True, slots=True, kw_only=True)
class Sections:
    probe: ProbeConfig
    host: HostConfig
    resolver: ResolverConfig
    events: EventsConfig
    detection: DetectionConfig
    outputs: OutputsConfig
    filter: FilterConfig
    ops: OpsConfig


def build_sections(config: Config) -> Sections:
    """Each option goes to exactly one section; tests/unit/test_config.py checks that none is left out."""
    return Sections(
        probe=ProbeConfig(ringbuf_size=config.probe_ringbuf_size, argv_max_bytes=config.probe_argv_max_bytes,
                          ring_reader=config.probe_ring_reader, cred_changes=config.events_cred_changes,
                          network=config.events_network, env_vars=config.events_env_vars,
                          fork=config.events_fork, modules=config.events_modules),
        host=HostConfig(node_name=config.node_name, cluster_name=config.kubernetes_cluster_name),
        resolver=ResolverConfig(runtime_state_root=config.runtime_state_root, kubernetes_api=config.kubernetes_api),
        events=EventsConfig(already_running=config.events_already_running),
        detection=DetectionConfig(rules_paths=config.rules_paths, builtin=config.rules_builtin,
                                  fold_window=config.fold_window,
                                  alert_metadata_wait=config.alert_metadata_wait),
        outputs=OutputsConfig(
            kinds=config.outputs,
            format=config.format,
            file=FileOutputConfig(path=config.file_path, max_bytes=config.file_max_bytes,
                                  backups=config.file_backups),
            elasticsearch=ElasticsearchConfig(
                url=config.elasticsearch_url, api_key=config.elasticsearch_api_key,
                username=config.elasticsearch_username, password=config.elasticsearch_password,
                ca_cert=config.elasticsearch_ca_cert, verify_tls=config.elasticsearch_verify_tls,
                ca_fingerprint=config.elasticsearch_ca_fingerprint, index=config.elasticsearch_index,
                alerts_index=config.elasticsearch_alerts_index, timeout=config.elasticsearch_timeout,
                spool=SpoolConfig(dir=config.spool_dir, limit=config.spool_limit, policy=config.spool_policy)),
        ),
        filter=FilterConfig(where=config.filter_where, alerts_only=config.filter_alerts_only,
                            containers_allow=config.filter_allow_containers,
                            containers_deny=config.filter_deny_containers,
                            namespaces_allow=config.filter_allow_namespaces,
                            namespaces_deny=config.filter_deny_namespaces),
        ops=OpsConfig(metrics_address=config.metrics_address, stall_timeout=config.stall_timeout,
                      drain_timeout=config.drain_timeout, ready_file=config.ready_file,
                      priority_boost=config.priority_boost,
                      log=LogConfig(format=config.log_format, level=config.log_level)),
    )
