"""What reaches the outputs: --where, --alerts-only, container and namespace allow/deny lists. Alerts always go
out; host documents are untouched by the container lists."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sensor.config.sections import FilterConfig
from sensor.config.settings import load_config
from sensor.rules.noise import FilterError, build_filter

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests/fixtures/golden"


def doc(kind: str = "event", container: dict | None = None, namespace: str | None = None, name: str = "sh") -> dict:
    out: dict = {"event": {"kind": kind, "category": ["process"], "type": ["start"], "action": "exec"},
                 "process": {"name": name}}
    if container is not None:
        out["container"] = container
    if namespace is not None:
        out["orchestrator"] = {"namespace": namespace}
    return out


def filter_config(**given) -> FilterConfig:
    """The filter section with what a test gives and nothing else (sections have no defaults of their own)."""
    empty = {"where": None, "alerts_only": False, "containers_allow": (), "containers_deny": (),
             "namespaces_allow": (), "namespaces_deny": ()}
    return FilterConfig(**{**empty, **given})


WEB = {"id": "a" * 64, "name": "web-1", "image": {"name": "docker.io/library/nginx"}}
CI = {"id": "b" * 64, "name": "ci-runner-7", "image": {"name": "ghcr.io/acme/runner"}}


def test_no_filter_keeps_everything_at_no_cost() -> None:
    assert build_filter(filter_config()) is None


def test_alerts_only_and_alerts_always_out() -> None:
    keep = build_filter(filter_config(alerts_only=True, containers_deny=("web-*",), where="process.name == \"x\""))
    assert not keep(doc())
    assert keep(doc("alert", WEB))  # a denied container's alert still goes out


def test_container_lists_match_name_image_or_id() -> None:
    deny = build_filter(filter_config(containers_deny=("ci-runner-*", "docker.io/library/*")))
    assert not deny(doc(container=CI)) and not deny(doc(container=WEB))
    assert deny(doc())  # the host is not a container
    allow = build_filter(filter_config(containers_allow=("b" * 64,)))
    assert allow(doc(container=CI)) and not allow(doc(container=WEB)) and allow(doc())


def test_namespace_lists() -> None:
    keep = build_filter(filter_config(namespaces_allow=("shop", "pay*"), namespaces_deny=("payments-dev",)))
    assert keep(doc(container=WEB, namespace="shop")) and keep(doc(container=WEB, namespace="payments"))
    assert not keep(doc(container=WEB, namespace="payments-dev"))
    assert not keep(doc(container=WEB, namespace="kube-system"))
    assert keep(doc(container=WEB))  # no namespace: not a Kubernetes container


def test_where_takes_a_condition_or_a_query() -> None:
    in_containers = build_filter(filter_config(where="container.id != null"))
    assert in_containers(doc(container=WEB)) and not in_containers(doc())
    by_query = build_filter(filter_config(where='process where process.name : "SSH*"'))
    assert by_query(doc(name="sshd")) and not by_query(doc(name="bash"))


@pytest.mark.parametrize("bad", ['process.name ==', 'sequence [process where true] [process where true]'])
def test_a_bad_where_is_refused(bad: str) -> None:
    with pytest.raises(FilterError, match="filter.where"):
        build_filter(filter_config(where=bad))


def test_lists_from_the_environment_and_the_file(tmp_path: Path) -> None:
    file = tmp_path / "config.yaml"
    file.write_text("filter:\n  deny_containers: [ci-*, 'build-*']\n  alerts_only: true\n")
    config = load_config(file, {"CONTAINER_SENSOR_FILTER_ALLOW_NAMESPACES": "shop, pay"}, {})
    assert config.sections.filter.containers_deny == ("ci-*", "build-*")
    assert config.sections.filter.namespaces_allow == ("shop", "pay")
    assert config.sections.filter.alerts_only is True


def test_replay_with_filters_counts_what_it_left_out() -> None:
    base = [sys.executable, "-m", "sensor", "replay", str(GOLDEN / "workload.rec")]
    every = subprocess.run(base, capture_output=True, text=True, cwd=REPO, timeout=120)
    only = subprocess.run([*base, "--alerts-only"], capture_output=True, text=True, cwd=REPO, timeout=120)
    where = subprocess.run([*base, "--where", 'process.name == "ssh"'], capture_output=True, text=True, cwd=REPO,
                           timeout=120)
    all_docs = [json.loads(line) for line in every.stdout.splitlines()]
    alerts = [d for d in all_docs if d["event"]["kind"] == "alert"]
    # alerts are stamped when made: compared by their ids
    assert [json.loads(line)["event"]["id"] for line in only.stdout.splitlines()] == [a["event"]["id"] for a in alerts]
    assert f"{len(all_docs) - len(alerts)} left out by filters" in only.stderr
    kept = [json.loads(line) for line in where.stdout.splitlines()]
    assert kept and all(d["process"]["name"] == "ssh" or d["event"]["kind"] == "alert" for d in kept)
    bad = subprocess.run([*base, "--where", "process.name =="], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert bad.returncode == 2 and "filter.where" in bad.stderr and "Traceback" not in bad.stderr
