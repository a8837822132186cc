#!/usr/bin/env bash
# Builds the GitOps clients the health tests run, through the Go module proxy, once per
# machine: kubetune-health (kstatus from sigs.k8s.io/cli-utils and from Flux's fork
# github.com/fluxcd/cli-utils, and Argo CD's Lua runtime gopher-lua; hack/gitops-tools/) and
# kubeconform. Versions are pinned in hack/gitops-tools/go.mod and go.sum. It also keeps the
# prometheus-operator's ServiceMonitor CRD (from that project's Go module, the only place
# this machine can read it) so that kubeconform can check the chart's ServiceMonitor.
# Everything is cached outside the clone, keyed by the hash of those files and this script:
#
#   $KUBETUNE_CACHE/gitops-tools-<hash>/bin/{kubetune-health,kubeconform}
#   $KUBETUNE_CACHE/gitops-tools-<hash>/crds/monitoring.coreos.com_servicemonitors.yaml
#
# Usage: hack/build-gitops-tools.sh   Prints nothing on stdout but the bin directory.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SRC="$HERE/gitops-tools"
CACHE="${KUBETUNE_CACHE:-$HOME/.cache/kubetune}"
command -v go >/dev/null 2>&1 || export PATH="$PATH:/usr/local/go/bin"

PROMETHEUS_OPERATOR=github.com/prometheus-operator/prometheus-operator@v0.85.0
SERVICEMONITOR_CRD=example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml

KEY="$(cd "$SRC" && cat "$HERE/build-gitops-tools.sh" go.mod go.sum $(find . -name '*.go' | LC_ALL=C sort) \
  | sha256sum | cut -c1-16)"
DIR="$CACHE/gitops-tools-$KEY"
TOOLS=(kubetune-health kubeconform)

have() {
  local t
  for t in "${TOOLS[@]}"; do [[ -x "$DIR/bin/$t" ]] || return 1; done
  [[ -f "$DIR/crds/$(basename "$SERVICEMONITOR_CRD")" ]]
}

mkdir -p "$CACHE"
if ! have; then
  # One build at a time per cache (parallel pytest workers may all ask for the tools).
  exec 9>"$CACHE/.build-gitops-tools.lock"
  flock 9
  if ! have; then
    command -v go >/dev/null 2>&1 || { echo "build-gitops-tools: Go is needed" >&2; exit 1; }
    echo "build-gitops-tools: building ${TOOLS[*]} into $DIR" >&2
    rm -rf "$DIR.tmp"
    (
      cd "$SRC"
      CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -mod=readonly -trimpath -buildvcs=false" \
        go build -ldflags="-s -w" -o "$DIR.tmp/bin/" \
        ./kubetune-health github.com/yannh/kubeconform/cmd/kubeconform >&2
      mod="$(go mod download -json "$PROMETHEUS_OPERATOR" | sed -n 's/.*"Dir": "\(.*\)",/\1/p')"
      mkdir -p "$DIR.tmp/crds" && cp "$mod/$SERVICEMONITOR_CRD" "$DIR.tmp/crds/"
    )
    rm -rf "$DIR" && mv "$DIR.tmp" "$DIR"
  fi
fi
echo "$DIR/bin"
