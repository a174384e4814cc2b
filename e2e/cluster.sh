#!/usr/bin/env bash
# A real Kubernetes control plane on loopback: etcd + kube-apiserver, no controller-manager.
#   e2e/cluster.sh up                 start (prints the env file to source)
#   e2e/cluster.sh env                print `export KUBECONFIG=...` and friends
#   e2e/cluster.sh restart-apiserver  stop and start kube-apiserver (etcd and its data kept)
#   e2e/cluster.sh down               stop both (waits until they exited) and remove their data
# State lives in $E2E_DIR (default e2e/.cluster). Admin access is a static token in
# system:masters; ServiceAccount tokens are signed with a key pair generated here, so
# `kubectl create token SA --audience portcullis` and TokenReview work.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=${E2E_DIR:-$here/.cluster}
log() { echo "[cluster] $*" >&2; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

wait_exit() { # pid
  for _ in $(seq 1 100); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$1" 2>/dev/null || true
}

start_apiserver() {
  # shellcheck disable=SC1091
  source "$dir/env"
  "$BIN/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$API_PORT" \
    --cert-dir="$dir/certs" \
    --token-auth-file="$dir/tokens.csv" \
    --authorization-mode=RBAC \
    --service-account-issuer=https://kubernetes.default.svc \
    --service-account-key-file="$dir/sa.pub" \
    --service-account-signing-key-file="$dir/sa.key" \
    --service-cluster-ip-range=10.96.0.0/16 \
    --disable-admission-plugins=ServiceAccount \
    > "$dir/apiserver.log" 2>&1 &
  echo $! > "$dir/apiserver.pid"
  for _ in $(seq 1 300); do
    if "$BIN/kubectl" --kubeconfig "$dir/kubeconfig" get --raw /readyz >/dev/null 2>&1; then
      log "kube-apiserver ready on https://127.0.0.1:$API_PORT"
      return 0
    fi
    kill -0 "$(cat "$dir/apiserver.pid")" 2>/dev/null || { tail -20 "$dir/apiserver.log" >&2; log "kube-apiserver exited"; return 1; }
    sleep 0.2
  done
  tail -20 "$dir/apiserver.log" >&2
  log "kube-apiserver not ready in 60s"
  return 1
}

stop_pidfile() {
  local f=$1
  [ -f "$f" ] || return 0
  local pid; pid=$(cat "$f")
  kill "$pid" 2>/dev/null || true
  wait_exit "$pid"
  rm -f "$f"
}

case "${1:-}" in
  up)
    [ -f "$dir/env" ] && "$0" down
    BIN=$("$here/install-control-plane.sh")
    mkdir -p "$dir/certs" "$dir/etcd"
    ETCD_PORT=$(free_port); PEER_PORT=$(free_port); API_PORT=$(free_port)
    openssl genrsa -out "$dir/sa.key" 2048 2>/dev/null
    openssl rsa -in "$dir/sa.key" -pubout -out "$dir/sa.pub" 2>/dev/null
    ADMIN_TOKEN=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
    echo "$ADMIN_TOKEN,admin,admin,system:masters" > "$dir/tokens.csv"
    cat > "$dir/kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster:
    server: https://127.0.0.1:$API_PORT
    insecure-skip-tls-verify: true
users:
- name: admin
  user:
    token: $ADMIN_TOKEN
contexts:
- name: e2e
  context: {cluster: e2e, user: admin, namespace: default}
current-context: e2e
KC
    cat > "$dir/env" <<ENV
export BIN=$BIN
export KUBECONFIG=$dir/kubeconfig
export KUBECTL=$BIN/kubectl
export ETCD_PORT=$ETCD_PORT
export API_PORT=$API_PORT
export E2E_DIR=$dir
ENV
    "$BIN/etcd" --name e2e --data-dir "$dir/etcd" \
      --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
      --listen-peer-urls "http://127.0.0.1:$PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$PEER_PORT" \
      --initial-cluster "e2e=http://127.0.0.1:$PEER_PORT" > "$dir/etcd.log" 2>&1 &
    echo $! > "$dir/etcd.pid"
    log "etcd on 127.0.0.1:$ETCD_PORT"
    start_apiserver
    echo "$dir/env"
    ;;
  restart-apiserver)
    stop_pidfile "$dir/apiserver.pid"
    log "kube-apiserver stopped"
    start_apiserver
    ;;
  env)
    cat "$dir/env"
    ;;
  down)
    stop_pidfile "$dir/apiserver.pid"
    stop_pidfile "$dir/etcd.pid"
    rm -rf "$dir"
    log "stopped and removed"
    ;;
  *)
    echo "usage: $0 up|env|restart-apiserver|down" >&2
    exit 2
    ;;
esac
