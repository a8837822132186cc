#!/usr/bin/env bash
# Builds the pinned Kubernetes control plane (kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl) and helm from source through the Go module proxy, and installs
# etcd from Debian when it is missing. `node` adds what the local cluster's real node runs:
# kubelet and kube-proxy (same build), the pause binary (`gcc -static` of the release's
# build/pause/linux/pause.c), CoreDNS and the fake-GPU device plugin (hack/nodeaddons), and
# Debian's containerd 1.6, runc, CNI plugins, iptables and conntrack. Binaries are cached
# outside the clone, keyed by version, so only the first run on a machine pays for the build:
#
#   $KUBETUNE_CACHE/k8s-<version>/bin/{kube-apiserver,kube-controller-manager,kube-scheduler,kubectl,etcd}
#   $KUBETUNE_CACHE/k8s-<version>/bin/{kubelet,kube-proxy,pause}
#   $KUBETUNE_CACHE/nodeaddons-<hash of hack/nodeaddons>/bin/{coredns,fakegpu}
#   $KUBETUNE_CACHE/helm-<version>/bin/helm
#
# Usage: hack/build-k8s.sh [k8s|node|helm|all]   (default: all but node). Prints nothing else
# on stdout but the bin directories, so callers can capture them.
set -euo pipefail

K8S_VERSION="${KUBETUNE_K8S_VERSION:-v1.35.4}"
HELM_VERSION="${KUBETUNE_HELM_VERSION:-v3.22.0}"
CACHE="${KUBETUNE_CACHE:-$HOME/.cache/kubetune}"
WHAT="${1:-all}"
K8S_DIR="$CACHE/k8s-$K8S_VERSION"
HELM_DIR="$CACHE/helm-$HELM_VERSION"
K8S_CMDS=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
NODE_CMDS=(kubelet kube-proxy)
# containerd 1.6 is the last line kubelet 1.35 accepts (CRI v1, cgroup v1): Debian bookworm's.
NODE_PACKAGES=(containerd runc containernetworking-plugins iptables conntrack iproute2 procps gcc libc6-dev)
ADDONS_SRC="$(cd "$(dirname "$0")" && pwd)/nodeaddons"

# The Go toolchain may be installed but not on a non-login PATH.
command -v go >/dev/null 2>&1 || export PATH="$PATH:/usr/local/go/bin"

export GOFLAGS="${GOFLAGS:-} -trimpath -buildvcs=false"
export CGO_ENABLED=0

log() { echo "build-k8s: $*" >&2; }

have_k8s() {
  local c
  for c in "${K8S_CMDS[@]}" etcd; do [[ -x "$K8S_DIR/bin/$c" ]] || return 1; done
}

# apt-get install without starting services (no init system here; the cluster starts its
# own daemons with private configs).
apt_install() {
  if [[ $(id -u) -ne 0 ]]; then log "missing Debian packages and not root: apt-get install $*"; exit 1; fi
  log "installing Debian packages: $*"
  local made_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    made_policy=1
  fi
  local rc=0
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >&2 \
    || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive \
         apt-get install -y -q --no-install-recommends "$@" >&2; } || rc=$?
  if (( made_policy )); then rm -f /usr/sbin/policy-rc.d; fi
  return $rc
}

missing_packages() {
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || echo "$p"
  done
}

ensure_etcd() {
  if ! command -v etcd >/dev/null 2>&1 && [[ ! -x /usr/bin/etcd ]]; then
    apt_install etcd-server
  fi
  ln -sf "$(command -v etcd || echo /usr/bin/etcd)" "$K8S_DIR/bin/etcd"
}

need_go() {
  command -v go >/dev/null 2>&1 || { log "the Go toolchain (go) is needed to build $1"; exit 1; }
}

# Builds the given commands of the release that are not cached yet, in one `go build` so
# they share compilation.
go_build_k8s() {
  mkdir -p "$K8S_DIR/bin"
  local missing=() c
  for c in "$@"; do [[ -x "$K8S_DIR/bin/$c" ]] || missing+=("$c"); done
  (( ${#missing[@]} )) || return 0
  need_go "Kubernetes"
  local minor="${K8S_VERSION#v1.}" src
  local staging="v0.$minor"  # v1.35.4 -> v0.35.4
  src="$(mktemp -d "$CACHE/k8s-build.XXXXXX")"
  trap 'rm -rf "$src"; trap - RETURN' RETURN
  log "building Kubernetes $K8S_VERSION ${missing[*]} (staging modules $staging) in $src; on 2 cores about 4 min for the control plane, 1-2 min more for the node"
  local gomod
  gomod="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')"
  {
    echo "module kubetune.local/k8sbuild"
    echo
    echo "go $(sed -n 's/^go //p' "$gomod")"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    echo "replace ("
    # Every staging module the release replaces with ./staging/... gets its published tag.
    sed -n 's#^\s*\(k8s.io/[^ ]*\) => ./staging/.*#\t\1 => \1 '"$staging"'#p' "$gomod"
    echo ")"
  } > "$src/go.mod"
  (
    cd "$src"
    GOFLAGS="$GOFLAGS -mod=mod" go get "k8s.io/kubernetes@$K8S_VERSION" >&2
    local pkgs=() ldf="-s -w" p
    for c in "${missing[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
    for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      ldf+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=${minor%%.*}"
      ldf+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
    done
    GOFLAGS="$GOFLAGS -mod=mod" go build -ldflags="$ldf" -o "$src/out/" "${pkgs[@]}" >&2
  )
  for c in "${missing[@]}"; do mv -f "$src/out/$c" "$K8S_DIR/bin/$c"; done
  log "built ${missing[*]} in $K8S_DIR/bin"
}

build_k8s() {
  mkdir -p "$K8S_DIR/bin"
  if ! have_k8s; then
    go_build_k8s "${K8S_CMDS[@]}"
    ensure_etcd
  fi
  echo "$K8S_DIR/bin"
}

# The sandbox ("pause") container's binary, as the release builds it (build/pause/Makefile:
# `$(CC) -Os -Wall -Werror -static -DVERSION=...`), from the release module's own source.
build_pause() {
  [[ -x "$K8S_DIR/bin/pause" ]] && return 0
  need_go "pause (to fetch the Kubernetes module)"
  local dir tag
  dir="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"Dir": "\(.*\)",/\1/p')"
  tag="$(sed -n 's/^TAG ?= //p' "$dir/build/pause/Makefile")"
  log "building pause $tag (gcc -static)"
  gcc -Os -Wall -Werror -static -DVERSION="v$tag-kubetune" -o "$K8S_DIR/bin/pause.tmp" \
    "$dir/build/pause/linux/pause.c" >&2
  mv -f "$K8S_DIR/bin/pause.tmp" "$K8S_DIR/bin/pause"
  echo "$tag" > "$K8S_DIR/pause-version"
}

# CoreDNS (only the plugins cluster DNS needs) and the fake-GPU device plugin, from the pinned
# Go module in hack/nodeaddons; cached by a hash of its sources.
build_addons() {
  local hash dir
  hash="$(cat "$ADDONS_SRC/go.mod" "$ADDONS_SRC/go.sum" "$ADDONS_SRC"/*/*.go | sha256sum | cut -c1-12)"
  dir="$CACHE/nodeaddons-$hash"
  if [[ ! -x "$dir/bin/coredns" || ! -x "$dir/bin/fakegpu" ]]; then
    need_go "CoreDNS"
    log "building CoreDNS and the fake-GPU device plugin (hack/nodeaddons) into $dir (about 2 min)"
    (cd "$ADDONS_SRC" && go build -ldflags="-s -w" -o "$dir/bin.tmp/" ./coredns ./fakegpu >&2)
    rm -rf "$dir/bin" && mv "$dir/bin.tmp" "$dir/bin"
  fi
  echo "$dir/bin"
}

build_node() {
  local missing
  missing="$(missing_packages "${NODE_PACKAGES[@]}")"
  # shellcheck disable=SC2086
  [[ -z "$missing" ]] || apt_install $missing
  go_build_k8s "${NODE_CMDS[@]}"
  build_pause
  echo "$K8S_DIR/bin"
  build_addons
}

build_helm() {
  if [[ ! -x "$HELM_DIR/bin/helm" ]]; then
    need_go "helm"
    log "building helm $HELM_VERSION"
    mkdir -p "$HELM_DIR"
    local hv=helm.sh/helm/v3/internal/version
    GOBIN="$HELM_DIR/bin.tmp" go install \
      -ldflags="-s -w -X $hv.version=$HELM_VERSION -X $hv.gitTreeState=clean" \
      "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >&2
    mkdir -p "$HELM_DIR/bin" && mv -f "$HELM_DIR/bin.tmp/helm" "$HELM_DIR/bin/helm"
    rmdir "$HELM_DIR/bin.tmp" 2>/dev/null || true
  fi
  echo "$HELM_DIR/bin"
}

mkdir -p "$CACHE"
# One build at a time per cache (parallel pytest workers may all ask for the binaries).
exec 9>"$CACHE/.build-k8s.lock"
flock 9
case "$WHAT" in
  k8s) build_k8s ;;
  node) build_node ;;
  helm) build_helm ;;
  all) build_k8s; build_helm ;;
  *) echo "usage: $0 [k8s|node|helm|all]" >&2; exit 2 ;;
esac
