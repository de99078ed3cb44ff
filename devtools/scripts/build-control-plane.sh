#!/usr/bin/env bash
# Builds (once per machine) the local control plane's binaries: kube-apiserver,
# kube-controller-manager and kubectl v1.20.2 from Debian's `kubernetes` source package, and
# installs etcd from Debian's `etcd-server`. Binaries are cached outside the work tree so that
# only the first run on a machine pays for the ~5 minute Go build.
set -euo pipefail

K8S_VERSION=1.20.2
# Bump whenever a change here changes what the binaries do (a patch, a flag): the cache directory
# is named after it, so no machine keeps running binaries an older revision built.
BUILD_REVISION=2
CACHE_DIR="${PLUGIN_OPERATOR_CACHE:-$HOME/.cache/plugin-operator}/$K8S_VERSION-r$BUILD_REVISION"
BIN_DIR="$CACHE_DIR/bin"
WANTED=(kube-apiserver kube-controller-manager kubectl)

log() { printf '[build-control-plane] %s\n' "$*" >&2; }

have_all_binaries() {
  local b
  for b in "${WANTED[@]}"; do [ -x "$BIN_DIR/$b" ] || return 1; done
}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_updated=0
apt_update_once() {
  if [ "$apt_updated" = 0 ]; then
    as_root apt-get update -q >/dev/null
    apt_updated=1
  fi
}

install_etcd() {
  if command -v etcd >/dev/null 2>&1; then return; fi
  log "installing etcd from Debian's etcd-server package"
  apt_update_once
  # The package's post-install would start a system etcd on the default ports; policy-rc.d
  # forbids service starts during the install, and we stop/disable it in case one started anyway.
  local policy=/usr/sbin/policy-rc.d had_policy=0
  [ -e "$policy" ] && had_policy=1
  if [ "$had_policy" = 0 ]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
    as_root chmod +x "$policy"
  fi
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q --no-install-recommends etcd-server >/dev/null
  [ "$had_policy" = 0 ] && as_root rm -f "$policy"
  if command -v systemctl >/dev/null 2>&1; then
    as_root systemctl disable --now etcd >/dev/null 2>&1 || true
  fi
  as_root pkill -x etcd >/dev/null 2>&1 || true
}

# The machine ships binary entries only; derive a deb-src entry from the Debian one (same URIs,
# suites and key) so `apt-get source` can fetch the kubernetes source package.
ensure_deb_src() {
  local src=/etc/apt/sources.list.d/debian.sources
  local dst=/etc/apt/sources.list.d/plugin-operator-src.sources
  [ -f "$dst" ] && return
  [ -f "$src" ] || { log "no $src to derive a deb-src entry from"; exit 1; }
  sed 's/^Types: deb$/Types: deb-src/' "$src" | as_root tee "$dst" >/dev/null
  apt_updated=0
}

# reflect2 v1.0.1 declares reflect.mapiterinit with two arguments; since Go 1.18 it takes the
# iterator as a third one, so the old declaration corrupts memory. Apply what v1.0.2 does.
patch_reflect2() {
  local dir=$1/vendor/github.com/modern-go/reflect2
  [ -d "$dir" ] || return 0
  grep -q 'm unsafe.Pointer, it \*hiter)' "$dir/unsafe_link.go" && return 0
  python3 "$(dirname "$0")/patch_reflect2.py" "$dir"
  log "patched vendored reflect2 for Go >= 1.18 (three-argument mapiterinit, full-size hiter)"
}

# kube-openapi's type validator (what validates custom resources) takes every "" for null when
# built with Go >= 1.16, so a `type: string` field set to "" is refused with
# `must be of type string: "null"` (kubernetes#99804). Apply kube-openapi#230, 1.21's fix.
patch_kube_openapi() {
  python3 "$(dirname "$0")/patch_kube_openapi.py" "$1/vendor/k8s.io/kube-openapi/pkg/validation/validate"
  log "patched vendored kube-openapi for Go >= 1.16 (\"\" is not null)"
}

build_kubernetes() {
  have_all_binaries && return
  ensure_deb_src
  apt_update_once
  log "installing build dependencies (golang-go, rsync, jq)"
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q --no-install-recommends \
    golang-go rsync jq dpkg-dev build-essential >/dev/null
  local work="$CACHE_DIR/src"
  rm -rf "$work" && mkdir -p "$work"
  log "fetching the kubernetes source package"
  (cd "$work" && apt-get source -q kubernetes >"$work/apt-source.log" 2>&1) || {
    log "apt-get source kubernetes failed; see $work/apt-source.log"; exit 1; }
  local tree
  tree=$(find "$work" -maxdepth 1 -mindepth 1 -type d -name 'kubernetes-*' | head -n1)
  [ -n "$tree" ] || { log "source tree not found under $work"; exit 1; }
  patch_reflect2 "$tree"
  patch_kube_openapi "$tree"
  log "building ${WANTED[*]} (about 5 minutes on 2 cores; log: $work/build.log)"
  # Debian's tree carries no .git; the version must be given explicitly.
  (cd "$tree" && KUBE_GIT_VERSION="v$K8S_VERSION" KUBE_GIT_TREE_STATE=clean \
      make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kubectl" >"$work/build.log" 2>&1) || {
    log "kubernetes build failed; see $work/build.log"; tail -n 30 "$work/build.log" >&2; exit 1; }
  mkdir -p "$BIN_DIR"
  local b
  for b in "${WANTED[@]}"; do
    install -m 0755 "$tree/_output/bin/$b" "$BIN_DIR/$b"
  done
  rm -rf "$work"
  log "cached binaries in $BIN_DIR"
}

mkdir -p "$CACHE_DIR"
# Concurrent callers (several shells, CI and a developer) wait for one build instead of racing.
exec 9>"$CACHE_DIR/.build.lock"
flock 9
install_etcd
build_kubernetes
echo "$BIN_DIR"
