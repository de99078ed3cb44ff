#!/usr/bin/env bash
# `just demo`: the operator at work on the local control plane, watched as a user would.
#
#   1. build the operator and the node simulator; start the local control plane
#      (the first time it builds kube-apiserver and kube-controller-manager: minutes)
#   2. install the CRDs and start the operator in the background (log: target/local-cluster/logs/operator.log)
#   3. apply examples/ (a catalog plugin, a tenant plugin, installs in team-a and team-b)
#      and watch every install reach Active
#   4. deactivate an install and activate it again
#   5. crash a plugin's pod and watch the operator restart it: Active → Restarting → Active
#   6. publish a new version and approve a Manual upgrade
#
# Re-runnable: the example tenants (team-a, team-b) are deleted and created anew, and so are the
# example's objects in the shared catalog namespace (plugin-catalog); nothing else on the cluster
# is touched. The cluster stays up afterwards; the operator is
# stopped when the demo ends.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
DIR="${LOCAL_CLUSTER_DIR:-$ROOT/target/local-cluster}"   # as cluster.sh
export KUBECONFIG="$DIR/kubeconfig"
KUBECTL="$DIR/bin/kubectl"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
OPERATOR_BIN="$TARGET_DIR/debug/plugin-operator"
PLUGIN_BIN="$TARGET_DIR/debug/kubectl-plugin_operator"   # the kubectl plugin (README "kubectl plugin")
export NODE_SIM_BIN="${NODE_SIM_BIN:-$TARGET_DIR/debug/node-sim}"   # what cluster.sh starts
OPERATOR_LOG="$DIR/logs/operator.log"
EXAMPLES=examples
EXAMPLE_NAMESPACES=(plugin-catalog team-a team-b)
TENANT_NAMESPACES=(team-a team-b)
OPERATOR_IDENTITY=plugin-operator-demo
# Published in step 6, not at the start: a new Manual install starts on the newest version in
# its range, so 1.1.0 has to come out after the install runs 1.0.0 to be an upgrade.
LATER_VERSION="$EXAMPLES/tenant/21-billing-export-1.1.0.yaml"

STARTED=$(date +%s)
OPERATOR_PID=
WATCH_PID=
WATCH_FILE=

# --- output ------------------------------------------------------------------------------------

if [ -t 1 ]; then
  B=$'\e[1m'; DIM=$'\e[2m'; RED=$'\e[31m'; GREEN=$'\e[32m'; YELLOW=$'\e[33m'; CYAN=$'\e[36m'; R=$'\e[0m'
else
  B=; DIM=; RED=; GREEN=; YELLOW=; CYAN=; R=
fi
STEP=0
heading() { STEP=$((STEP + 1)); printf '\n%s== %d. %s ==%s\n' "$B$CYAN" "$STEP" "$*" "$R"; }
say() { printf '%s\n' "$*"; }
note() { printf '%s%s%s\n' "$DIM" "$*" "$R"; }
ok() { printf '%s✔ %s%s\n' "$GREEN" "$*" "$R"; }
warn() { printf '%s! %s%s\n' "$YELLOW$B" "$*" "$R" >&2; }
# Shows a command as the user would type it (kubectl = the cluster's own kubectl), then runs it.
show() { printf '%s$ %s%s\n' "$B" "$*" "$R"; }
k() { "$KUBECTL" --request-timeout=15s "$@"; }
# Quotes what a shell would need quoted, for showing commands.
quote() {
  local a out=()
  for a in "$@"; do
    if [[ $a =~ ^[A-Za-z0-9_./=:,@%+-]+$ ]]; then out+=("$a"); else out+=("'$a'"); fi
  done
  printf '%s' "${out[*]}"
}
run() { show "kubectl $(quote "$@")"; k "$@"; }
# The kubectl plugin, shown as a user with it on their PATH types it.
plugin() { show "kubectl plugin-operator $(quote "$@")"; KUBECONFIG="$KUBECONFIG" "$PLUGIN_BIN" "$@"; }
now() { date +%H:%M:%S; }
elapsed() { local s=$(( $(date +%s) - STARTED )); printf '%dm%02ds' $((s / 60)) $((s % 60)); }

# Keeps the header, blank lines and the rows of the example namespaces of a `get -A` table (the
# cluster may hold other namespaces).
examples_only() {
  awk -v keep="${EXAMPLE_NAMESPACES[*]}" '
    BEGIN { n = split(keep, list, " "); for (i = 1; i <= n; i++) ns[list[i]] = 1 }
    $0 == "" || $1 == "NAMESPACE" || ($1 in ns) { print }' "${1:-/dev/stdin}"
}
get_examples() {
  show "kubectl get $* -A"
  k get "$@" -A | examples_only
}

# --- failure and cleanup -----------------------------------------------------------------------

operator_log_tail() {
  [ -f "$OPERATOR_LOG" ] || return 0
  printf '\n%s--- last 40 lines of %s ---%s\n' "$B" "${OPERATOR_LOG#"$ROOT"/}" "$R" >&2
  tail -n 40 "$OPERATOR_LOG" >&2
}

# Status of an install, for people: phase, versions, restarts, last failure and conditions.
install_summary() {
  local ns=$1 name=$2
  k -n "$ns" get plgi "$name" -o go-template='{{with .status}}  phase={{.phase}} version={{.version}} targetVersion={{.targetVersion}} availableVersion={{.availableVersion}} restarts={{.restarts}}
{{with .lastFailure}}  lastFailure: {{.reason}}: {{.message}} ({{.time}}, by {{.reportedBy}})
{{end}}{{range .conditions}}  {{.type}}={{.status}} {{.reason}}: {{.message}}
{{end}}{{else}}  (no status: the operator has not reconciled it){{end}}' 2>&1 || true
}

fail() {
  printf '\n%sDEMO FAILED: %s%s\n' "$RED$B" "$*" "$R" >&2
  local ns name
  for ns in team-a team-b; do
    for name in $(k -n "$ns" get plgi -o name 2>/dev/null | sed 's|.*/||'); do
      printf '%s/%s:\n' "$ns" "$name" >&2
      install_summary "$ns" "$name" >&2
    done
  done
  operator_log_tail
  exit 1
}

stop_watch() {
  if [ -n "$WATCH_PID" ]; then
    kill "$WATCH_PID" 2>/dev/null || true
    wait "$WATCH_PID" 2>/dev/null || true
    WATCH_PID=
  fi
  [ -z "$WATCH_FILE" ] || rm -f "$WATCH_FILE"
  WATCH_FILE=
}

cleanup() {
  local code=$?
  stop_watch
  if [ -n "$OPERATOR_PID" ] && kill -0 "$OPERATOR_PID" 2>/dev/null; then
    kill "$OPERATOR_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$OPERATOR_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$OPERATOR_PID" 2>/dev/null || true
    printf '\n%sThe operator was stopped (its log: %s).%s\n' "$DIM" "${OPERATOR_LOG#"$ROOT"/}" "$R"
  fi
  exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Waits until "$@" succeeds, polling every $POLL seconds, for at most $1 seconds.
POLL=1
wait_until() {
  local timeout=$1; shift
  local deadline=$(( $(date +%s) + timeout ))
  until "$@"; do
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep "$POLL"
  done
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

field() { k -n "$1" get plgi "$2" -o jsonpath="{$3}" 2>/dev/null; }

# Other operators that reconcile the examples, seen as reporters of the events there: e.g. the
# in-process operator of an e2e test run, which watches every namespace. Warned about once.
OTHERS_WARNED=false
check_other_operators() {
  $OTHERS_WARNED && return 0
  local others
  others=$(for ns in "${TENANT_NAMESPACES[@]}"; do
      k -n "$ns" get events -o jsonpath='{range .items[?(@.reportingComponent=="plugin-operator")]}{.reportingInstance}{"\n"}{end}' 2>/dev/null || true
    done | sort -u | grep -vx -e "$OPERATOR_IDENTITY" -e '' || true)
  if [ -n "$others" ]; then
    OTHERS_WARNED=true
    warn "other operators also reconcile the examples (events may appear twice): $(echo "$others" | paste -sd, -)"
  fi
}

# --- phase watching ----------------------------------------------------------------------------

# Starts a watch (kubectl get -w) on one install, so that no phase is missed, however short.
start_watch() {
  local ns=$1 name=$2
  stop_watch
  WATCH_FILE=$(mktemp)
  "$KUBECTL" -n "$ns" get plgi "$name" -w --request-timeout=0 \
    -o jsonpath='{.status.phase}{"|"}{.status.version}{"|"}{.status.targetVersion}{"|"}{.status.restarts}{"\n"}' \
    >"$WATCH_FILE" 2>/dev/null &
  WATCH_PID=$!
}

# Prints the install's phase each time it changes (from the watch started by start_watch), with
# the time it was seen, until `done_when PHASE VERSION RESTARTS` holds; gives up after $3 s.
follow_phases() {
  local ns=$1 name=$2 timeout=$3 done_when=$4
  local deadline=$(( $(date +%s) + timeout )) seen=0 last="" phase version target restarts lines
  while :; do
    lines=$(wc -l <"$WATCH_FILE")
    while [ "$seen" -lt "$lines" ]; do
      seen=$((seen + 1))
      IFS='|' read -r phase version target restarts < <(sed -n "${seen}p" "$WATCH_FILE") || true
      [ -n "${phase:-}" ] || continue
      if [ "$phase $version $target" != "$last" ]; then
        printf '  %s  %-22s %s%-10s%s version=%-6s %-21s restarts=%s\n' "$(now)" "$ns/$name" "$B" "$phase" "$R" \
          "${version:--}" "${target:+targetVersion=$target}" "${restarts:-0}"
        last="$phase $version $target"
      fi
      if "$done_when" "$phase" "${version:-}" "${restarts:-0}"; then
        stop_watch
        return 0
      fi
    done
    if ! kill -0 "$WATCH_PID" 2>/dev/null; then
      start_watch "$ns" "$name"; seen=0   # the watch ended (API server timeout): start over
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      stop_watch
      return 1
    fi
    sleep 0.2
  done
}

# --- 1. build and start ------------------------------------------------------------------------

printf '%splugin-operator demo%s: a local control plane, the operator, and example plugins.\n' "$B" "$R"

heading "Build the operator and the node simulator"
command -v cargo >/dev/null || { echo "cargo is needed (https://rustup.rs)" >&2; exit 1; }
show "cargo build -p plugin-operator -p devtools --bin plugin-operator --bin kubectl-plugin_operator --bin node-sim"
cargo build -p plugin-operator -p devtools --bin plugin-operator --bin kubectl-plugin_operator --bin node-sim ||
  { echo "the build failed" >&2; exit 1; }

heading "Start the local control plane"
say "etcd, kube-apiserver and kube-controller-manager v$(devtools/scripts/build-control-plane.sh --version), and a node simulator that plays the"
say "kubelet (there is no container runtime: pods are simulated, images are never pulled)."
note "The first time on a machine this builds them from the Go module proxy:"
note "about 15 minutes on 2 cores (cached in ~/.cache/plugin-operator/ afterwards)."
show "devtools/scripts/cluster.sh up"
devtools/scripts/cluster.sh up
[ -x "$KUBECTL" ] || fail "cluster.sh did not provide $KUBECTL"

heading "Install the CRDs"
run apply --server-side --force-conflicts -f crds/
k wait --for condition=Established --timeout=60s \
  crd/plugins.plugin-operator.dev crd/pluginversions.plugin-operator.dev crd/plugininstalls.plugin-operator.dev \
  crd/pluginjobs.plugin-operator.dev >/dev/null ||
  fail "the CRDs did not become Established within 60 s"
ok "CRDs Established"

heading "Start the operator"
if others=$(pgrep -af 'plugin-operator run' 2>/dev/null) && [ -n "$others" ]; then
  warn "another plugin-operator is running and may reconcile the examples too:"
  printf '  %s\n' "$others" >&2
fi
API_PORT=$(free_port); ADMIN_PORT=$(free_port)
mkdir -p "$(dirname "$OPERATOR_LOG")"
show "KUBECONFIG=${KUBECONFIG#"$ROOT"/} target/debug/plugin-operator run --no-leader-election --api-addr 127.0.0.1:$API_PORT --admin-addr 127.0.0.1:$ADMIN_PORT --identity $OPERATOR_IDENTITY &"
RUST_LOG="${RUST_LOG:-info}" "$OPERATOR_BIN" run --no-leader-election \
  --api-addr "127.0.0.1:$API_PORT" --admin-addr "127.0.0.1:$ADMIN_PORT" \
  --identity "$OPERATOR_IDENTITY" >"$OPERATOR_LOG" 2>&1 &
OPERATOR_PID=$!
operator_ready() {
  kill -0 "$OPERATOR_PID" 2>/dev/null || fail "the operator exited at start"
  curl -fsS --max-time 2 "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null 2>&1
}
POLL=0.5 wait_until 60 operator_ready || fail "the operator's /readyz did not answer ok within 60 s"
ok "operator ready (pid $OPERATOR_PID, /readyz on 127.0.0.1:$ADMIN_PORT, plugin API on 127.0.0.1:$API_PORT)"
note "its log: ${OPERATOR_LOG#"$ROOT"/}"

# --- 2. examples -------------------------------------------------------------------------------

heading "Start from a clean slate"
# team-a and team-b belong to the demo and are deleted whole. plugin-catalog is the operator's
# shared catalog (tests use it too): only the example's own objects are deleted there.
present=$(k get namespace "${TENANT_NAMESPACES[@]}" --ignore-not-found -o name)
present+=$(k -n plugin-catalog get plg/webhook-relay plgv/webhook-relay-2.4.0 --ignore-not-found -o name 2>/dev/null || true)
if [ -n "$present" ]; then
  say "Objects are left from an earlier run: delete them and wait until they are gone."
  run delete namespace "${TENANT_NAMESPACES[@]}" --ignore-not-found --wait=false
  tenants_gone() { [ -z "$(k get namespace "${TENANT_NAMESPACES[@]}" --ignore-not-found -o name)" ]; }
  wait_until 180 tenants_gone ||
    fail "the namespaces ${TENANT_NAMESPACES[*]} were not deleted within 180 s: $(k get namespace "${TENANT_NAMESPACES[@]}" --ignore-not-found --no-headers)"
  run -n plugin-catalog delete plgv/webhook-relay-2.4.0 plg/webhook-relay --ignore-not-found --timeout=60s ||
    fail "the example's catalog objects were not deleted within 60 s"
  ok "deleted"
else
  note "Nothing left from an earlier run."
fi

heading "Apply the examples"
say "A catalog plugin (plugin-catalog/webhook-relay 2.4.0, installable from every namespace),"
say "a tenant plugin (team-a/billing-export 1.0.0, installable only in team-a), and two installs:"
say "  team-a/billing-export  its own plugin, version ^1.0, upgradeMode Manual"
say "  team-b/webhook-relay   the catalog plugin, version ^2, upgradeMode Auto"
mapfile -t FILES < <(find "$EXAMPLES" -name '*.yaml' ! -path "$LATER_VERSION" | sort)
note "(billing-export 1.1.0 is published later, in the upgrade step.)"
show "kubectl apply$(printf -- ' -f %s' "${FILES[@]}")"
# shellcheck disable=SC2046 # one -f per file
k apply $(printf -- '-f %s ' "${FILES[@]}") || fail "applying the examples failed"

heading "Watch the installs reach Active"
say "Each install goes Starting (Deployment created, no container yet) → Connecting (running, not"
say "ready) → Active (every replica ready). A new namespace's first pods can take a few seconds:"
say "the API server admits them only once the namespace's default ServiceAccount exists."
show "kubectl get plgi -A   (repeated whenever it changes)"
all_active() {
  local table phases
  table=$(examples_only <(k get plgi -A -o custom-columns='NAMESPACE:.metadata.namespace,NAME:.metadata.name,VERSION:.status.version,PHASE:.status.phase,AVAILABLE:.status.availableVersion' 2>/dev/null)) || true
  if [ "$table" != "${LAST_TABLE:-}" ]; then
    printf '%s%s%s\n' "$DIM" "-- $(now)" "$R"; printf '%s\n' "$table"
    LAST_TABLE=$table
  fi
  phases=$(printf '%s\n' "$table" | awk 'NR > 1 { print $4 }' | sort -u)
  [ "$(printf '%s\n' "$table" | awk 'NR > 1' | wc -l)" -eq 2 ] && [ "$phases" = "Active" ]
}
POLL=1 wait_until 180 all_active || fail "not every install reached Active within 180 s"
ok "both installs Active"
check_other_operators
echo
get_examples plg,plgv,plgi
echo
say "The same, as the kubectl plugin built from this repository shows it (one line per install):"
plugin status -n team-a
plugin status -n team-b
echo
say "What team-a/billing-export depends on and what the operator created for it (all owned by"
say "the install), each with its health:"
plugin trace team-a/billing-export || fail "kubectl plugin-operator trace failed"
echo
say "Where callers reach the plugins:"
get_examples plgi -o custom-columns=NAMESPACE:.metadata.namespace,NAME:.metadata.name,ENDPOINT:.status.endpoint
say "The config the plugin reads (the install's config with the schema's defaults filled in):"
show "kubectl -n team-a get cm billing-export-config -o jsonpath='{.data.config\\.json}'"
k -n team-a get cm billing-export-config -o jsonpath='{.data.config\.json}'; echo

# --- 3. deactivate / activate ------------------------------------------------------------------

heading "Deactivate an install, then activate it again"
say "spec.active: false stops the plugin: the Deployment goes away, the install and its settings stay."
run -n team-b patch plgi webhook-relay --type merge -p '{"spec":{"active":false}}'
start_watch team-b webhook-relay
is_inactive() { [ "$1" = Inactive ]; }
follow_phases team-b webhook-relay 60 is_inactive || fail "team-b/webhook-relay did not turn Inactive within 60 s"
k -n team-b wait --for=delete deployment/webhook-relay --timeout=60s >/dev/null ||
  fail "team-b/webhook-relay is Inactive but its Deployment is still there after 60 s"
run -n team-b get plgi webhook-relay
run -n team-b get deploy,pod -l plugin-operator.dev/install=webhook-relay
say "deactivatedAt: $(field team-b webhook-relay .status.deactivatedAt)"
ok "Inactive, Deployment gone"
echo
run -n team-b patch plgi webhook-relay --type merge -p '{"spec":{"active":true}}'
start_watch team-b webhook-relay
is_active() { [ "$1" = Active ]; }
# The watch first shows the current phase (still Inactive), then the way back to Active.
follow_phases team-b webhook-relay 120 is_active || fail "team-b/webhook-relay did not turn Active again within 120 s"
run -n team-b get deploy -l plugin-operator.dev/install=webhook-relay
ok "Active again"

# --- 4. crash ----------------------------------------------------------------------------------

heading "Crash a plugin and watch the operator restart it"
say "The node simulator crashes a pod on request (annotation sim.plugin-operator.dev/crash=true):"
say "its container restarts and stays unready for a few seconds. The operator sees an Active"
say "plugin fail, restarts it once (a new pod-template restart annotation) and reports it:"
say "Active → Restarting → Active."
RESTARTS_BEFORE=$(field team-a billing-export .status.restarts); RESTARTS_BEFORE=${RESTARTS_BEFORE:-0}
POD=$(k -n team-a get pod -l plugin-operator.dev/install=billing-export \
  -o jsonpath='{range .items[?(@.status.phase=="Running")]}{.metadata.name}{"\n"}{end}' | head -n 1)
[ -n "$POD" ] || fail "no running pod of team-a/billing-export to crash"
start_watch team-a billing-export
run -n team-a annotate pod "$POD" sim.plugin-operator.dev/crash=true
SAW_RESTARTING=false
restarted_and_active() {
  [ "$1" = Restarting ] && SAW_RESTARTING=true
  [ "$1" = Active ] && [ "${3:-0}" -gt "$RESTARTS_BEFORE" ]
}
follow_phases team-a billing-export 120 restarted_and_active ||
  fail "team-a/billing-export did not go through Restarting back to Active within 120 s"
$SAW_RESTARTING || warn "the Restarting phase was not seen by the watch (restarts did grow)"
echo
say "What it tells in events:"
show "kubectl -n team-a get events --field-selector involvedObject.kind=PluginInstall,involvedObject.name=billing-export"
k -n team-a get events --sort-by=.metadata.creationTimestamp \
  --field-selector involvedObject.kind=PluginInstall,involvedObject.name=billing-export \
  -o custom-columns='TYPE:.type,REASON:.reason,COUNT:.series.count,MESSAGE:.message' 2>/dev/null ||
  warn "could not list the events"
note "COUNT: the same reason seen again within minutes (e.g. Active after the restart) is counted on"
note "the first such event, which keeps its first message."
echo
say "And in its status:"
plugin status -n team-a -o wide
say "  restarts:    $(field team-a billing-export .status.restarts)"
say "  lastFailure: $(k -n team-a get plgi billing-export -o go-template='{{with .status.lastFailure}}{{.reason}}: {{.message}} (at {{.time}}, by {{.reportedBy}}){{end}}')"
say "  the new pod: $(k -n team-a get pod -l plugin-operator.dev/install=billing-export -o jsonpath='{range .items[*]}{.metadata.name} ({.status.phase}) {end}')"
ok "restarted by the operator and Active again"

# --- 5. upgrade --------------------------------------------------------------------------------

heading "Publish billing-export 1.1.0 and approve the upgrade"
say "team-a/billing-export follows ^1.0 with upgradeMode Manual. When 1.1.0 is published the"
say "install keeps running 1.0.0 and announces 1.1.0 in AVAILABLE until someone approves it."
run apply -f "$LATER_VERSION"
UPGRADE_OK=true
upgrade_problem() {
  UPGRADE_OK=false
  printf '\n%sUPGRADE STEP DID NOT COMPLETE: %s%s\n' "$YELLOW$B" "$*" "$R" >&2
  install_summary team-a billing-export >&2
  operator_log_tail
}
available_is_1_1() { [ "$(field team-a billing-export .status.availableVersion)" = 1.1.0 ]; }
if POLL=1 wait_until 60 available_is_1_1; then
  run -n team-a get plgi billing-export
  say "UpgradeAvailable: $(k -n team-a get plgi billing-export -o jsonpath='{.status.conditions[?(@.type=="UpgradeAvailable")].message}')"
  echo
  say "approve sets spec.approvedVersion to the available version and follows the rollout"
  say "(a rolling update, maxUnavailable 0: 1.0.0 serves until 1.1.0 is ready)."
  if plugin approve team-a/billing-export --timeout 150s; then
    run -n team-a get plgi billing-export
    say "Rollout history:"
    plugin history team-a/billing-export
    say "Pods: $(k -n team-a get pod -l plugin-operator.dev/install=billing-export -o jsonpath='{range .items[*]}{.metadata.name} (version {.metadata.labels.plugin-operator\.dev/version}, {.status.phase}) {end}')"
    ok "upgraded to 1.1.0"
  else
    upgrade_problem "team-a/billing-export did not become Active on 1.1.0 within 150 s of the approval"
  fi
else
  upgrade_problem "status.availableVersion of team-a/billing-export did not show 1.1.0 within 60 s"
fi

# --- done --------------------------------------------------------------------------------------

heading "Done in $(elapsed)"
if $OTHERS_WARNED; then
  warn "other operators reconciled the examples too (see above): a test run's, most likely."
else
  check_other_operators
fi
$UPGRADE_OK || warn "everything worked except the upgrade step (see above)."
cat <<EOF
The local cluster stays up with the examples; the operator stops now (start it again with
\`just run\`). To look around:

  export KUBECONFIG=$KUBECONFIG
  export PATH=$DIR/bin:\$PATH
  kubectl get plg,plgv,plgi -A
  kubectl -n team-a describe plgi billing-export
  kubectl -n team-a get events

Operator log: ${OPERATOR_LOG#"$ROOT"/}. Stop the cluster with: just cluster-down
EOF
