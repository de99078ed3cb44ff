#!/usr/bin/env bash
# The local control plane (SPEC §6): etcd, kube-apiserver and kube-controller-manager of the
# release devtools/scripts/build-control-plane.sh builds, plus the node simulator, all on loopback
# on free ports, with data and logs under target/local-cluster/ (logs/audit.log: who wrote what).
#   cluster.sh up     start it (does nothing when it is already up)
#   cluster.sh down   stop what `up` started (by pid) and remove its data
#   cluster.sh status say whether it is up
# For fault tests (tests/relists.rs, `just e2e-faults`, on a cluster of their own):
#   cluster.sh stop-apiserver          stop kube-apiserver (etcd and the rest keep running)
#   cluster.sh start-apiserver         start it again with the same flags on the same port
#   cluster.sh start-second-apiserver  a second kube-apiserver on the same etcd, on another port,
#                                      with its kubeconfig in kubeconfig-second (writes that the
#                                      clients of the first cannot watch while it is stopped)
#   cluster.sh stop-second-apiserver   stop it
#   cluster.sh stop-etcd / start-etcd  stop etcd, start it again on the same ports and data (the
#                                      API servers keep running and reconnect)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# Service account tokens live at most 24 h (--service-account-max-token-expiration, as managed
# clusters often cap them): tests/plugin_services.rs checks that the token route's expires_in
# is the lifetime the API server issued, not the one asked for.
# LOCAL_CLUSTER_DIR runs a second, separate cluster (e.g. for a developer next to `just demo`).
DIR="${LOCAL_CLUSTER_DIR:-$ROOT/target/local-cluster}"
PIDS="$DIR/pids"
KUBECONFIG_OUT="$DIR/kubeconfig"
SIM_BIN="${NODE_SIM_BIN:-$ROOT/target/debug/node-sim}"

log() { printf '[cluster] %s\n' "$*" >&2; }
fail() { log "FAILED: $*"; exit 1; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

alive() { [ -f "$PIDS/$1" ] && kill -0 "$(cat "$PIDS/$1")" 2>/dev/null; }

is_up() {
  alive etcd && alive kube-apiserver && alive kube-controller-manager && alive node-sim &&
    [ -f "$KUBECONFIG_OUT" ] && "$BIN/kubectl" --kubeconfig "$KUBECONFIG_OUT" --request-timeout=5s get --raw /readyz >/dev/null 2>&1
}

# Starts a process in the background with its log file, remembering its pid.
start() {
  local name=$1; shift
  "$@" >"$DIR/logs/$name.log" 2>&1 &
  echo $! >"$PIDS/$name"
}

wait_for() {
  local what=$1 name=$2 deadline=$(( $(date +%s) + $3 )); shift 3
  until "$@" >/dev/null 2>&1; do
    alive "$name" || { tail -n 20 "$DIR/logs/$name.log" >&2; fail "$name exited while waiting for $what; log: $DIR/logs/$name.log"; }
    [ "$(date +%s)" -lt "$deadline" ] || fail "timed out waiting for $what; log: $DIR/logs/$name.log"
    sleep 0.5
  done
}

make_pki() {
  local pki=$DIR/pki
  mkdir -p "$pki"
  [ -f "$pki/sa.key" ] && return
  (
    cd "$pki"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -keyout ca.key -out ca.crt \
      -subj "/CN=plugin-operator-local-ca" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
    cat >serving.ext <<'EXT'
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:10.96.0.1
EXT
    openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr -subj "/CN=kube-apiserver"
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile serving.ext -out apiserver.crt
    openssl genrsa -out sa.key 2048
    openssl rsa -in sa.key -pubout -out sa.pub
  ) >"$DIR/logs/pki.log" 2>&1 || fail "making certificates; log: $DIR/logs/pki.log"
}

# Every write, with its user and user agent (Metadata: never a body, so no Secret's data); reads
# and the API server's own health checks are left out to keep the log small.
write_audit_policy() {
  cat >"$DIR/audit-policy.yaml" <<'EOF'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  verbs: [create, update, patch, delete, deletecollection]
- level: None
EOF
}

write_kubeconfig() {
  local server=$1 token=$2 out=$3
  local ca
  ca=$(base64 -w0 <"$DIR/pki/ca.crt")
  cat >"$out" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: $server
    certificate-authority-data: $ca
users:
- name: admin
  user:
    token: $token
contexts:
- name: local
  context:
    cluster: local
    user: admin
current-context: local
EOF
  chmod 600 "$out"
}

# Starts a kube-apiserver (pid file and log named $1) on etcd port $2 and port $3 and waits until
# it answers /readyz through the kubeconfig $4. Every one shares the certificates and tokens.
start_apiserver() {
  local name=$1 etcd_port=$2 api_port=$3 kubeconfig=$4 suffix=""
  [ "$name" = kube-apiserver ] || suffix="-${name#kube-apiserver-}"
  log "starting $name on 127.0.0.1:$api_port"
  start "$name" "$BIN/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" \
    --tls-cert-file "$DIR/pki/apiserver.crt" --tls-private-key-file "$DIR/pki/apiserver.key" \
    --client-ca-file "$DIR/pki/ca.crt" --token-auth-file "$DIR/pki/tokens.csv" \
    --authorization-mode RBAC \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-signing-key-file "$DIR/pki/sa.key" --service-account-key-file "$DIR/pki/sa.pub" \
    --service-account-max-token-expiration 24h \
    --api-audiences https://kubernetes.default.svc.cluster.local \
    --service-cluster-ip-range 10.96.0.0/16 --allow-privileged=true --profiling=false \
    --endpoint-reconciler-type none \
    --audit-policy-file "$DIR/audit-policy.yaml" --audit-log-path "$DIR/logs/audit$suffix.log" \
    --audit-log-maxsize 200 --audit-log-maxbackup 2 \
    --cert-dir "$DIR/pki/apiserver$suffix-certs"
  wait_for "$name /readyz" "$name" 90 \
    "$BIN/kubectl" --kubeconfig "$kubeconfig" --request-timeout=5s get --raw /readyz
}

# Starts etcd on client port $1 and peer port $2 with the cluster's data (kept across restarts).
start_etcd() {
  local etcd_port=$1 etcd_peer=$2
  log "starting etcd on 127.0.0.1:$etcd_port"
  start etcd "$BIN/etcd" --name local --data-dir "$DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-cluster "local=http://127.0.0.1:$etcd_peer" --listen-metrics-urls "" \
    --quota-backend-bytes 4294967296 --unsafe-no-fsync
  wait_for "etcd health" etcd 30 curl -fsS "http://127.0.0.1:$etcd_port/health"
}

# Stops the process of pid file $1 (TERM, then KILL after 5 s) and forgets it.
stop() {
  local name=$1 pid
  [ -f "$PIDS/$name" ] || return 0
  pid=$(cat "$PIDS/$name")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$PIDS/$name"
}

# The ports `up` chose.
ports() {
  [ -f "$DIR/ports" ] || fail "no cluster in $DIR (run up first)"
  # shellcheck source=/dev/null
  . "$DIR/ports"
}

up() {
  BIN=$("$ROOT/devtools/scripts/build-control-plane.sh")
  if is_up; then log "already up; KUBECONFIG=$KUBECONFIG_OUT"; return; fi
  down quiet
  mkdir -p "$DIR/logs" "$PIDS" "$DIR/bin"
  # A kubectl of the server's own version, for scripts and for users of the local cluster.
  ln -sf "$BIN/kubectl" "$DIR/bin/kubectl"
  [ -x "$SIM_BIN" ] || (cd "$ROOT" && cargo build -q -p devtools --bin node-sim) || fail "building the node simulator"
  make_pki
  write_audit_policy

  local etcd_port etcd_peer api_port token
  etcd_port=$(free_port); etcd_peer=$(free_port); api_port=$(free_port)
  token=$(head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 32)
  printf '%s,admin,admin,system:masters\n' "$token" >"$DIR/pki/tokens.csv"
  chmod 600 "$DIR/pki/tokens.csv"

  start_etcd "$etcd_port" "$etcd_peer"

  printf 'ETCD_PORT=%s\nETCD_PEER_PORT=%s\nAPI_PORT=%s\n' "$etcd_port" "$etcd_peer" "$api_port" >"$DIR/ports"
  write_kubeconfig "https://127.0.0.1:$api_port" "$token" "$KUBECONFIG_OUT"
  start_apiserver kube-apiserver "$etcd_port" "$api_port" "$KUBECONFIG_OUT"

  log "starting kube-controller-manager"
  start kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig "$KUBECONFIG_OUT" --leader-elect=false --secure-port 0 \
    --controllers deployment,replicaset,garbagecollector,serviceaccount-token,serviceaccount,namespace,resourcequota,clusterrole-aggregation \
    --service-account-private-key-file "$DIR/pki/sa.key" --root-ca-file "$DIR/pki/ca.crt" \
    --use-service-account-credentials=false --allocate-node-cidrs=false \
    --concurrent-deployment-syncs 10 --concurrent-replicaset-syncs 10 \
    --kube-api-qps 100 --kube-api-burst 200
  wait_for "the default ServiceAccount" kube-controller-manager 60 \
    "$BIN/kubectl" --kubeconfig "$KUBECONFIG_OUT" -n default get serviceaccount default

  log "starting the node simulator"
  start node-sim env KUBECONFIG="$KUBECONFIG_OUT" RUST_LOG="${NODE_SIM_LOG:-info}" "$SIM_BIN"
  wait_for "a Ready node" node-sim 30 \
    "$BIN/kubectl" --kubeconfig "$KUBECONFIG_OUT" wait --for=condition=Ready node --all --timeout=2s

  log "up; export KUBECONFIG=$KUBECONFIG_OUT"
}

down() {
  local quiet=${1:-}
  [ -d "$PIDS" ] || { [ -n "$quiet" ] || log "not running"; return 0; }
  local name
  for name in node-sim kube-controller-manager kube-apiserver-second kube-apiserver etcd; do
    stop "$name"
  done
  rm -rf "$DIR/etcd" "$DIR/pki" "$KUBECONFIG_OUT" "$DIR"/kubeconfig-* "$DIR/ports"
  [ -n "$quiet" ] || log "down"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  stop-apiserver) stop kube-apiserver; log "kube-apiserver stopped" ;;
  start-apiserver)
    BIN=$("$ROOT/devtools/scripts/build-control-plane.sh"); ports
    alive kube-apiserver && fail "kube-apiserver is running"
    start_apiserver kube-apiserver "$ETCD_PORT" "$API_PORT" "$KUBECONFIG_OUT" ;;
  start-second-apiserver)
    BIN=$("$ROOT/devtools/scripts/build-control-plane.sh"); ports
    alive kube-apiserver-second && fail "kube-apiserver-second is running"
    second_port=$(free_port)
    sed "s#https://127.0.0.1:$API_PORT#https://127.0.0.1:$second_port#" "$KUBECONFIG_OUT" >"$DIR/kubeconfig-second"
    chmod 600 "$DIR/kubeconfig-second"
    start_apiserver kube-apiserver-second "$ETCD_PORT" "$second_port" "$DIR/kubeconfig-second" ;;
  stop-second-apiserver) stop kube-apiserver-second; log "kube-apiserver-second stopped" ;;
  stop-etcd) stop etcd; log "etcd stopped" ;;
  start-etcd)
    BIN=$("$ROOT/devtools/scripts/build-control-plane.sh"); ports
    alive etcd && fail "etcd is running"
    [ -n "${ETCD_PEER_PORT:-}" ] || fail "this cluster predates start-etcd (no ETCD_PEER_PORT): run down and up"
    start_etcd "$ETCD_PORT" "$ETCD_PEER_PORT" ;;
  status) BIN=$("$ROOT/devtools/scripts/build-control-plane.sh"); if is_up; then echo up; else echo down; exit 1; fi ;;
  *) echo "usage: $0 up|down|status|stop-apiserver|start-apiserver|start-second-apiserver|stop-second-apiserver|stop-etcd|start-etcd" >&2; exit 2 ;;
esac
