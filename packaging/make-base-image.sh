#!/bin/sh
# Makes the Containerfile's base image (docker.io/library/debian:bookworm) locally from a debootstrapped root
# filesystem, for machines that reach Debian's mirrors but no image registry. The root filesystem tarball is
# cached, so a later run (or CI on the same machine) only re-imports it, or does nothing when podman already
# holds the image.
#
# Usage: packaging/make-base-image.sh [IMAGE_NAME]
# Environment: BASE_IMAGE_CACHE (default /var/cache/container-sensor), DEBIAN_MIRROR.
set -eu

image="${1:-docker.io/library/debian:bookworm}"
cache="${BASE_IMAGE_CACHE:-/var/cache/container-sensor}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
tarball="$cache/debian-bookworm-minbase.tar"

if podman image exists "$image"; then
    echo "base image $image already present"
    exit 0
fi

mkdir -p "$cache"
if [ ! -s "$tarball" ]; then
    rootfs="$(mktemp -d "$cache/rootfs.XXXXXX")"
    trap 'rm -rf "$rootfs"' EXIT
    debootstrap --variant=minbase bookworm "$rootfs" "$mirror"
    # The same apt sources a stock debian:bookworm image has, so apt inside a build finds security updates too.
    cat > "$rootfs/etc/apt/sources.list" <<SOURCES
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
SOURCES
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" --numeric-owner -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
fi

podman import --change 'CMD ["/bin/bash"]' "$tarball" "$image"
echo "imported $tarball as $image"
