//! The harness of the scenarios: a [`Cluster`] plays the rest of the system around one install.
//! It keeps the status the plan wrote, takes the Deployment it built, and lets the test say what
//! the pods do; a [`TestClock`] is the injected clock the test moves. No API server.
use std::sync::{
    Arc,
    atomic::{AtomicI64, Ordering},
};

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentCondition, DeploymentStatus},
        core::v1::{
            Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
            ContainerStateWaiting, ContainerStatus, Pod, PodCondition, PodSpec, PodStatus,
        },
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
    jiff::Timestamp,
};
use kube::ResourceExt;
use serde_json::{Value, json};

use super::super::{
    ChildrenPlan, CredentialsPlan, ForeignObject, Plan, SecretConfigError, World, plan,
};
use crate::{
    lifecycle::access::{self, Refusal},
    resources::{
        ConditionStatus, FailureReason, Phase, Plugin, PluginInstall, PluginInstallStatus,
        PluginVersion, conditions, names::labels,
    },
    runtime::clock::Clock,
};

pub const NS: &str = "tenant-a";
pub const CATALOG: &str = "plugin-catalog";
/// When every scenario starts.
pub const START: i64 = 1_700_000_000;

/// A clock the test moves.
pub struct TestClock {
    seconds: Arc<AtomicI64>,
    pub clock: Clock,
}

impl TestClock {
    pub fn new() -> Self {
        let seconds = Arc::new(AtomicI64::new(START));
        let read = seconds.clone();
        let clock = Clock::new(move || {
            Timestamp::from_second(read.load(Ordering::SeqCst)).expect("a valid time")
        });
        Self { seconds, clock }
    }

    pub fn advance(&self, seconds: i64) {
        self.seconds.fetch_add(seconds, Ordering::SeqCst);
    }
}

pub fn plugin(namespace: &str, name: &str, connection: Value) -> Plugin {
    serde_json::from_value(json!({
        "apiVersion": "plugin-operator.dev/v1alpha1", "kind": "Plugin",
        "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{namespace}-{name}")},
        "spec": {"connection": connection},
    }))
    .expect("a Plugin")
}

/// An accepted version of plugin `echo` in `namespace`.
pub fn version_in(namespace: &str, number: &str, attribution: &str, spec: Value) -> PluginVersion {
    let mut object = json!({
        "apiVersion": "plugin-operator.dev/v1alpha1", "kind": "PluginVersion",
        "metadata": {"name": format!("echo-{number}"), "namespace": namespace, "generation": 1,
                     "uid": format!("uid-echo-{number}")},
        "spec": {"plugin": "echo", "version": number, "attribution": attribution,
                 "execution": {"image": format!("registry.example/echo:{number}"),
                               "healthPath": "/healthz"}},
        "status": {"observedGeneration": 1, "conditions": [{
            "type": "Accepted", "status": "True", "reason": "Accepted", "message": "ok",
            "lastTransitionTime": "2023-11-01T00:00:00Z", "observedGeneration": 1}]},
    });
    if let (Some(target), Value::Object(extra)) = (object["spec"].as_object_mut(), spec) {
        target.extend(extra);
    }
    serde_json::from_value(object).expect("a PluginVersion")
}

pub fn version(number: &str) -> PluginVersion {
    version_in(NS, number, "formal", json!({}))
}

pub fn draft(number: &str) -> PluginVersion {
    version_in(NS, number, "draft", json!({}))
}

/// The rest of the system around one install of plugin `echo`.
pub struct Cluster {
    pub clock: TestClock,
    pub install: PluginInstall,
    pub plugins: Vec<Plugin>,
    pub versions: Vec<PluginVersion>,
    pub deployment: Option<Deployment>,
    /// Whether the Service is there (applied children bring it, unless a test holds it back).
    pub service: bool,
    /// The Service is not created when the children are applied (the API server is slow).
    pub service_held_back: bool,
    pub pods: Vec<Pod>,
    pub credentials: Option<ObjectMeta>,
    pub external_health: Option<Result<(), String>>,
    /// What observe would find under the children's names that the install does not own.
    pub foreign: Vec<ForeignObject>,
    /// What observe would read from the `configFrom` Secrets.
    pub secret_config: Result<serde_json::Map<String, Value>, SecretConfigError>,
}

impl Cluster {
    /// A supervised plugin `echo` with `versions`, and an install `echo` with `spec`.
    pub fn new(spec: Value, versions: Vec<PluginVersion>) -> Self {
        Self::with_plugin(plugin(NS, "echo", json!({})), spec, versions)
    }

    pub fn with_plugin(plugin: Plugin, spec: Value, versions: Vec<PluginVersion>) -> Self {
        let mut spec = spec;
        if spec.get("plugin").is_none() {
            spec["plugin"] = json!("echo");
        }
        let install = serde_json::from_value(json!({
            "apiVersion": "plugin-operator.dev/v1alpha1", "kind": "PluginInstall",
            "metadata": {"name": "echo", "namespace": NS, "uid": "uid-install", "generation": 1},
            "spec": spec,
        }))
        .expect("a PluginInstall");
        Self {
            clock: TestClock::new(),
            install,
            plugins: vec![plugin],
            versions,
            deployment: None,
            service: false,
            service_held_back: false,
            pods: Vec::new(),
            credentials: None,
            external_health: None,
            foreign: Vec::new(),
            secret_config: Ok(Default::default()),
        }
    }

    /// What observe would read now.
    pub fn world(&self) -> World {
        let plugin = access::plugin_namespace(&self.install, CATALOG).and_then(|namespace| {
            let name = self.install.spec.plugin.name();
            self.plugins
                .iter()
                .find(|p| p.name_any() == name && p.namespace().as_deref() == Some(namespace))
                .map(|p| Arc::new(p.clone()))
                .ok_or_else(|| Refusal {
                    reason: FailureReason::PluginNotFound,
                    message: format!("spec.plugin: there is no Plugin {name}"),
                })
        });
        World {
            install: Arc::new(self.install.clone()),
            plugin,
            versions: self.versions.iter().cloned().map(Arc::new).collect(),
            deployment: self.deployment.clone().map(Arc::new),
            service: self.service,
            pods: self.pods.iter().cloned().map(Arc::new).collect(),
            secret_config: self.secret_config.clone(),
            external_health: self.external_health.clone(),
            credentials: Ok(self.credentials.clone()),
            foreign: self.foreign.clone(),
            fresh_client_secret: "a-fresh-client-secret".into(),
            now: self.clock.clock.now_in_seconds(),
        }
    }

    /// One reconcile: plans, and plays the apply and status steps.
    pub fn reconcile(&mut self) -> Plan {
        let plan = plan(&self.world()).expect("planned");
        match &plan.children {
            ChildrenPlan::Keep => {}
            ChildrenPlan::Apply(children) => {
                let status = self.deployment.as_ref().and_then(|d| d.status.clone());
                let mut deployment = children.deployment.clone();
                deployment.status = status;
                self.deployment = Some(deployment);
                self.service |= !self.service_held_back;
            }
            ChildrenPlan::RemoveDeployment | ChildrenPlan::External(_) => {
                self.deployment = None;
                self.pods.clear();
            }
        }
        match &plan.credentials {
            CredentialsPlan::Keep => {}
            CredentialsPlan::Create(secret) | CredentialsPlan::Rotate(secret) => {
                self.credentials = Some(secret.metadata.clone());
            }
        }
        self.install.status = Some(plan.status.clone());
        plan
    }

    pub fn status(&self) -> &PluginInstallStatus {
        self.install.status.as_ref().expect("a status")
    }

    pub fn phase(&self) -> Option<Phase> {
        self.status().phase
    }

    /// A change of the spec (a new generation).
    pub fn edit(&mut self, change: impl FnOnce(&mut Value)) {
        let mut spec = serde_json::to_value(&self.install.spec).expect("spec");
        change(&mut spec);
        self.install.spec = serde_json::from_value(spec).expect("spec");
        let generation = self.install.metadata.generation.unwrap_or(0);
        self.install.metadata.generation = Some(generation + 1);
    }

    /// The template hash and image the Deployment asks for now.
    pub fn template(&self) -> (String, String) {
        let spec = self
            .deployment
            .as_ref()
            .and_then(|d| d.spec.as_ref())
            .expect("a Deployment");
        let template = &spec.template;
        let hash = template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.as_ref())
            .and_then(|l| l.get(labels::TEMPLATE))
            .cloned()
            .expect("a template label");
        let image = template
            .spec
            .as_ref()
            .and_then(|s| s.containers[0].image.clone())
            .unwrap_or_default();
        (hash, image)
    }

    /// The version the Deployment runs (its pods' version label).
    pub fn deployed_version(&self) -> String {
        self.deployment
            .as_ref()
            .and_then(|d| d.spec.as_ref())
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.labels.as_ref())
            .and_then(|l| l.get(labels::VERSION))
            .cloned()
            .expect("a deployed version")
    }

    /// The pods of the wanted template are in `states`; the Deployment's status follows.
    pub fn kubelet(&mut self, states: &[PodState]) {
        let (hash, _) = self.template();
        let now = self.clock.clock.now();
        self.pods = states
            .iter()
            .enumerate()
            .map(|(i, state)| pod(&format!("echo-{hash}-{i}"), &hash, state, now))
            .collect();
        let ready = states.iter().filter(|s| s.ready()).count() as i32;
        let replicas = states.len() as i32;
        if let Some(deployment) = &mut self.deployment {
            deployment.status = Some(DeploymentStatus {
                replicas: Some(replicas),
                updated_replicas: Some(replicas),
                available_replicas: Some(ready),
                ready_replicas: Some(ready),
                ..Default::default()
            });
        }
    }

    /// The Deployment reports that its rollout missed `progressDeadlineSeconds`.
    pub fn deadline_exceeded(&mut self) {
        let status = self
            .deployment
            .as_mut()
            .and_then(|d| d.status.as_mut())
            .expect("a Deployment status");
        status.conditions = Some(vec![DeploymentCondition {
            type_: "Progressing".into(),
            status: "False".into(),
            reason: Some("ProgressDeadlineExceeded".into()),
            ..Default::default()
        }]);
    }

    pub fn condition(&self, type_: &str) -> (ConditionStatus, String) {
        let condition =
            conditions::find_condition(&self.status().conditions, type_).expect("the condition");
        (ConditionStatus::of(condition), condition.reason.clone())
    }

    pub fn last_failure(&self) -> String {
        self.status()
            .last_failure
            .as_ref()
            .map(|f| f.reason.clone())
            .expect("a last failure")
    }

    /// Starts the install and brings it to Active on its version.
    pub fn active(&mut self) {
        self.reconcile();
        self.kubelet(&[PodState::Ready]);
        self.clock.advance(5);
        self.reconcile();
        assert_eq!(self.phase(), Some(Phase::Active));
    }
}

#[derive(Clone, Debug)]
pub enum PodState {
    /// Scheduled, no container running yet.
    Pending,
    /// Running, readiness not passing.
    Running,
    Ready,
    /// A container waits for this reason (e.g. `CrashLoopBackOff`).
    Waiting(&'static str),
    /// A container restarted just now and is running again, not ready yet.
    Crashed,
}

impl PodState {
    pub fn ready(&self) -> bool {
        matches!(self, Self::Ready)
    }
}

pub fn pod(name: &str, template: &str, state: &PodState, now: Timestamp) -> Pod {
    let running = ContainerState {
        running: Some(ContainerStateRunning::default()),
        ..Default::default()
    };
    let (container_state, last_state, restarts) = match state {
        PodState::Pending => (None, None, 0),
        PodState::Running | PodState::Ready => (Some(running), None, 0),
        PodState::Waiting(reason) => (
            Some(ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some((*reason).into()),
                    message: Some("back-off".into()),
                }),
                ..Default::default()
            }),
            None,
            0,
        ),
        PodState::Crashed => (
            Some(running),
            Some(ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: 1,
                    finished_at: Some(Time(now)),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            1,
        ),
    };
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(NS.into()),
            labels: Some(
                [
                    (labels::INSTALL.to_owned(), "echo".to_owned()),
                    (labels::TEMPLATE.to_owned(), template.to_owned()),
                ]
                .into(),
            ),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "plugin".into(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: Some(PodStatus {
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if state.ready() { "True" } else { "False" }.into(),
                ..Default::default()
            }]),
            container_statuses: container_state.map(|state| {
                vec![ContainerStatus {
                    name: "plugin".into(),
                    state: Some(state),
                    last_state: last_state.clone(),
                    restart_count: restarts,
                    ..Default::default()
                }]
            }),
            ..Default::default()
        }),
    }
}

pub fn transition(plan: &Plan) -> Option<(Option<Phase>, Phase)> {
    plan.transition.as_ref().map(|t| (t.from, t.to))
}
