#!/usr/bin/env bash
# Builds (once per machine and version) the local control plane's binaries from the Go module
# proxy: kube-apiserver, kube-controller-manager and kubectl of k8s.io/kubernetes, and etcd of
# go.etcd.io/etcd/server/v3. The build modules (go.mod and go.sum, so every machine builds the
# same sources) live in devtools/control-plane/; the binaries are cached outside the work tree,
# by version, so that only the first run on a machine pays for the build. Prints the bin dir.
#
#   build-control-plane.sh            build when missing, print the directory of the binaries
#   build-control-plane.sh --version  print the Kubernetes version the tests run
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
MODULES="$ROOT/devtools/control-plane"

# The one setting: the Kubernetes release of the local control plane. devtools/control-plane/
# kubernetes/go.mod requires k8s.io/kubernetes at this version and its staging modules at
# v0.<minor>.<patch>; `devtools/scripts/build-control-plane.sh --bump` rewrites it for another.
K8S_VERSION=1.37.2
ETCD_VERSION=$(sed -n 's#^require go.etcd.io/etcd/server/v3 v##p' "$MODULES/etcd/go.mod")
# k8s.io/kubernetes v1.37 asks for Go 1.26.0, which the machine has. A fresh machine's go runs
# with GOTOOLCHAIN=local, which refuses to switch; `auto` lets a later release that asks for a
# newer Go (a `toolchain go1.27.3` line in the build module) fetch it through the module proxy.
export GOTOOLCHAIN="${GOTOOLCHAIN:-auto}"
export GOFLAGS="-mod=readonly -trimpath -buildvcs=false"
# Bump whenever a change here changes what the binaries do (a flag, a patch): the cache
# directory is named after it, so no machine keeps running binaries an older revision built.
BUILD_REVISION=1
CACHE_DIR="${PLUGIN_OPERATOR_CACHE:-$HOME/.cache/plugin-operator}/kubernetes-$K8S_VERSION-etcd-$ETCD_VERSION-r$BUILD_REVISION"
BIN_DIR="$CACHE_DIR/bin"
WANTED=(kube-apiserver kube-controller-manager kubectl etcd)

log() { printf '[build-control-plane] %s\n' "$*" >&2; }

have_all_binaries() {
  local b
  for b in "${WANTED[@]}"; do [ -x "$BIN_DIR/$b" ] || return 1; done
}

# What `kubectl version` and /version report: the release's own numbers, as its Makefile stamps.
version_ldflags() {
  local minor=${K8S_VERSION#*.}; minor=${minor%%.*}
  local flags="-s -w" pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X $pkg.gitVersion=v$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  printf '%s' "$flags"
}

build() {
  have_all_binaries && return
  command -v go >/dev/null 2>&1 || { log "the go command is missing (Go 1.26 or later)"; exit 1; }
  local work="$CACHE_DIR/work"
  rm -rf "$work" && mkdir -p "$work"
  local started=$SECONDS
  log "building kube-apiserver, kube-controller-manager and kubectl v$K8S_VERSION (about 15 minutes on 2 cores; log: $work/build.log)"
  (cd "$MODULES/kubernetes" && go build -ldflags "$(version_ldflags)" -o "$work/" \
      k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kubectl) >"$work/build.log" 2>&1 || {
    log "kubernetes build failed; see $work/build.log"; tail -n 30 "$work/build.log" >&2; exit 1; }
  log "building etcd v$ETCD_VERSION"
  (cd "$MODULES/etcd" && go build -ldflags "-s -w" -o "$work/etcd" go.etcd.io/etcd/server/v3) \
      >>"$work/build.log" 2>&1 || {
    log "etcd build failed; see $work/build.log"; tail -n 30 "$work/build.log" >&2; exit 1; }
  mkdir -p "$BIN_DIR"
  local b
  for b in "${WANTED[@]}"; do install -m 0755 "$work/$b" "$BIN_DIR/$b"; done
  rm -rf "$work"
  log "built in $((SECONDS - started)) s; cached in $BIN_DIR"
}

# Points the build modules at another release: k8s.io/kubernetes vX.Y.Z, staging v0.Y.Z.
bump() {
  local version=$1 staging="0.${1#*.}"
  (cd "$MODULES/kubernetes" &&
    sed -i -E "s#^require k8s.io/kubernetes v.*#require k8s.io/kubernetes v$version#;
               s#^(\t(k8s.io/[a-z0-9-]+) => k8s.io/[a-z0-9-]+) v.*#\1 v$staging#" go.mod &&
    GOFLAGS=-mod=mod go mod tidy)
  sed -i "s/^K8S_VERSION=.*/K8S_VERSION=$version/" "$0"
  log "now at v$version; check the staging replacements in $MODULES/kubernetes/go.mod"
}

case "${1:-}" in
  --version) echo "$K8S_VERSION"; exit 0 ;;
  --bump) bump "${2:?usage: $0 --bump X.Y.Z}"; exit 0 ;;
  "") ;;
  *) echo "usage: $0 [--version | --bump X.Y.Z]" >&2; exit 2 ;;
esac

mkdir -p "$CACHE_DIR"
# Concurrent callers (several shells, CI and a developer) wait for one build instead of racing.
exec 9>"$CACHE_DIR/.build.lock"
flock 9
build
echo "$BIN_DIR"
