#!/usr/bin/env bash
# Build a local Debian bookworm base image with Python 3.11, for machines that cannot reach a container registry
# (CI here). The kit's Dockerfile is then built on it: `make image BASE_IMAGE=distill-kit-base:bookworm`.
#
#   docker/make-base.sh [NAME] [MIRROR]      (root; needs debootstrap and a Docker engine; about a minute)
#
# The rootfs is made by debootstrap (minbase + python3, venv, pip) and imported with `docker import`. An image that
# already exists under NAME is kept (delete it to rebuild): the base changes only when Debian's bookworm does.
set -euo pipefail
name=${1:-distill-kit-base:bookworm}
mirror=${2:-${DEBIAN_MIRROR:-http://deb.debian.org/debian}}

if docker image inspect "$name" >/dev/null 2>&1; then
  echo "base image $name already present ($(docker image inspect -f '{{.Id}}' "$name")); delete it to rebuild"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "debootstrap is not installed (apt-get install debootstrap)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "debootstrap needs root" >&2; exit 2; }

root=$(mktemp -d /tmp/distill-kit-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "debootstrap bookworm into $root (mirror $mirror)"
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip bookworm "$root" "$mirror" \
  > "$root.log" 2>&1 || { tail -20 "$root.log" >&2; exit 1; }
rm -f "$root.log"
# Keep the image lean: package lists and caches are not needed to run.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* \
  "$root"/usr/share/man/* "$root"/usr/share/locale/*
created=$(date -u +%Y-%m-%dT%H:%M:%SZ)
tar --numeric-owner -C "$root" -c . | docker import \
  --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' \
  --message "debootstrap --variant=minbase bookworm (+python3, python3-venv, python3-pip), $created" \
  - "$name"
echo "base image $name: $(docker image inspect -f '{{.Id}} {{.Size}}' "$name") bytes"
