//! End-to-end tests of the node simulator against the local control plane (`just cluster-up`):
//! what a user sees of pods, Deployments and ServiceAccount tokens there.
//!
//! Each test works in its own namespace, so they run in parallel.
use std::{collections::BTreeMap, time::Duration};

use devtools::{
    sim::{
        behavior::{INSTALL_LABEL, OVERRIDES_CONFIG_MAP},
        kubelet::CRASH_ANNOTATION,
    },
    testkit::{TestNamespace, client, wait_until},
};
use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec},
        authentication::v1::{TokenRequest, TokenRequestSpec, TokenReview, TokenReviewSpec},
        coordination::v1::Lease,
        core::v1::{
            ConfigMap, Container, ContainerStatus, EnvVar, Namespace, Node, Pod, PodSpec,
            PodTemplateSpec, ServiceAccount,
        },
    },
    apimachinery::pkg::apis::meta::v1::LabelSelector,
    jiff::Timestamp,
};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, ObjectMeta, Patch, PatchParams, PostParams},
};
use serde_json::json;

/// Long enough for a busy machine; states normally arrive within a second or two.
const DEADLINE: Duration = Duration::from_secs(30);
const NODE: &str = "sim-node";

/// A fresh namespace whose `default` ServiceAccount exists: the API server refuses pods before
/// it does.
async fn namespace(client: &Client, prefix: &str) -> TestNamespace {
    let ns = TestNamespace::create(client, prefix).await;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns.name);
    wait_until("the default ServiceAccount", DEADLINE, || async {
        match accounts.get_opt("default").await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err("not yet created".to_string()),
            Err(err) => Err(err.to_string()),
        }
    })
    .await;
    ns
}

fn container(name: &str, behavior: Option<&str>) -> Container {
    Container {
        name: name.to_string(),
        image: Some("registry.local/plugin:1.0".to_string()),
        env: behavior.map(|b| {
            vec![EnvVar {
                name: "SIM_BEHAVIOR".to_string(),
                value: Some(b.to_string()),
                ..Default::default()
            }]
        }),
        ..Default::default()
    }
}

fn pod(name: &str, behavior: Option<&str>, install: Option<&str>) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: install.map(|i| BTreeMap::from([(INSTALL_LABEL.to_string(), i.to_string())])),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![container("main", behavior)],
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn create_pod(client: &Client, ns: &str, pod: &Pod) -> Api<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods.create(&PostParams::default(), pod)
        .await
        .expect("create pod");
    pods
}

fn condition(pod: &Pod, type_: &str) -> Option<String> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.clone())
}

fn is_ready(pod: &Pod) -> bool {
    condition(pod, "Ready").as_deref() == Some("True")
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default()
}

fn main_container(pod: &Pod) -> Option<&ContainerStatus> {
    pod.status.as_ref()?.container_statuses.as_ref()?.first()
}

fn is_running(pod: &Pod) -> bool {
    main_container(pod)
        .and_then(|c| c.state.as_ref())
        .is_some_and(|s| s.running.is_some())
}

fn waiting_reason(pod: &Pod) -> Option<&str> {
    main_container(pod)?
        .state
        .as_ref()?
        .waiting
        .as_ref()?
        .reason
        .as_deref()
}

fn restarts(pod: &Pod) -> i32 {
    main_container(pod).map(|c| c.restart_count).unwrap_or(-1)
}

/// One line describing what a user would see of a pod, for failure messages.
fn summary(pod: &Pod) -> String {
    format!(
        "phase={} ready={:?} running={} waiting={:?} restarts={} node={:?}",
        phase(pod),
        condition(pod, "Ready"),
        is_running(pod),
        waiting_reason(pod),
        restarts(pod),
        pod.spec.as_ref().and_then(|s| s.node_name.as_deref()),
    )
}

/// Waits until the pod satisfies `check`, and returns it.
async fn wait_for_pod(
    pods: &Api<Pod>,
    name: &str,
    what: &str,
    check: impl Fn(&Pod) -> bool,
) -> Pod {
    wait_until(&format!("pod {name}: {what}"), DEADLINE, || async {
        let pod = pods.get(name).await.map_err(|e| e.to_string())?;
        if check(&pod) {
            Ok(pod)
        } else {
            Err(summary(&pod))
        }
    })
    .await
}

/// Observes the pod for `window` and fails as soon as `check` does not hold: for asserting
/// that something does *not* happen.
async fn holds_for(
    pods: &Api<Pod>,
    name: &str,
    what: &str,
    window: Duration,
    check: impl Fn(&Pod) -> bool,
) {
    let end = tokio::time::Instant::now() + window;
    while tokio::time::Instant::now() < end {
        let pod = pods.get(name).await.expect("get pod");
        assert!(
            check(&pod),
            "pod {name}: expected {what} to hold for {window:?}; saw {}",
            summary(&pod)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn node_is_registered_ready_and_keeps_a_lease() {
    let client = client().await;
    let nodes: Api<Node> = Api::all(client.clone());
    let node = nodes.get(NODE).await.expect("the simulated node exists");
    let labels = node.labels();
    assert_eq!(
        labels.get("kubernetes.io/hostname").map(String::as_str),
        Some(NODE)
    );
    assert_eq!(
        labels.get("kubernetes.io/os").map(String::as_str),
        Some("linux")
    );
    assert_eq!(
        labels.get("kubernetes.io/arch").map(String::as_str),
        Some("amd64")
    );
    let status = node.status.expect("node status");
    let ready = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready")
        .expect("a Ready condition");
    assert_eq!(ready.status, "True");
    let pods = status
        .allocatable
        .as_ref()
        .and_then(|a| a.get("pods"))
        .map(|q| q.0.clone());
    // The API server normalizes 1000 to 1k.
    assert!(
        matches!(pods.as_deref(), Some("1000" | "1k")),
        "allocatable pods: {pods:?}"
    );

    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    wait_until("a recently renewed node lease", DEADLINE, || async {
        let lease = leases.get(NODE).await.map_err(|e| e.to_string())?;
        let renewed = lease
            .spec
            .and_then(|s| s.renew_time)
            .ok_or("no renewTime")?;
        let age = Timestamp::now().duration_since(renewed.0);
        if age.as_secs() < 30 {
            Ok(())
        } else {
            Err(format!("renewed {age} ago"))
        }
    })
    .await;
}

#[tokio::test]
async fn deployment_becomes_available_and_rolls_out() {
    let client = client().await;
    let ns = namespace(&client, "sim-deploy").await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let labels = BTreeMap::from([("app".to_string(), "web".to_string())]);
    let deployment = Deployment {
        metadata: ObjectMeta {
            name: Some("web".into()),
            ..Default::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(3),
            selector: LabelSelector {
                match_labels: Some(labels.clone()),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container("web", None)],
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    };
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .expect("create deployment");

    let rolled_out = |generation_at_least: i64| {
        let deployments = deployments.clone();
        move || {
            let deployments = deployments.clone();
            async move {
                let d = deployments.get("web").await.map_err(|e| e.to_string())?;
                let generation = d.metadata.generation.unwrap_or_default();
                let status = d.status.clone().unwrap_or_default();
                let available = status
                    .conditions
                    .iter()
                    .flatten()
                    .any(|c| c.type_ == "Available" && c.status == "True");
                let seen = format!("{status:?}");
                let done = generation >= generation_at_least
                    && status.observed_generation == Some(generation)
                    && status.available_replicas == Some(3)
                    && status.updated_replicas == Some(3)
                    && status.replicas == Some(3)
                    && available;
                if done { Ok(()) } else { Err(seen) }
            }
        }
    };
    wait_until(
        "the Deployment to be Available with 3 replicas",
        DEADLINE,
        rolled_out(1),
    )
    .await;

    // A rollout replaces every pod: the old ones are deleted, as a kubelet would let them go.
    let patch =
        json!({ "spec": { "template": { "metadata": { "annotations": { "rollout": "2" } } } } });
    deployments
        .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch deployment");
    wait_until("the rollout to finish", DEADLINE, rolled_out(2)).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    wait_until("only the 3 new pods to be left", DEADLINE, || async {
        let list = pods
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        let ready = list.items.iter().filter(|p| is_ready(p)).count();
        if list.items.len() == 3 && ready == 3 {
            Ok(())
        } else {
            Err(format!("{} pods, {ready} ready", list.items.len()))
        }
    })
    .await;
}

#[tokio::test]
async fn ready_pod_shows_what_a_kubelet_reports() {
    let client = client().await;
    let ns = namespace(&client, "sim-ready").await;
    let pods = create_pod(&client, &ns.name, &pod("ready", Some("ready"), None)).await;
    let p = wait_for_pod(&pods, "ready", "Ready", is_ready).await;
    assert_eq!(phase(&p), "Running");
    assert_eq!(
        p.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        Some(NODE)
    );
    let status = p.status.as_ref().expect("status");
    assert_eq!(status.host_ip.as_deref(), Some("127.0.0.1"));
    assert!(
        status
            .pod_ip
            .as_deref()
            .is_some_and(|ip| ip.starts_with("10.244.")),
        "{:?}",
        status.pod_ip
    );
    assert!(status.start_time.is_some());
    for type_ in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
        assert_eq!(condition(&p, type_).as_deref(), Some("True"), "{type_}");
    }
    let c = main_container(&p).expect("a container status");
    assert_eq!(
        (c.name.as_str(), c.ready, c.started, c.restart_count),
        ("main", true, Some(true), 0)
    );
    assert_eq!(c.image, "registry.local/plugin:1.0");
    assert!(!c.image_id.is_empty() && c.container_id.is_some());
}

#[tokio::test]
async fn pod_without_a_matching_node_stays_pending_unschedulable() {
    let client = client().await;
    let ns = namespace(&client, "sim-sched").await;
    let mut unfit = pod("unfit", None, None);
    let mut fit = pod("fit", None, None);
    if let (Some(a), Some(b)) = (unfit.spec.as_mut(), fit.spec.as_mut()) {
        a.node_selector = Some(BTreeMap::from([(
            "disktype".to_string(),
            "ssd".to_string(),
        )]));
        b.node_selector = Some(BTreeMap::from([(
            "kubernetes.io/os".to_string(),
            "linux".to_string(),
        )]));
    }
    let pods = create_pod(&client, &ns.name, &unfit).await;
    create_pod(&client, &ns.name, &fit).await;
    wait_for_pod(&pods, "fit", "Ready on the node", is_ready).await;
    let p = wait_for_pod(&pods, "unfit", "PodScheduled=False", |p| {
        condition(p, "PodScheduled").as_deref() == Some("False")
    })
    .await;
    let scheduled = p
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "PodScheduled"))
        .expect("PodScheduled");
    assert_eq!(scheduled.reason.as_deref(), Some("Unschedulable"));
    assert!(
        scheduled
            .message
            .as_deref()
            .is_some_and(|m| m.contains("node selector"))
    );
    assert_eq!(phase(&p), "Pending");
    assert_eq!(p.spec.as_ref().and_then(|s| s.node_name.as_deref()), None);
}

#[tokio::test]
async fn slow_pod_is_ready_only_after_its_delay() {
    let client = client().await;
    let ns = namespace(&client, "sim-slow").await;
    let pods = create_pod(&client, &ns.name, &pod("slow", Some("slow:4"), None)).await;
    let running = wait_for_pod(&pods, "slow", "Running", is_running).await;
    assert!(
        !is_ready(&running),
        "Ready too early: {}",
        summary(&running)
    );
    let ready = wait_for_pod(&pods, "slow", "Ready", is_ready).await;
    let started = main_container(&ready)
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.running.as_ref())
        .and_then(|r| r.started_at.clone())
        .expect("startedAt");
    let became_ready = ready
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .and_then(|c| c.last_transition_time.clone())
        .expect("Ready lastTransitionTime");
    let delay = became_ready.0.duration_since(started.0);
    assert!(
        delay.as_secs() >= 3,
        "Ready {delay} after starting; expected about 4 s"
    );
}

#[tokio::test]
async fn never_ready_pod_runs_but_stays_unready() {
    let client = client().await;
    let ns = namespace(&client, "sim-never").await;
    let pods = create_pod(&client, &ns.name, &pod("never", Some("never-ready"), None)).await;
    wait_for_pod(&pods, "never", "Running", |p| {
        is_running(p) && phase(p) == "Running"
    })
    .await;
    holds_for(
        &pods,
        "never",
        "Running and not Ready",
        Duration::from_secs(4),
        |p| is_running(p) && condition(p, "Ready").as_deref() == Some("False") && restarts(p) == 0,
    )
    .await;
}

#[tokio::test]
async fn crash_pod_crash_loops_with_a_growing_restart_count() {
    let client = client().await;
    let ns = namespace(&client, "sim-crash").await;
    let pods = create_pod(&client, &ns.name, &pod("crash", Some("crash"), None)).await;
    let p = wait_for_pod(&pods, "crash", "CrashLoopBackOff after 2 restarts", |p| {
        waiting_reason(p) == Some("CrashLoopBackOff") && restarts(p) >= 2
    })
    .await;
    assert_eq!(phase(&p), "Running");
    assert!(!is_ready(&p));
    let last = main_container(&p)
        .and_then(|c| c.last_state.as_ref())
        .and_then(|s| s.terminated.as_ref())
        .expect("lastState.terminated");
    assert_eq!((last.exit_code, last.reason.as_deref()), (1, Some("Error")));
}

#[tokio::test]
async fn pull_error_pod_reports_image_pull_back_off() {
    let client = client().await;
    let ns = namespace(&client, "sim-pull").await;
    let pods = create_pod(&client, &ns.name, &pod("pull", Some("pull-error"), None)).await;
    let p = wait_for_pod(&pods, "pull", "an image pull error", |p| {
        matches!(waiting_reason(p), Some("ErrImagePull" | "ImagePullBackOff"))
    })
    .await;
    assert_eq!(phase(&p), "Pending");
    assert!(!is_ready(&p));
    wait_for_pod(&pods, "pull", "ImagePullBackOff", |p| {
        waiting_reason(p) == Some("ImagePullBackOff") && phase(p) == "Pending"
    })
    .await;
}

#[tokio::test]
async fn config_map_overrides_env_for_pods_started_afterwards() {
    let client = client().await;
    let ns = namespace(&client, "sim-override").await;
    let pods = create_pod(
        &client,
        &ns.name,
        &pod("before", Some("ready"), Some("demo")),
    )
    .await;
    wait_for_pod(&pods, "before", "Ready", is_ready).await;

    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let overrides = ConfigMap {
        metadata: ObjectMeta {
            name: Some(OVERRIDES_CONFIG_MAP.to_string()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "demo".to_string(),
            "pull-error".to_string(),
        )])),
        ..Default::default()
    };
    config_maps
        .create(&PostParams::default(), &overrides)
        .await
        .expect("create the plugin-sim ConfigMap");

    // The env says ready, the ConfigMap says pull-error for install "demo": it wins.
    create_pod(
        &client,
        &ns.name,
        &pod("after", Some("ready"), Some("demo")),
    )
    .await;
    // Another install is not affected.
    create_pod(
        &client,
        &ns.name,
        &pod("other", Some("ready"), Some("other")),
    )
    .await;
    wait_for_pod(&pods, "after", "an image pull error", |p| {
        matches!(waiting_reason(p), Some("ErrImagePull" | "ImagePullBackOff"))
    })
    .await;
    wait_for_pod(&pods, "other", "Ready", is_ready).await;
    // The pod started before the override goes on as it was.
    let before = pods.get("before").await.expect("get pod");
    assert!(is_ready(&before), "{}", summary(&before));
}

#[tokio::test]
async fn crash_annotation_crashes_a_pod_once_then_it_recovers() {
    let client = client().await;
    let ns = namespace(&client, "sim-annot").await;
    let pods = create_pod(&client, &ns.name, &pod("victim", None, None)).await;
    wait_for_pod(&pods, "victim", "Ready", is_ready).await;

    for round in 1..=2 {
        let patch = json!({ "metadata": { "annotations": { CRASH_ANNOTATION: "true" } } });
        pods.patch("victim", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("annotate pod");
        let crashed = wait_for_pod(&pods, "victim", "restarted and unready", |p| {
            restarts(p) == round && !is_ready(p)
        })
        .await;
        let last = main_container(&crashed)
            .and_then(|c| c.last_state.as_ref())
            .and_then(|s| s.terminated.as_ref())
            .expect("lastState.terminated");
        assert_eq!(last.exit_code, 1);
        let recovered = wait_for_pod(&pods, "victim", "Ready again", is_ready).await;
        assert_eq!(restarts(&recovered), round, "one crash per annotation");
        assert!(
            !recovered.annotations().contains_key(CRASH_ANNOTATION),
            "the annotation is removed once acted on"
        );
    }
}

#[tokio::test]
async fn namespace_with_running_pods_is_deleted() {
    let client = client().await;
    let ns = namespace(&client, "sim-nsdel").await;
    let pods = create_pod(&client, &ns.name, &pod("a", None, None)).await;
    create_pod(&client, &ns.name, &pod("b", Some("crash"), None)).await;
    wait_for_pod(&pods, "a", "Ready", is_ready).await;
    wait_for_pod(&pods, "b", "Running", |p| phase(p) == "Running").await;
    let name = ns.name.clone();
    drop(ns); // deletes the namespace
    let namespaces: Api<Namespace> = Api::all(client.clone());
    wait_until(
        "the namespace to be gone",
        Duration::from_secs(60),
        || async {
            match namespaces.get_opt(&name).await {
                Ok(None) => Ok(()),
                Ok(Some(n)) => Err(format!("{:?}", n.status.and_then(|s| s.phase))),
                Err(err) => Err(err.to_string()),
            }
        },
    )
    .await;
}

#[tokio::test]
async fn service_account_tokens_pass_token_review() {
    let client = client().await;
    let ns = namespace(&client, "sim-token").await;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns.name);
    let account = ServiceAccount {
        metadata: ObjectMeta {
            name: Some("caller".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    accounts
        .create(&PostParams::default(), &account)
        .await
        .expect("create ServiceAccount");
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![],
            expiration_seconds: Some(600),
            ..Default::default()
        },
        ..Default::default()
    };
    let issued: TokenRequest = accounts
        .create_subresource("token", "caller", &PostParams::default(), &request)
        .await
        .expect("TokenRequest");
    let token = issued.status.map(|s| s.token).unwrap_or_default();
    assert!(!token.is_empty(), "a token is issued");

    let reviews: Api<TokenReview> = Api::all(client.clone());
    let review = |token: String| {
        let reviews = reviews.clone();
        async move {
            let review = TokenReview {
                spec: TokenReviewSpec {
                    token: Some(token),
                    ..Default::default()
                },
                ..Default::default()
            };
            reviews
                .create(&PostParams::default(), &review)
                .await
                .expect("TokenReview")
                .status
                .unwrap_or_default()
        }
    };
    let status = review(token).await;
    assert_eq!(status.authenticated, Some(true), "{status:?}");
    let username = status.user.and_then(|u| u.username);
    assert_eq!(
        username.as_deref(),
        Some(format!("system:serviceaccount:{}:caller", ns.name).as_str())
    );

    let garbage = review("not-a-token.at-all".to_string()).await;
    assert_ne!(garbage.authenticated, Some(true), "{garbage:?}");
}
