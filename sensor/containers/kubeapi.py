"""This node's pods as the Kubernetes API server knows them: their labels and the kind of workload that owns
each, for the runtimes that keep neither on disk (containerd keeps pod labels only in its database).

Optional (`kubernetes.api`): used when the sensor runs in a pod with a service account token mounted (the
`packaging/kubernetes-api-metadata` overlay grants it get/list/watch on pods, nothing else). A thread of its own
lists the pods bound to this node (`fieldSelector=spec.nodeName=NODE`) and then watches them, relisting when the
watch expires or its resource version is too old (410 Gone), backing off 1 s to 60 s while the API server cannot be
reached; the event loop only reads the index. The token is read again at every request (bound tokens rotate).
Bounded: at most MAX_PODS pods (a node runs at most a few hundred), each at most MAX_LABELS labels.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .metadata import workload_kind

log = logging.getLogger(__name__)

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
MAX_PODS = 4096
MAX_LABELS = 64
MAX_LIST_BYTES = 64 * 1024 * 1024
WATCH_SECONDS = 300
BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True, slots=True)
class PodFacts:
    name: str
    namespace: str
    labels: tuple[tuple[str, str], ...]
    workload_kind: str | None


def in_cluster(service_account: Path = SERVICE_ACCOUNT) -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and (service_account / "token").is_file()


def pod_facts(pod: dict[str, Any]) -> tuple[str, PodFacts] | None:
    """(uid, facts) of a Pod object, or None when it is not one."""
    meta = pod.get("metadata") if isinstance(pod, dict) else None
    if not isinstance(meta, dict) or not isinstance(meta.get("uid"), str):
        return None
    raw = meta.get("labels") if isinstance(meta.get("labels"), dict) else {}
    labels = tuple(sorted((str(k), str(v)) for k, v in raw.items() if isinstance(v, str)))[:MAX_LABELS]
    kind = workload_kind(dict(labels))
    if kind is None:
        owners = [o for o in meta.get("ownerReferences") or [] if isinstance(o, dict) and o.get("controller")]
        kind = str(owners[0].get("kind")) if owners and owners[0].get("kind") else None
    return meta["uid"], PodFacts(str(meta.get("name") or ""), str(meta.get("namespace") or ""), labels, kind)


class PodIndex:
    def __init__(self, node_name: str, *, server: str | None = None, service_account: Path = SERVICE_ACCOUNT,
                 start: bool = True) -> None:
        host = os.environ.get("KUBERNETES_SERVICE_HOST", "")
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        self.server = server or f"https://{'[' + host + ']' if ':' in host else host}:{port}"
        self.node_name = node_name
        self._token_path = service_account / "token"
        self._ca_path = service_account / "ca.crt"
        self._pods: dict[str, PodFacts] = {}  # written by the thread, read by the event loop (one dict operation)
        self._closed = False
        self._connection: http.client.HTTPConnection | None = None
        self.counts = {"pod_lists": 0, "pod_watch_events": 0, "pod_api_errors": 0, "pods_refused": 0}
        self._thread = threading.Thread(target=self._run, name="kubernetes-pods", daemon=True) if start else None
        if self._thread is not None:
            self._thread.start()

    def get(self, uid: str | None) -> PodFacts | None:
        return self._pods.get(uid.replace("_", "-")) if uid else None

    @property
    def size(self) -> int:
        return len(self._pods)

    def close(self) -> None:
        self._closed = True
        connection = self._connection
        if connection is not None:
            connection.close()  # ends a watch blocked in a read

    # -- the API server ---------------------------------------------------------------------------------------

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        parts = urllib.parse.urlsplit(self.server)
        if parts.scheme == "https":
            context = ssl.create_default_context(cafile=str(self._ca_path) if self._ca_path.is_file() else None)
            return http.client.HTTPSConnection(parts.hostname or "", parts.port or 443, timeout=timeout,
                                               context=context)
        return http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=timeout)

    def _get(self, query: dict[str, str], timeout: float) -> http.client.HTTPResponse:
        connection = self._connect(timeout)
        self._connection = connection
        headers = {"Accept": "application/json"}
        try:
            token = self._token_path.read_text().strip()
        except OSError:
            token = ""
        if token:
            headers["Authorization"] = f"Bearer {token}"
        connection.request("GET", "/api/v1/pods?" + urllib.parse.urlencode(query), headers=headers)
        response = connection.getresponse()
        if response.status != 200:
            body = response.read(4096).decode(errors="replace")
            raise _ApiError(response.status, body)
        return response

    def _list(self) -> str:
        response = self._get({"fieldSelector": f"spec.nodeName={self.node_name}"}, timeout=30)
        data = response.read(MAX_LIST_BYTES + 1)
        if len(data) > MAX_LIST_BYTES:
            raise _ApiError(0, f"pod list larger than {MAX_LIST_BYTES} bytes")
        listing = json.loads(data)
        pods: dict[str, PodFacts] = {}
        for item in listing.get("items") or []:
            found = pod_facts(item)
            if found is not None and len(pods) < MAX_PODS:
                pods[found[0]] = found[1]
        self._pods = pods
        self.counts["pod_lists"] += 1
        return str((listing.get("metadata") or {}).get("resourceVersion") or "")

    def _watch(self, version: str) -> str:
        """Applies watch events until the watch ends; returns the last resource version ("" to relist)."""
        response = self._get({"fieldSelector": f"spec.nodeName={self.node_name}", "watch": "1",
                              "resourceVersion": version, "timeoutSeconds": str(WATCH_SECONDS),
                              "allowWatchBookmarks": "true"}, timeout=WATCH_SECONDS + 30)
        while not self._closed:
            line = response.readline(MAX_LIST_BYTES)
            if not line:
                return version
            event = json.loads(line)
            kind, obj = event.get("type"), event.get("object") or {}
            if kind == "ERROR":
                return ""  # 410 Gone and the like: list again
            version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
            if kind == "BOOKMARK":
                continue
            found = pod_facts(obj)
            if found is None:
                continue
            self.counts["pod_watch_events"] += 1
            if kind == "DELETED":
                self._pods.pop(found[0], None)
            elif found[0] in self._pods or len(self._pods) < MAX_PODS:
                self._pods[found[0]] = found[1]
            else:
                self.counts["pods_refused"] += 1
        return version

    def _run(self) -> None:
        failures = 0
        version = ""
        while not self._closed:
            try:
                if not version:
                    version = self._list()
                version = self._watch(version)
                if failures:
                    log.info("kubernetes API %s: pods of node %s read again", self.server, self.node_name)
                failures = 0
            except Exception as exc:  # any failure: counted, said once, retried with backoff
                if self._closed:
                    return
                self.counts["pod_api_errors"] += 1
                if failures == 0:
                    log.warning("kubernetes API %s: cannot read the pods of node %s (%s); pod labels and workload "
                                "kinds come from the runtimes' state alone until it answers (counted in "
                                "container_sensor_resolver_pod_api_errors)", self.server, self.node_name, exc)
                time.sleep(BACKOFF[min(failures, len(BACKOFF) - 1)])
                failures += 1
                version = ""


class _ApiError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:200]}" if status else body)
        self.status = status
