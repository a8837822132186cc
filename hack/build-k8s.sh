#!/usr/bin/env bash
# Builds the pinned Kubernetes control plane (kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl) and helm from source through the Go module proxy, and installs
# etcd from Debian when it is missing. Binaries are cached outside the clone, keyed by
# version, so only the first run on a machine pays for the build:
#
#   $KUBETUNE_CACHE/k8s-<version>/bin/{kube-apiserver,kube-controller-manager,kube-scheduler,kubectl,etcd}
#   $KUBETUNE_CACHE/helm-<version>/bin/helm
#
# Usage: hack/build-k8s.sh [k8s|helm|all]   (default: all). Prints nothing else on stdout
# but the bin directories, so callers can capture them.
set -euo pipefail

K8S_VERSION="${KUBETUNE_K8S_VERSION:-v1.35.4}"
HELM_VERSION="${KUBETUNE_HELM_VERSION:-v3.22.0}"
CACHE="${KUBETUNE_CACHE:-$HOME/.cache/kubetune}"
WHAT="${1:-all}"
K8S_DIR="$CACHE/k8s-$K8S_VERSION"
HELM_DIR="$CACHE/helm-$HELM_VERSION"
K8S_CMDS=(kube-apiserver kube-controller-manager kube-scheduler kubectl)

# The Go toolchain may be installed but not on a non-login PATH.
command -v go >/dev/null 2>&1 || export PATH="$PATH:/usr/local/go/bin"

export GOFLAGS="${GOFLAGS:-} -trimpath -buildvcs=false"
export CGO_ENABLED=0

log() { echo "build-k8s: $*" >&2; }

have_k8s() {
  local c
  for c in "${K8S_CMDS[@]}" etcd; do [[ -x "$K8S_DIR/bin/$c" ]] || return 1; done
}

ensure_etcd() {
  if ! command -v etcd >/dev/null 2>&1 && [[ ! -x /usr/bin/etcd ]]; then
    log "installing etcd-server from Debian"
    if [[ $(id -u) -ne 0 ]]; then log "etcd missing and not root: apt-get install etcd-server"; exit 1; fi
    # No init system here: keep the package's service from being started.
    local made_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
      printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
      made_policy=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q etcd-server >&2 \
      || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q etcd-server >&2; }
    if (( made_policy )); then rm -f /usr/sbin/policy-rc.d; fi
  fi
  ln -sf "$(command -v etcd || echo /usr/bin/etcd)" "$K8S_DIR/bin/etcd"
}

need_go() {
  command -v go >/dev/null 2>&1 || { log "the Go toolchain (go) is needed to build $1"; exit 1; }
}

build_k8s() {
  mkdir -p "$K8S_DIR/bin"
  if have_k8s; then echo "$K8S_DIR/bin"; return; fi
  local missing=0 c
  for c in "${K8S_CMDS[@]}"; do [[ -x "$K8S_DIR/bin/$c" ]] || missing=1; done
  if (( missing )); then
    need_go "Kubernetes"
    local minor="${K8S_VERSION#v1.}" src
    local staging="v0.$minor"  # v1.35.4 -> v0.35.4
    src="$(mktemp -d "$CACHE/k8s-build.XXXXXX")"
    trap 'rm -rf "$src"' RETURN
    log "building Kubernetes $K8S_VERSION (staging modules $staging) in $src; this takes a while"
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
      for c in "${K8S_CMDS[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
      for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ldf+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=${minor%%.*}"
        ldf+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
      done
      GOFLAGS="$GOFLAGS -mod=mod" go build -ldflags="$ldf" -o "$src/out/" "${pkgs[@]}" >&2
    )
    for c in "${K8S_CMDS[@]}"; do mv -f "$src/out/$c" "$K8S_DIR/bin/$c"; done
    log "built $K8S_DIR/bin"
  fi
  ensure_etcd
  echo "$K8S_DIR/bin"
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
  helm) build_helm ;;
  all) build_k8s; build_helm ;;
  *) echo "usage: $0 [k8s|helm|all]" >&2; exit 2 ;;
esac
