//! Operator replicas as processes of the real binary, for the fault tests: start one with its
//! identity and flags, `kill -9` it, start it again under the same identity (as a StatefulSet's
//! pod comes back with its name); read the Lease and the audit log by replica.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command},
};

use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use serde_json::Value;

use super::free_port;

/// An operator process, killed when dropped.
pub struct Replica {
    pub identity: String,
    flags: Vec<String>,
    kubeconfig: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Replica {
    /// Starts `plugin-operator run --identity <identity> <flags>` against `kubeconfig`, its
    /// output appended to logs/operator-<identity>.log of the cluster's directory.
    pub fn start(identity: &str, flags: &[String], kubeconfig: &Path) -> Self {
        let logs = devtools::testkit::local_kubeconfig_path()
            .parent()
            .expect("the kubeconfig is in the cluster's directory")
            .join("logs");
        let _ = std::fs::create_dir_all(&logs);
        let mut replica = Self {
            identity: identity.to_owned(),
            flags: flags.to_vec(),
            kubeconfig: kubeconfig.to_owned(),
            log: logs.join(format!("operator-{identity}.log")),
            child: None,
        };
        replica.restart();
        replica
    }

    /// Starts the process again (after [`Self::kill`]) with the same identity and flags.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "{} is running", self.identity);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_plugin-operator"))
            .args(["run", "--identity", &self.identity])
            .args(["--api-addr", &format!("127.0.0.1:{}", free_port())])
            .args(["--admin-addr", &format!("127.0.0.1:{}", free_port())])
            .args(&self.flags)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("RUST_LOG", "info,plugin_operator=debug")
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start plugin-operator");
        self.child = Some(child);
    }

    /// `kill -9`: it cannot release the Lease nor finish a write.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The Lease's holder, unless nobody holds it.
pub async fn holder(client: &Client, namespace: &str) -> Option<String> {
    lease(client, namespace)
        .await?
        .spec?
        .holder_identity
        .filter(|h| !h.is_empty())
}

pub async fn lease(client: &Client, namespace: &str) -> Option<Lease> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), namespace);
    leases
        .get_opt(plugin_operator::runtime::leader::LEASE_NAME)
        .await
        .ok()?
}

/// A write the API server's audit log recorded.
#[derive(Clone, Debug)]
pub struct Write {
    pub received: chrono::DateTime<chrono::FixedOffset>,
    pub user_agent: String,
    pub verb: String,
    pub resource: String,
    pub namespace: String,
    pub name: String,
    pub code: u16,
}

impl Write {
    /// A write of replica `identity` (its user agent `plugin-operator/<version> (<identity>)`).
    pub fn by(&self, identity: &str) -> bool {
        self.user_agent.starts_with("plugin-operator/")
            && self.user_agent.ends_with(&format!("({identity})"))
    }

    pub fn is_lease(&self) -> bool {
        self.resource == "leases"
    }

    pub fn succeeded(&self) -> bool {
        (200..300).contains(&self.code)
    }
}

impl std::fmt::Display for Write {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {} {}/{}/{} -> {}",
            self.received.format("%H:%M:%S%.6f"),
            self.user_agent,
            self.verb,
            self.resource,
            self.namespace,
            self.name,
            self.code
        )
    }
}

/// Every write of the audit log (see [`super::audit_events`]) in `namespace`, oldest first.
pub fn writes_in(namespace: &str) -> Vec<Write> {
    let text = |event: &Value, pointer: &str| {
        event
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let mut writes: Vec<Write> = super::audit_events()
        .iter()
        .filter(|e| e.pointer("/objectRef/namespace").and_then(Value::as_str) == Some(namespace))
        .filter_map(|e| {
            Some(Write {
                received: chrono::DateTime::parse_from_rfc3339(
                    e["requestReceivedTimestamp"].as_str()?,
                )
                .ok()?,
                user_agent: text(e, "/userAgent"),
                verb: text(e, "/verb"),
                resource: text(e, "/objectRef/resource"),
                namespace: namespace.to_owned(),
                name: text(e, "/objectRef/name"),
                code: e
                    .pointer("/responseStatus/code")
                    .and_then(Value::as_u64)
                    .and_then(|c| u16::try_from(c).ok())
                    .unwrap_or(0),
            })
        })
        .collect();
    writes.sort_by_key(|w| w.received);
    writes
}
