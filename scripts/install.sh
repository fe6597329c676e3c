#!/usr/bin/env bash
# Sets up a Debian 12 machine to run the sensor: apt packages, a kernel header tree for BCC's own includes,
# and a venv at .venv that sees Debian's bcc module. Idempotent: a second run changes nothing.
#   sudo scripts/install.sh               # what the sensor needs
#   sudo scripts/install.sh --test        # also what the test suite needs (container runtimes, test tools)
set -euo pipefail

cd "$(dirname "$0")/.."
want_test=0
for arg in "$@"; do
  case "$arg" in
    --test) want_test=1 ;;
    *) echo "install.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done

if [ "$(id -u)" -ne 0 ]; then
  echo "install.sh: run as root (sudo scripts/install.sh)" >&2
  exit 1
fi

arch="$(dpkg --print-architecture)"  # amd64 or arm64: the fallback header tree must be this machine's
packages=(python3 python3-venv python3-pip python3-bpfcc libbpf1 "linux-headers-$arch" ca-certificates)
if [ "$want_test" = 1 ]; then
  packages+=(podman runc crun containerd uidmap lxc lxc-templates systemd-container busybox-static
             openssh-client openssh-server autossh dropbear-bin debootstrap iproute2 util-linux procps
             docker.io  # test_runtimes.py: dockerd started by the tests (cgroupfs driver)
             gcc libc6-dev  # test_exec_paths.py's static execveat helper; test_probe_layout.py
             stress-ng  # scripts/bench_soak.py --contend
             libcap2-bin openssl coreutils)  # test_elastic_rules_e2e.py: setcap, openssl passwd, base32
fi

missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "install.sh: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# BCC wants /lib/modules/$(uname -r)/build. Without the running kernel's headers any recent tree serves:
# the probe reads kernel structs only at offsets taken from the running kernel's BTF.
release="$(uname -r)"
build="/lib/modules/$release/build"
if [ ! -e "$build/include" ] && [ ! -e "$build/Makefile" ]; then
  fallback="$(ls -d /usr/src/linux-headers-*-"$arch" 2>/dev/null | sort -V | tail -n 1 || true)"
  if [ -z "$fallback" ]; then
    echo "install.sh: no kernel header tree found under /usr/src" >&2
    exit 1
  fi
  common="${fallback%-"$arch"}-common"
  mkdir -p "/lib/modules/$release"
  ln -sfn "$fallback" "$build"
  [ -d "$common" ] && ln -sfn "$common" "/lib/modules/$release/source"
  echo "install.sh: linked $build -> $fallback (fallback headers; offsets come from BTF)" >&2
fi

if ! mountpoint -q /sys/kernel/tracing 2>/dev/null && [ ! -d /sys/kernel/tracing/events ]; then
  mount -t tracefs nodev /sys/kernel/tracing || echo "install.sh: could not mount tracefs; the sensor will retry" >&2
fi

# Debian's bcc module is installed for /usr/bin/python3 only: the venv must be made from it and see its packages.
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import bcc' 2>/dev/null; then
  rm -rf .venv
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
extras=""
[ "$want_test" = 1 ] && extras="[test]"
.venv/bin/pip install -q --disable-pip-version-check -e ".$extras" 2>&1 | grep -v -E '^(WARNING: Location|\s*$)' >&2 || true
.venv/bin/python -c 'import sensor, bcc' || { echo "install.sh: the venv cannot import sensor and bcc" >&2; exit 1; }
echo "install.sh: ready; start with: sudo .venv/bin/container-sensor run" >&2
