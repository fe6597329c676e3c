"""The option table: every option's dotted key, parser, help text and whether it is a secret, and the names an
option goes by (`elasticsearch.url` in the file, `CONTAINER_SENSOR_ELASTICSEARCH_URL` in the environment,
`elasticsearch_url` as a field of `Config`). Also how a value may be shown: secrets masked, URL credentials cut out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sensor.config.credentials import mask_url
from sensor.config.parsing import (
    choice,
    parse_address,
    parse_bool,
    parse_duration,
    parse_env_names,
    parse_fingerprint,
    parse_int,
    parse_outputs,
    parse_path,
    parse_paths,
    parse_size,
    parse_str,
    parse_strs,
)

ENV_PREFIX = "CONTAINER_SENSOR_"
SECRET_MASK = "********"

FORMATS = ("ndjson", "compact")
LOG_FORMATS = ("json", "text")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
RING_READERS = ("auto", "mmap", "libbpf")
SPOOL_POLICIES = ("drop-oldest", "drop-newest")



@dataclass(frozen=True)
class Option:
    key: str
    parse: Callable[[Any], Any]
    help: str
    secret: bool = False

    @property
    def field_name(self) -> str:
        return self.key.replace(".", "_")

    @property
    def env_name(self) -> str:
        return ENV_PREFIX + self.field_name.upper()


OPTIONS: tuple[Option, ...] = (
    Option("outputs", parse_outputs, "where documents go: stdout, file[:PATH], elasticsearch[:URL] (list)"),
    Option("format", choice(FORMATS), "stdout encoding: ndjson (JSON per line) or compact (one short line)"),
    Option("ready_file", parse_path, "file written once the probes are attached and outputs are up"),
    Option("rules.paths", parse_paths, "Elastic detection-rule files or directories to load (list)"),
    Option("rules.builtin", parse_bool, "load the built-in ssh/sshd/autossh-in-container rule"),
    Option("fold_window", parse_duration, "window within which identical alerts fold into one with a count"),
    Option("alert_metadata_wait", parse_duration,
           "longest an alert waits for its container's name, image and pod not yet read (0: never)"),
    Option("metrics.address", parse_address, "HOST:PORT of /metrics and /healthz; off disables"),
    Option("log.format", choice(LOG_FORMATS), "json or text log lines on stderr"),
    Option("log.level", choice(LOG_LEVELS), "debug, info, warning, error or critical"),
    Option("node_name", parse_str, "name of this node (the DaemonSet passes spec.nodeName)"),
    Option("kubernetes.cluster_name", parse_str, "orchestrator.cluster.name written with Kubernetes containers"),
    Option("kubernetes.api", choice(("auto", "off")),
           "pod labels and workload kinds from the API server: auto (when a service account token is mounted) or off"),
    Option("file.path", parse_path, "file the file output writes (rotated)"),
    Option("file.max_bytes", parse_size, "size at which the file output rotates"),
    Option("file.backups", parse_int, "rotated files kept"),
    Option("spool.dir", parse_path, "directory of the Elasticsearch outage spool"),
    Option("spool.limit", parse_size, "most bytes the spool may hold"),
    Option("spool.policy", choice(SPOOL_POLICIES), "when the spool is full: drop-oldest or drop-newest"),
    Option("elasticsearch.url", parse_str, "Elasticsearch URL, e.g. https://es.example:9200"),
    Option("elasticsearch.api_key", parse_str, "API key (base64 id:key) for Elasticsearch", secret=True),
    Option("elasticsearch.username", parse_str, "basic-auth user for Elasticsearch"),
    Option("elasticsearch.password", parse_str, "basic-auth password for Elasticsearch", secret=True),
    Option("elasticsearch.ca_cert", parse_path, "PEM file of the CA that signed Elasticsearch's certificate"),
    Option("elasticsearch.verify_tls", parse_bool, "verify Elasticsearch's TLS certificate"),
    Option("elasticsearch.ca_fingerprint", parse_fingerprint,
           "SHA-256 fingerprint of the CA (or server) certificate to pin, instead of ca_cert"),
    Option("elasticsearch.index", parse_str, "data stream for events (default logs-endpoint.events.process-default)"),
    Option("elasticsearch.alerts_index", parse_str,
           "data stream for alerts (default logs-container_sensor.alerts-default)"),
    Option("elasticsearch.timeout", parse_duration, "request timeout for Elasticsearch"),
    Option("probe.ringbuf_size", parse_size, "BPF ring buffer size (power of two, at least 4096)"),
    Option("probe.argv_max_bytes", parse_size, "argv bytes captured per exec (power of two, 512-16384)"),
    Option("priority_boost", parse_int,
           "how many nice levels above normal the sensor runs (as auditd's priority_boost; 0 keeps it normal)"),
    Option("probe.ring_reader", choice(RING_READERS),
           "how records are read: libbpf (auto) or mmap (x86 only; lost records under contention)"),
    Option("events.cred_changes", parse_bool,
           "uid_change, gid_change and session_id_change documents from set*id and setsid calls"),
    Option("events.already_running", parse_bool, "an already_running document per process running at start-up"),
    Option("events.env_vars", parse_env_names,
           "environment variables kept in process.env_vars at each exec (list; empty: none read)"),
    Option("events.fork", parse_bool, "a fork document per new process, for Kibana's Session View (volume: off)"),
    Option("events.modules", parse_bool, "load_module documents for kernel module loads, where the kernel has modules"),
    Option("events.network", parse_bool,
           "connection_attempted and connection_accepted documents for TCP connects and accepts"),
    Option("stall_timeout", parse_duration,
           "/livez fails and systemd watchdog pings stop once the pipeline has not advanced this long; 0 never"),
    Option("drain_timeout", parse_duration,
           "most time SIGTERM/SIGINT spends draining the ring buffer and outputs before exiting"),
    Option("filter.where", parse_str,
           "EQL condition a document must meet to be written (alerts always are), e.g. 'container.id != null'"),
    Option("filter.alerts_only", parse_bool, "write alerts only (detection still sees every document)"),
    Option("filter.allow_containers", parse_strs,
           "write only the documents of containers whose name, image or id matches one of these globs (list)"),
    Option("filter.deny_containers", parse_strs,
           "never write the documents of containers whose name, image or id matches one of these globs (list)"),
    Option("filter.allow_namespaces", parse_strs,
           "write only the documents of these Kubernetes namespaces (globs, list); others' containers and the "
           "host pass"),
    Option("filter.deny_namespaces", parse_strs, "never write the documents of these Kubernetes namespaces (list)"),
    Option("runtime_state_root", parse_path,
           "where the host's / is seen for the runtimes' state (/run/containerd, ...); a DaemonSet mounts /host"),
)
OPTIONS_BY_KEY = {option.key: option for option in OPTIONS}
OPTIONS_BY_FIELD = {option.field_name: option for option in OPTIONS}
OPTIONS_BY_ENV = {option.env_name: option for option in OPTIONS}


def shown_value(field_name: str, value: Any) -> Any:
    """A field's value as it may be printed: secrets masked, credentials cut out of the URL."""
    option = OPTIONS_BY_FIELD.get(field_name)
    if value is not None and option is not None and option.secret:
        return SECRET_MASK
    if field_name == "elasticsearch_url" and value:
        return mask_url(value)
    return value
