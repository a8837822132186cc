#!/usr/bin/env bash
# Builds the operator image (operator/Dockerfile) and the trainer image
# (trainer-image/Dockerfile) on this machine, as a user's CI would build them, except that
# no registry is reachable here, so their two base images are made locally:
#
#   kubetune.local/python:3.11-bookworm-<key>  Debian bookworm from `debootstrap --variant=minbase`
#                                             with Debian's python3 (3.11) and CA certificates,
#                                             in place of python:3.11-slim-bookworm
#   kubetune.local/uv:<version>               the uv binary the Makefile already uses, in place
#                                             of ghcr.io/astral-sh/uv:<version>
#
# The builder is Debian's docker.io (the classic builder) on a private socket in the cache,
# with its data (images and layer cache) in $KUBETUNE_CACHE/docker, started for the build
# and stopped afterwards; it changes no iptables rule or bridge (`--network host` builds).
# Docker's layer cache makes a rerun rebuild only what changed: the dependency layers are
# keyed by the requirements each image resolves from requirements.lock.
#
# With KUBETUNE_IMPORT_ADDRESS=<containerd socket> (the local cluster's real node sets it),
# each image whose ID changed since the last import is also handed to that containerd:
# `docker save | ctr -n k8s.io images import -`, sending only the layers containerd lacks
# (hack/import-image.py); KUBETUNE_IMPORT_STATE is where the IDs of the imported images are
# remembered.
#
# Usage: hack/build-images.sh   Prints the two image references on stdout, nothing else.
set -euo pipefail
shopt -s inherit_errexit

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${KUBETUNE_CACHE:-$HOME/.cache/kubetune}"
APP_VERSION="$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$ROOT/charts/kubetune/Chart.yaml")"
OPERATOR_IMAGE="${KUBETUNE_OPERATOR_IMAGE:-ghcr.io/kubetune/operator:$APP_VERSION}"
TRAINER_IMAGE="${KUBETUNE_TRAINER_IMAGE:-ghcr.io/kubetune/trainer:$APP_VERSION}"
# The uv the Dockerfiles name by default is the one the Makefile pins (a unit test checks).
UV_VERSION="$(sed -n 's#^ARG UV_IMAGE=.*/uv:\(.*\)$#\1#p' "$ROOT/trainer-image/Dockerfile")"
SUITE=bookworm
MIRROR="${KUBETUNE_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
BASE_PACKAGES=python3,ca-certificates
DOCKER=/usr/bin/docker  # Debian's CLI (20.10, classic builder), not a newer one on PATH
SOCK_DIR="$CACHE/docker-run"  # the socket: the daemon's /run is private
SOCK="$SOCK_DIR/docker.sock"
CGROUP_PARENT=kubetune-docker

log() { echo "build-images: $*" >&2; }
t0=$SECONDS
elapsed() { echo "$((SECONDS - t0))s"; }

if [[ $(id -u) -ne 0 ]]; then log "building images needs root (dockerd, debootstrap)"; exit 1; fi

ensure_packages() {
  local missing=() p
  for p in docker.io debootstrap containerd; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  (( ${#missing[@]} )) || return 0
  log "installing Debian packages: ${missing[*]} (about 30 s)"
  local made_policy=0 rc=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then  # keep apt from starting the docker service
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    made_policy=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 \
    || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive \
         apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; } || rc=$?
  if (( made_policy )); then rm -f /usr/sbin/policy-rc.d; fi
  return $rc
}

docker() { DOCKER_BUILDKIT=0 DOCKER_CONFIG="$CACHE/docker-cli" "$DOCKER" -H "unix://$SOCK" "$@"; }

DOCKERD_PID=""
start_dockerd() {
  mkdir -p "$SOCK_DIR" "$CACHE/docker"
  # A private mount namespace with its own /run: the build containers' mounts, the shims'
  # sockets and runc's state never show on the host and go with the daemon; what dockerd
  # and its containerd would create in /etc/docker and /opt/containerd lands there too.
  unshare --mount --propagation slave -- sh -c '
    mount -t tmpfs -o mode=0755 kubetune-docker-run /run &&
    mkdir -p /run/kubetune-docker/etc-docker /run/kubetune-docker/opt &&
    mount --bind /run/kubetune-docker/etc-docker /etc/docker &&
    mount --bind /run/kubetune-docker/opt /opt &&
    echo "{}" > /run/kubetune-docker/daemon.json &&
    exec "$@"' sh \
    dockerd --host "unix://$SOCK" --config-file /run/kubetune-docker/daemon.json \
    --data-root "$CACHE/docker" --exec-root /run/kubetune-docker/exec \
    --pidfile /run/kubetune-docker/dockerd.pid \
    --bridge=none --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false \
    --userland-proxy=false --storage-driver=overlay2 --log-level=warn \
    --exec-opt native.cgroupdriver=cgroupfs --cgroup-parent="$CGROUP_PARENT" \
    >"$SOCK_DIR/dockerd.log" 2>&1 &
  DOCKERD_PID=$!
  local i
  for i in $(seq 1 120); do
    docker version >/dev/null 2>&1 && return 0
    kill -0 "$DOCKERD_PID" 2>/dev/null || break
    sleep 0.5
  done
  log "dockerd did not start:"; tail -20 "$SOCK_DIR/dockerd.log" >&2
  return 1
}

stop_dockerd() {
  if [[ -n "$DOCKERD_PID" ]] && kill -0 "$DOCKERD_PID" 2>/dev/null; then
    kill -TERM "$DOCKERD_PID"
    local i
    for i in $(seq 1 60); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$DOCKERD_PID" 2>/dev/null || true
    wait "$DOCKERD_PID" 2>/dev/null || true
  fi
  # Leave the machine as found: the cgroups the builds ran in.
  local d
  for d in /sys/fs/cgroup/*/"$CGROUP_PARENT" /sys/fs/cgroup/"$CGROUP_PARENT"; do
    [[ -d "$d" ]] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
  rm -f "$SOCK"
}

# The stand-in for python:3.11-slim-bookworm. Keyed by what goes into it, including this
# machine's CA bundle: where TLS is intercepted by a proxy (as here), builds need its CA.
base_image() {
  local ca key ref tarball
  ca="$(sha256sum /etc/ssl/certs/ca-certificates.crt | cut -c1-12)"
  key="$(echo "$SUITE $MIRROR $BASE_PACKAGES $ca v1" | sha256sum | cut -c1-12)"
  ref="kubetune.local/python:3.11-$SUITE-$key"
  if ! docker image inspect "$ref" >/dev/null 2>&1; then
    tarball="$CACHE/bases/python-3.11-$SUITE-$key.tar"
    if [[ ! -s "$tarball" ]]; then
      mkdir -p "$CACHE/bases"
      local rootfs
      rootfs="$(mktemp -d "$CACHE/bases/rootfs.XXXXXX")"
      log "making the base image $ref: debootstrap --variant=minbase $SUITE + $BASE_PACKAGES (about 2 min)"
      debootstrap --variant=minbase --include="$BASE_PACKAGES" "$SUITE" "$rootfs" "$MIRROR" \
        >"$CACHE/bases/debootstrap.log" 2>&1 \
        || { tail -20 "$CACHE/bases/debootstrap.log" >&2; rm -rf "$rootfs"; return 1; }
      if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
        cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
        chroot "$rootfs" update-ca-certificates >/dev/null 2>&1
      fi
      rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/var/log/* \
        "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
      tar --numeric-owner -C "$rootfs" -cf "$tarball.tmp" .
      mv "$tarball.tmp" "$tarball"
      rm -rf "$rootfs"
    fi
    docker import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'CMD ["python3"]' "$tarball" "$ref" >/dev/null
  fi
  echo "$ref"
}

# The stand-in for ghcr.io/astral-sh/uv:<version>: /uv and /uvx, as that image has them.
uv_image() {
  local ref="kubetune.local/uv:$UV_VERSION" dir="$CACHE/uv-$UV_VERSION"
  if ! docker image inspect "$ref" >/dev/null 2>&1; then
    if [[ ! -x "$dir/bin/uv" ]]; then
      python3 -m venv "$dir" && "$dir/bin/pip" install -q "uv==$UV_VERSION" >&2
    fi
    tar --numeric-owner --owner=0 --group=0 -C "$dir/bin" -cf - uv uvx \
      | docker import - "$ref" >/dev/null
  fi
  echo "$ref"
}

build() {
  local name=$1 dockerfile=$2 ref=$3 base=$4 uv=$5 s=$SECONDS
  log "building the $name image $ref from $dockerfile ($(elapsed) so far; a cold trainer build downloads ~3.5 GB of wheels and takes 5-15 min, a warm one seconds)"
  docker build --network host -q -f "$ROOT/$dockerfile" \
    --build-arg "BASE_IMAGE=$base" --build-arg "UV_IMAGE=$uv" -t "$ref" "$ROOT" >/dev/null \
    || { log "docker build of $dockerfile failed (rerun without -q: DOCKER_BUILDKIT=0 docker -H unix://$SOCK build ...)"; return 1; }
  log "$ref built in $((SECONDS - s))s: $(docker image inspect -f '{{.Size}}' "$ref" | awk '{printf "%.2f GB", $1/1e9}')"
}

import_image() {
  local ref=$1 id marker
  id="$(docker image inspect -f '{{.Id}}' "$ref")"
  marker="$KUBETUNE_IMPORT_STATE/$(echo "$ref" | tr '/:' '__').id"
  if [[ "$(cat "$marker" 2>/dev/null)" == "$id" ]] \
     && ctr -a "$KUBETUNE_IMPORT_ADDRESS" -n k8s.io images ls -q "name==$ref" | grep -q .; then
    return 0
  fi
  local s=$SECONDS have
  mkdir -p "$KUBETUNE_IMPORT_STATE"
  have="$KUBETUNE_IMPORT_STATE/content.txt"
  ctr -a "$KUBETUNE_IMPORT_ADDRESS" -n k8s.io content ls > "$have"
  log "handing $ref to the node's containerd (only its new layers; all of them, about 1 min per GB, the first time)"
  if ! docker save "$ref" | python3 "$ROOT/hack/import-image.py" --ref "$ref" --have "$have" \
       | ctr -a "$KUBETUNE_IMPORT_ADDRESS" -n k8s.io images import - >/dev/null; then
    docker save "$ref" | ctr -a "$KUBETUNE_IMPORT_ADDRESS" -n k8s.io images import - >/dev/null
  fi
  echo "$id" > "$marker"
  log "imported $ref in $((SECONDS - s))s"
}

mkdir -p "$CACHE"
# One build at a time per machine (dockerd's socket is fixed; the cache is shared).
exec 9>"$CACHE/.build-images.lock"
flock 9
ensure_packages
trap stop_dockerd EXIT
stop_dockerd  # a daemon left by a killed earlier run
start_dockerd
base="$(base_image)"
uv="$(uv_image)"
build operator operator/Dockerfile "$OPERATOR_IMAGE" "$base" "$uv"
build trainer trainer-image/Dockerfile "$TRAINER_IMAGE" "$base" "$uv"
if [[ -n "${KUBETUNE_IMPORT_ADDRESS:-}" ]]; then
  : "${KUBETUNE_IMPORT_STATE:?KUBETUNE_IMPORT_STATE must be set with KUBETUNE_IMPORT_ADDRESS}"
  import_image "$OPERATOR_IMAGE"
  import_image "$TRAINER_IMAGE"
fi
log "images ready in $(elapsed)"
echo "$OPERATOR_IMAGE"
echo "$TRAINER_IMAGE"
