#!/usr/bin/env bash
# Provides kube-apiserver, etcd and kubectl the way envtest users expect:
#   - KUBEBUILDER_ASSETS pointing at a directory holding all three: use those;
#   - otherwise build them once, with the machine's Go, from the Go module proxy, into
#     ~/.cache/portcullis-e2e/<version>/bin (kept between runs).
# WITH_HELM=1 also builds helm (v3) and helm4 there, for charts/test.sh.
# Prints the directory on stdout; progress goes to stderr.
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.34.2}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
HELM_VERSION=${HELM_VERSION:-v3.19.0}
HELM4_VERSION=${HELM4_VERSION:-v4.3.2}

log() { echo "[control-plane] $*" >&2; }

if [ -n "${KUBEBUILDER_ASSETS:-}" ] && [ -x "$KUBEBUILDER_ASSETS/kube-apiserver" ] && [ -x "$KUBEBUILDER_ASSETS/etcd" ] && [ -x "$KUBEBUILDER_ASSETS/kubectl" ]; then
  log "using KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS"
  echo "$KUBEBUILDER_ASSETS"
  exit 0
fi

cache=${PORTCULLIS_E2E_CACHE:-$HOME/.cache/portcullis-e2e}/$K8S_VERSION-etcd$ETCD_VERSION
bin=$cache/bin
mkdir -p "$bin"
command -v go >/dev/null || { log "Go is required to build the control plane"; exit 1; }
export GOFLAGS=-mod=mod GOTOOLCHAIN=local
export GOMODCACHE=${GOMODCACHE:-$HOME/.cache/portcullis-e2e/gomod}
export GOCACHE=${GOCACHE:-$HOME/.cache/portcullis-e2e/gobuild}

if [ ! -x "$bin/kube-apiserver" ] || [ ! -x "$bin/kubectl" ]; then
  log "building kube-apiserver and kubectl $K8S_VERSION (cold: about 6 minutes on 2 cores)"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  cd "$work"
  minor=${K8S_VERSION#v1.}; staging="v0.${minor}"
  cat > go.mod <<MOD
module portcullis.dev/e2e-k8s

go 1.24
MOD
  kmod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  [ -f "$kmod" ] || { log "cannot read k8s.io/kubernetes@$K8S_VERSION go.mod"; exit 1; }
  # Every k8s.io/* module kubernetes replaces with ./staging/... gets the published staging version.
  grep -E '^\s*k8s\.io/[^ ]+ => \./staging/' "$kmod" | awk '{print $1}' | sort -u | while read -r m; do
    echo "replace $m => $m $staging" >> go.mod
  done
  log "resolving modules"
  go get "k8s.io/kubernetes/cmd/kube-apiserver@$K8S_VERSION" "k8s.io/kubernetes/cmd/kubectl@$K8S_VERSION" >&2
  ld="-X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${minor%%.*} -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION"
  log "compiling kube-apiserver"
  go build -ldflags "$ld" -o "$bin/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver >&2
  log "compiling kubectl"
  go build -ldflags "$ld" -o "$bin/kubectl" k8s.io/kubernetes/cmd/kubectl >&2
  cd / && rm -rf "$work"
  trap - EXIT
fi

if [ ! -x "$bin/etcd" ]; then
  log "building etcd $ETCD_VERSION (about 1 minute)"
  work=$(mktemp -d)
  cd "$work"
  printf 'module portcullis.dev/e2e-etcd\n\ngo 1.24\n' > go.mod
  go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >&2
  go build -o "$bin/etcd" go.etcd.io/etcd/server/v3 >&2
  cd / && rm -rf "$work"
fi

if [ "${WITH_HELM:-0}" = 1 ] && [ ! -x "$bin/helm" ]; then
  log "building helm $HELM_VERSION"
  GOBIN="$bin" go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >&2
fi
# Helm 4 too, as helm4, for the chart tests that render with both (about 3 minutes, once).
if [ "${WITH_HELM:-0}" = 1 ] && [ ! -x "$bin/helm4" ]; then
  log "building helm $HELM4_VERSION (as helm4)"
  work=$(mktemp -d)
  GOBIN="$work" go install "helm.sh/helm/v4/cmd/helm@$HELM4_VERSION" >&2
  mv "$work/helm" "$bin/helm4"
  rm -rf "$work"
fi

# Once every binary is built, the Go build and module caches (about 6 GB) are of no further
# use: remove them (only ours, never a GOCACHE/GOMODCACHE the caller chose) so that a
# machine which keeps ~/.cache between runs does not carry them.
if [ -x "$bin/kube-apiserver" ] && [ -x "$bin/kubectl" ] && [ -x "$bin/etcd" ] \
  && [ -x "$bin/helm" ] && [ -x "$bin/helm4" ]; then
  for d in "$HOME/.cache/portcullis-e2e/gobuild" "$HOME/.cache/portcullis-e2e/gomod"; do
    case "$d" in "$GOCACHE"|"$GOMODCACHE") ;; *) continue ;; esac
    if [ -d "$d" ]; then
      log "removing the Go cache $d (every binary is built)"
      chmod -R u+w "$d" 2>/dev/null || true
      rm -rf "$d"
    fi
  done
fi

log "control plane binaries in $bin"
echo "$bin"
