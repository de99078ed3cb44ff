# plugin-operator: run `just` to list the recipes.

set shell := ["bash", "-euo", "pipefail", "-c"]

kubeconfig := justfile_directory() / "target/local-cluster/kubeconfig"
# The fault tests' own cluster: they restart its API server.
fault_cluster := justfile_directory() / "target/fault-cluster"

# List the recipes
default:
    @just --list --unsorted

# Start the local control plane (etcd, kube-apiserver, kube-controller-manager, node simulator)
cluster-up:
    cargo build -q -p devtools --bin node-sim
    devtools/scripts/cluster.sh up

# Stop the local control plane started by cluster-up
cluster-down:
    devtools/scripts/cluster.sh down

# Run the operator against the local control plane (CRDs installed first)
run: cluster-up crds-install
    KUBECONFIG={{kubeconfig}} cargo run -- run --no-leader-election --api-addr 127.0.0.1:8080 --admin-addr 127.0.0.1:8081

# The main job: local cluster, operator and examples, watched as a user would
demo:
    devtools/scripts/demo.sh

# Measure the operator at scale on the local control plane, each figure beside its yardstick
# (target/bench/report.json and report.svg; docs/benchmarks.md). N=5000 just bench for more.
bench: cluster-up crds-install
    cargo build --release --bin plugin-operator
    cargo bench --bench api
    KUBECONFIG={{kubeconfig}} cargo bench --bench scale

# Everything a contributor must pass: format, lints, unit and end-to-end tests
test: tools fmt-check lint unit e2e e2e-faults

# Unit tests and the CRD drift check (no cluster needed)
unit:
    cargo test --workspace --lib --bins
    cargo test --test crd_files

# End-to-end tests against the local control plane (started when needed)
e2e: cluster-up
    KUBECONFIG={{kubeconfig}} cargo test --workspace --tests -- --test-threads 4

# On a cluster of their own, stopped afterwards: the kubectl plugin without CRDs (first, while
# the cluster has none), then API server restarts (tests/relists.rs) and leadership faults
# (tests/faults.rs)
e2e-faults:
    cargo build -q -p devtools --bin node-sim
    LOCAL_CLUSTER_DIR={{fault_cluster}} devtools/scripts/cluster.sh up
    status=0; LOCAL_CLUSTER_DIR={{fault_cluster}} KUBECONFIG={{fault_cluster}}/kubeconfig cargo test --test kubectl_plugin -- --ignored || status=$?; [ $status -ne 0 ] || LOCAL_CLUSTER_DIR={{fault_cluster}} KUBECONFIG={{fault_cluster}}/kubeconfig cargo test --no-fail-fast --test relists --test faults -- --ignored --test-threads 1 --nocapture || status=$?; LOCAL_CLUSTER_DIR={{fault_cluster}} devtools/scripts/cluster.sh down; exit $status

# Clippy with warnings denied
lint:
    cargo clippy --workspace --all-targets -- -D warnings

# Format the code
fmt:
    cargo fmt --all

# Check formatting
fmt-check:
    cargo fmt --all -- --check

# Regenerate crds/ from the Rust types (one file per kind)
crds:
    cargo run -q -- crds --out-dir crds

# Apply crds/ to the local control plane
crds-install: cluster-up
    KUBECONFIG={{kubeconfig}} target/local-cluster/bin/kubectl apply --server-side -f crds/ >/dev/null

# Make sure the toolchain components the recipes use are present
tools:
    @rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
    @rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy

# Render deploy/ from the Helm chart (and copy crds/ into the chart); helm comes from npm
deploy:
    devtools/scripts/render-deploy.sh

# Lint the Helm chart (helm lint --strict)
chart-lint:
    "$(devtools/scripts/deploy-tools.sh helm)" lint --strict charts/plugin-operator
