#!/bin/sh
# Entry point of the container-sensor image: makes the host's kernel headers visible to BCC when the host has
# them, then runs `container-sensor` with the container's arguments (default: `run`).
#
# The DaemonSet mounts the host's /lib/modules and /usr/src under /host (not over the image's own paths, which
# would hide the image's fallback header tree and make /lib/modules read-only). A host build link such as
# /lib/modules/6.1.0-28-amd64/build -> /usr/src/linux-headers-6.1.0-28-amd64 is re-pointed into /host here.
# When the host has no headers for the running kernel nothing is linked, and the sensor falls back to the
# headers shipped in the image.
set -eu

# Overridable so that tests can run this script against a made-up host tree.
host_root="${SENSOR_HOST_ROOT:-/host}"
modules_root="${SENSOR_MODULES_ROOT:-/lib/modules}"
sensor="${SENSOR_BIN:-/opt/container-sensor/venv/bin/container-sensor}"

release="$(uname -r)"
host_modules="$host_root/lib/modules/$release"
modules="$modules_root/$release"

host_path() {
    # Maps a path on the host (absolute, or relative to the host's module directory) to where it is mounted here.
    case "$1" in
        /*) echo "$host_root$1" ;;
        *) echo "$host_modules/$1" ;;
    esac
}

if [ ! -e "$modules/build" ] && [ -e "$host_modules" ]; then
    for name in build source; do
        link="$host_modules/$name"
        [ -L "$link" ] || [ -d "$link" ] || continue
        if [ -L "$link" ]; then
            target="$(host_path "$(readlink "$link")")"
        else
            target="$link"
        fi
        if [ -d "$target" ]; then
            mkdir -p "$modules"
            ln -sfn "$target" "$modules/$name"
            echo "container-sensor-entrypoint: using the host's kernel headers $target for $release" >&2
        fi
    done
fi

exec "$sensor" "$@"
