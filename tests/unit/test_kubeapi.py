"""This node's pods from the Kubernetes API server: list, then watch (added, modified, deleted, an expired
watch relisted), the service account token sent, failures counted and retried, and the resolver giving a
containerd container (no labels on disk) its pod's labels and workload kind. Against a local stand-in of the
API server's pod list and watch (no cluster can run here)."""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from sensor.containers import ContainerResolver, StateRoots
from sensor.containers.kubeapi import PodIndex, pod_facts
from sensor.model.records import Namespaces

UID = "0c5ec5a4-3a43-4f0c-9b8a-1bf2d3f9f0e1"
OTHER = "1d6fd6b5-4b54-4a1d-8c9b-2cf3e4a0a1f2"
CID = "c" * 64


def pod(uid: str, name: str, labels: dict, owner: str | None = None, version: str = "10") -> dict:
    meta: dict = {"uid": uid, "name": name, "namespace": "shop", "labels": labels, "resourceVersion": version}
    if owner:
        meta["ownerReferences"] = [{"kind": owner, "name": name.rsplit("-", 1)[0], "controller": True}]
    return {"kind": "Pod", "metadata": meta}


class FakeApi:
    """GET /api/v1/pods: the list, or with watch=1 the events queued (each watch ends when None is queued)."""

    def __init__(self) -> None:
        self.pods = [pod(UID, "web-7d4b9c8f6-x2x9k", {"app": "web", "pod-template-hash": "7d4b9c8f6"})]
        self.events: queue.Queue = queue.Queue()
        self.requests: list[tuple[str, dict, str]] = []
        self.status = 200
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                api.requests.append((url.path, query, self.headers.get("Authorization", "")))
                if api.status != 200:
                    self.send_response(api.status)
                    self.end_headers()
                    self.wfile.write(b'{"kind":"Status","code":403}')
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                if query.get("watch") != "1":
                    body = json.dumps({"kind": "PodList", "metadata": {"resourceVersion": "10"},
                                       "items": api.pods}).encode()
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                self.end_headers()
                while True:
                    event = api.events.get()
                    if event is None:
                        return
                    self.wfile.write(json.dumps(event).encode() + b"\n")
                    self.wfile.flush()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        for _ in range(8):
            self.events.put(None)
        self.server.shutdown()


@pytest.fixture
def api() -> Iterator[FakeApi]:
    running = FakeApi()
    yield running
    running.close()


@pytest.fixture
def account(tmp_path: Path) -> Path:
    (tmp_path / "token").write_text("tok-1\n")
    return tmp_path


def wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.01)


def test_facts_from_labels_then_from_the_controller() -> None:
    uid, facts = pod_facts(pod(UID, "web-7d4b9c8f6-x2x9k", {"pod-template-hash": "7d4b9c8f6"}, owner="ReplicaSet"))
    assert (uid, facts.workload_kind) == (UID, "Deployment")  # the labels say more than the ReplicaSet owner
    _, facts = pod_facts(pod(OTHER, "agent-1", {"app": "agent"}, owner="CronJobRunner"))
    assert facts.workload_kind == "CronJobRunner"
    assert pod_facts({"kind": "Status"}) is None


def test_list_then_watch_with_the_token_and_the_node(api: FakeApi, account: Path) -> None:
    index = PodIndex("node-1", server=api.url, service_account=account)
    try:
        wait_for(lambda: index.get(UID) is not None)
        assert index.get(UID).labels == (("app", "web"), ("pod-template-hash", "7d4b9c8f6"))
        path, query, auth = api.requests[0]
        assert path == "/api/v1/pods" and query["fieldSelector"] == "spec.nodeName=node-1" and auth == "Bearer tok-1"
        wait_for(lambda: len(api.requests) >= 2)
        assert api.requests[1][1]["watch"] == "1" and api.requests[1][1]["resourceVersion"] == "10"
        (account / "token").write_text("tok-2")  # rotated: the next request sends the new one
        api.events.put({"type": "ADDED", "object": pod(OTHER, "db-0", {"controller-revision-hash": "db-5b",
                                                                    "statefulset.kubernetes.io/pod-name": "db-0"},
                                                          version="11")})
        wait_for(lambda: index.get(OTHER) is not None)
        assert index.get(OTHER).workload_kind == "StatefulSet"
        api.events.put({"type": "DELETED", "object": pod(UID, "web-7d4b9c8f6-x2x9k", {}, version="12")})
        wait_for(lambda: index.get(UID) is None)
        api.events.put({"type": "ERROR", "object": {"kind": "Status", "code": 410}})  # too old: list again
        wait_for(lambda: index.counts["pod_lists"] == 2)
        assert api.requests[-1][2] == "Bearer tok-2"
        assert index.get(UID) is not None  # the list has it again
    finally:
        index.close()


def test_a_refusal_is_counted_and_retried(api: FakeApi, account: Path) -> None:
    api.status = 403
    index = PodIndex("node-1", server=api.url, service_account=account)
    try:
        wait_for(lambda: index.counts["pod_api_errors"] >= 1)
        api.status = 200
        wait_for(lambda: index.get(UID) is not None, timeout=10)
    finally:
        index.close()


def test_the_resolver_fills_in_what_containerd_keeps_off_disk(api: FakeApi, account: Path, tmp_path: Path) -> None:
    index = PodIndex("node-1", server=api.url, service_account=account)
    wait_for(lambda: index.get(UID) is not None)
    tree = tmp_path / "cgroup"
    path = tree / "kubepods/burstable" / f"pod{UID}" / CID
    path.mkdir(parents=True)
    resolver = ContainerResolver(host_ns=Namespaces(1, 2, 3, 4, 5, 6, 7), cgroup_root=tree,
                                 proc_root=tmp_path, state_roots=StateRoots.under(tmp_path / "host"),
                                 start_worker=False, retry_delays=(), pods=index)
    try:
        resolver.seed()
        info = resolver.resolve(os.stat(path).st_ino, Namespaces(11, 12, 13, 14, 15, 6, 7))
        assert info.id == CID and info.pod_uid == UID
        assert (info.pod_name, info.pod_namespace) == ("web-7d4b9c8f6-x2x9k", "shop")
        assert info.workload_kind == "Deployment" and ("app", "web") in info.pod_labels
        assert resolver.stats()["pods_known"] == 1
    finally:
        resolver.close()
