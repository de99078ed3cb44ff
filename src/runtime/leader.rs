//! Leader election on a Lease, fenced: only the holder reconciles, and a holder that has not
//! renewed the Lease by its renew deadline stops acting at once — no reconcile starts and the
//! writes of those already running are refused ([`fenced_client`]) — then competes again as
//! a candidate. Every replica serves the HTTP API. The holder releases the Lease when it stops,
//! so another replica takes over at once instead of after the lease duration.
//!
//! The loop over the Lease is our own (client-go's algorithm, docs/decisions.md says why):
//! kube-lease-manager logs a failed renewal and keeps trying without telling its user that the
//! deadline has passed, so its holder could go on writing after another replica took over.
use std::{
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
    time::Duration,
};

use futures::{Stream, StreamExt, future::BoxFuture};
use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;
use tokio::{sync::watch, task::JoinHandle, time::Instant};
use tokio_stream::wrappers::WatchStream;

use crate::resources::names::FIELD_MANAGER;

/// Name of the Lease the replicas compete for, unless `--lease-name` says otherwise.
pub const LEASE_NAME: &str = "plugin-operator-leader";

/// Whether this replica holds the Lease and may act, shared by the reconcilers.
#[derive(Clone)]
pub struct LeaderState {
    receiver: watch::Receiver<bool>,
    /// `None` for a replica that always leads.
    fence: Option<Fence>,
}

impl LeaderState {
    /// A replica that always leads (`--no-leader-election`).
    pub fn always() -> (Self, watch::Sender<bool>) {
        let (sender, receiver) = watch::channel(true);
        (
            Self {
                receiver,
                fence: None,
            },
            sender,
        )
    }

    /// Holds the Lease and renewed it within the renew deadline, by this replica's clock: false
    /// as soon as the deadline passes, even while a renewal is still hanging.
    pub fn is_leader(&self) -> bool {
        *self.receiver.borrow()
            && self
                .fence
                .as_ref()
                .is_none_or(|fence| fence.may_act(Instant::now()))
    }

    /// Yields each time this replica becomes the leader (and once at the start if it already
    /// is), so that every object is reconciled by the new leader.
    pub fn gained(&self) -> impl Stream<Item = ()> + Send + 'static {
        WatchStream::new(self.receiver.clone())
            .filter_map(|leading| futures::future::ready(leading.then_some(())))
    }
}

/// The time of the last successful renewal (when its request was sent, so the deadline runs
/// out before the Lease the API server stored can) and the renew deadline.
#[derive(Clone)]
struct Fence {
    renewed_at: Arc<Mutex<Option<Instant>>>,
    renew_deadline: Duration,
}

impl Fence {
    fn new(renew_deadline: Duration) -> Self {
        Self {
            renewed_at: Arc::default(),
            renew_deadline,
        }
    }

    fn renewed(&self, sent_at: Instant) {
        *self
            .renewed_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(sent_at);
    }

    fn renewed_at(&self) -> Option<Instant> {
        *self
            .renewed_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn may_act(&self, now: Instant) -> bool {
        may_act(self.renewed_at(), now, self.renew_deadline)
    }

    /// When the fence closes, if it is open.
    fn closes_at(&self) -> Option<Instant> {
        self.renewed_at().map(|at| at + self.renew_deadline)
    }
}

/// A leader may act while less than the renew deadline has passed since its last successful
/// renewal was sent (never before the first).
fn may_act(renewed_at: Option<Instant>, now: Instant, renew_deadline: Duration) -> bool {
    renewed_at.is_some_and(|at| now.saturating_duration_since(at) < renew_deadline)
}

/// A candidate may take the Lease when nobody holds it, when it holds it itself (a restart
/// with the same identity, or a renewal after its fence closed), or when the record has not
/// changed for the lease duration by the candidate's own clock (never by the renew time
/// written in it: the replicas' clocks may differ).
fn may_take(
    holder: Option<&str>,
    identity: &str,
    unchanged_since: Instant,
    now: Instant,
    lease_duration: Duration,
) -> bool {
    match holder {
        None | Some("") => true,
        Some(holder) if holder == identity => true,
        Some(_) => now.saturating_duration_since(unchanged_since) >= lease_duration,
    }
}

/// Lease timings.
#[derive(Clone, Copy, Debug)]
pub struct LeaseTimings {
    /// Seconds a Lease stays valid after its last renewal.
    pub duration: u64,
    /// Seconds before expiry by which the holder must have renewed it (else it stops acting).
    pub renew_before: u64,
}

impl LeaseTimings {
    /// How long one Lease call may take: half the renew margin, between 1 s and 5 s, so that
    /// a renewal whose call hangs is given up and tried again before the Lease runs out.
    pub fn call_timeout(&self) -> Duration {
        let half = self.renew_before as f64 / 2.0;
        Duration::from_secs_f64(half.clamp(1.0, 5.0))
    }

    /// A leader that has not renewed for this long stops acting: the lease duration minus the
    /// renew margin (controller-runtime's 15 s lease has a 10 s renew deadline).
    pub fn renew_deadline(&self) -> Duration {
        Duration::from_secs(self.duration.saturating_sub(self.renew_before))
    }

    /// How often the leader renews and a candidate tries: a fifth of the renew deadline, at
    /// most 2 s (controller-runtime's 10 s deadline has a 2 s retry period), so several tries
    /// fit in the deadline, and a candidate takes an abandoned Lease within its duration plus
    /// two periods.
    pub fn retry_period(&self) -> Duration {
        (self.renew_deadline() / 5).clamp(Duration::from_millis(200), Duration::from_secs(2))
    }

    fn lease_duration(&self) -> Duration {
        Duration::from_secs(self.duration)
    }
}

/// A running election. [`Election::step_down`] releases the Lease (when held).
pub struct Election {
    pub state: LeaderState,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Election {
    /// Starts competing for the Lease `namespace/lease_name` as `identity`, on `client` (a
    /// client of the election's own, whose calls time out within [`LeaseTimings::call_timeout`]).
    pub fn start(
        client: Client,
        namespace: &str,
        lease_name: &str,
        identity: &str,
        timings: LeaseTimings,
    ) -> Self {
        let (sender, receiver) = watch::channel(false);
        let fence = Fence::new(timings.renew_deadline());
        let (stop, stopped) = watch::channel(false);
        let elector = Elector {
            leases: Api::namespaced(client, namespace),
            name: lease_name.to_owned(),
            identity: identity.to_owned(),
            timings,
            fence: fence.clone(),
            leading: sender,
            observed: None,
        };
        let task = tokio::spawn(elector.run(stopped));
        Self {
            state: LeaderState {
                receiver,
                fence: Some(fence),
            },
            stop,
            task,
        }
    }

    /// Stops acting, releases the Lease (when held) and ends the election.
    pub async fn step_down(self) {
        let _ = self.stop.send(true);
        match tokio::time::timeout(Duration::from_secs(5), self.task).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "leader election task failed"),
            Err(_) => tracing::warn!("releasing the leader Lease timed out"),
        }
    }
}

/// The Lease record last seen and when it last changed, by this replica's clock.
struct Observed {
    spec: LeaseSpec,
    resource_version: Option<String>,
    changed_at: Instant,
}

struct Elector {
    leases: Api<Lease>,
    name: String,
    identity: String,
    timings: LeaseTimings,
    fence: Fence,
    leading: watch::Sender<bool>,
    observed: Option<Observed>,
}

/// Why one try over the Lease failed.
#[derive(Debug, thiserror::Error)]
enum TryError {
    #[error("{0}")]
    Kube(#[from] kube::Error),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

impl Elector {
    async fn run(mut self, mut stopped: watch::Receiver<bool>) {
        loop {
            // A candidate: try every retry period until the Lease is ours.
            loop {
                let sent_at = Instant::now();
                match self.try_once().await {
                    Ok(true) => {
                        self.fence.renewed(sent_at);
                        break;
                    }
                    Ok(false) => {}
                    Err(error) => tracing::debug!(%error, "could not take the leader Lease"),
                }
                if wait_or_stop(&mut stopped, self.timings.retry_period()).await {
                    return;
                }
            }
            tracing::info!(identity = %self.identity, lease = %self.name, "leading");
            let _ = self.leading.send(true);
            // The leader: renew every retry period; stop acting when the deadline passes.
            loop {
                if wait_or_stop(&mut stopped, self.timings.retry_period()).await {
                    let _ = self.leading.send(false);
                    self.release().await;
                    return;
                }
                let closes_at = self.fence.closes_at().unwrap_or_else(Instant::now);
                let sent_at = Instant::now();
                tokio::select! {
                    renewed = self.try_once() => match renewed {
                        Ok(true) => self.fence.renewed(sent_at),
                        Ok(false) => {
                            tracing::warn!(identity = %self.identity, "another replica holds the leader Lease: stopped leading");
                            break;
                        }
                        Err(error) => tracing::warn!(%error, "could not renew the leader Lease"),
                    },
                    () = tokio::time::sleep_until(closes_at) => {}
                }
                if !self.fence.may_act(Instant::now()) {
                    tracing::warn!(
                        identity = %self.identity,
                        renew_deadline = ?self.timings.renew_deadline(),
                        "the leader Lease was not renewed within the renew deadline: stopped leading"
                    );
                    break;
                }
            }
            let _ = self.leading.send(false);
        }
    }

    /// One try to take or renew the Lease (client-go's tryAcquireOrRenew): read it, and write
    /// it with this replica as the holder if [`may_take`] says so, on the resource version
    /// read (a concurrent writer makes it fail with 409). Within one call timeout.
    async fn try_once(&mut self) -> Result<bool, TryError> {
        let timeout = self.timings.call_timeout();
        match tokio::time::timeout(timeout, self.take_or_renew()).await {
            Ok(result) => result,
            Err(_) => Err(TryError::Timeout(timeout)),
        }
    }

    async fn take_or_renew(&mut self) -> Result<bool, TryError> {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let duration = i32::try_from(self.timings.duration).unwrap_or(i32::MAX);
        let Some(lease) = self.leases.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: kube::api::ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(duration),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            let params = PostParams {
                field_manager: Some(FIELD_MANAGER.to_owned()),
                ..Default::default()
            };
            let created = self.leases.create(&params, &lease).await?;
            self.observe(&created);
            return Ok(true);
        };
        self.observe(&lease);
        let spec = lease.spec.unwrap_or_default();
        let holder = spec.holder_identity.as_deref();
        let unchanged_since = self
            .observed
            .as_ref()
            .map_or_else(Instant::now, |o| o.changed_at);
        let lease_duration = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(self.timings.lease_duration(), Duration::from_secs);
        if !may_take(
            holder,
            &self.identity,
            unchanged_since,
            Instant::now(),
            lease_duration,
        ) {
            return Ok(false);
        }
        let ours = holder == Some(self.identity.as_str());
        let acquire_time = match (&spec.acquire_time, ours) {
            (Some(acquired), true) => acquired.clone(),
            _ => now.clone(),
        };
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!ours);
        let patch = json!({
            "metadata": {"resourceVersion": lease.metadata.resource_version},
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": duration,
                "acquireTime": acquire_time,
                "renewTime": now,
                "leaseTransitions": transitions,
            }
        });
        let written = self
            .leases
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        self.observe(&written);
        Ok(true)
    }

    fn observe(&mut self, lease: &Lease) {
        let spec = lease.spec.clone().unwrap_or_default();
        let resource_version = lease.metadata.resource_version.clone();
        match &mut self.observed {
            Some(observed) if observed.spec == spec => {
                observed.resource_version = resource_version;
            }
            _ => {
                self.observed = Some(Observed {
                    spec,
                    resource_version,
                    changed_at: Instant::now(),
                });
            }
        }
    }

    /// Gives the Lease up on the resource version last written, if it is still ours to give.
    async fn release(&mut self) {
        if !self.fence.may_act(Instant::now()) {
            return;
        }
        let resource_version = self
            .observed
            .as_ref()
            .and_then(|o| o.resource_version.clone());
        let patch = json!({
            "metadata": {"resourceVersion": resource_version},
            "spec": {"holderIdentity": null}
        });
        let params = PatchParams::default();
        let patch = Patch::Merge(&patch);
        let call = self.leases.patch(&self.name, &params, &patch);
        match tokio::time::timeout(self.timings.call_timeout(), call).await {
            Ok(Ok(_)) => tracing::info!("released the leader Lease"),
            Ok(Err(error)) => tracing::warn!(%error, "could not release the leader Lease"),
            Err(_) => tracing::warn!("releasing the leader Lease timed out"),
        }
    }
}

/// Waits `period`; true when told to stop meanwhile (or before).
async fn wait_or_stop(stopped: &mut watch::Receiver<bool>, period: Duration) -> bool {
    let stop = tokio::select! {
        () = tokio::time::sleep(period) => None,
        result = stopped.wait_for(|stop| *stop) => Some(result.is_ok()),
    };
    stop.unwrap_or_else(|| *stopped.borrow())
}

/// The main client behind a fence: a write (POST, PUT, PATCH, DELETE) is refused without
/// reaching the API server while this replica is not the leader ([`LeaderState::is_leader`],
/// which closes at the renew deadline by the local clock). The reconcilers and Events write
/// through it, so a reconcile that was running when leadership was lost writes nothing more;
/// the refusal is a client error, which the reconcilers retry (and the retry finds that this
/// replica no longer leads). Reads pass, so the caches stay warm for a later term.
pub fn fenced_client(client: Client, leader: LeaderState) -> Client {
    let namespace = client.default_namespace().to_owned();
    Client::new(FencedWrites { client, leader }, namespace)
}

/// A write refused because this replica does not lead.
#[derive(Debug, thiserror::Error)]
#[error("not the leader (or the leader Lease was not renewed in time): write refused")]
pub struct NotLeader;

fn is_write(method: &axum::http::Method) -> bool {
    use axum::http::Method;
    [Method::POST, Method::PUT, Method::PATCH, Method::DELETE].contains(method)
}

#[derive(Clone)]
struct FencedWrites {
    client: Client,
    leader: LeaderState,
}

impl tower::Service<axum::http::Request<kube::client::Body>> for FencedWrites {
    type Response = axum::http::Response<kube::client::Body>;
    type Error = kube::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: axum::http::Request<kube::client::Body>) -> Self::Future {
        if is_write(request.method()) && !self.leader.is_leader() {
            return Box::pin(futures::future::ready(Err(kube::Error::Service(Box::new(
                NotLeader,
            )))));
        }
        let client = self.client.clone();
        Box::pin(async move { client.send(request).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timings(duration: u64, renew_before: u64) -> LeaseTimings {
        LeaseTimings {
            duration,
            renew_before,
        }
    }

    #[test]
    fn a_lease_call_gives_up_within_the_renew_margin() {
        assert_eq!(timings(15, 5).call_timeout(), Duration::from_millis(2500));
        assert_eq!(timings(15, 1).call_timeout(), Duration::from_secs(1));
        assert_eq!(timings(15, 14).call_timeout(), Duration::from_secs(5));
    }

    #[test]
    fn the_renew_deadline_and_retry_period_follow_controller_runtime() {
        assert_eq!(timings(15, 5).renew_deadline(), Duration::from_secs(10));
        assert_eq!(timings(15, 5).retry_period(), Duration::from_secs(2));
        assert_eq!(timings(6, 2).renew_deadline(), Duration::from_secs(4));
        assert_eq!(timings(6, 2).retry_period(), Duration::from_millis(800));
        assert_eq!(timings(2, 1).retry_period(), Duration::from_millis(200));
    }

    #[test]
    fn the_fence_closes_at_the_renew_deadline_by_the_local_clock() {
        let deadline = Duration::from_secs(10);
        let renewed = Instant::now();
        assert!(!may_act(None, renewed, deadline), "never renewed");
        assert!(may_act(Some(renewed), renewed, deadline));
        assert!(may_act(
            Some(renewed),
            renewed + Duration::from_millis(9_999),
            deadline
        ));
        assert!(!may_act(Some(renewed), renewed + deadline, deadline));
        assert!(!may_act(
            Some(renewed),
            renewed + Duration::from_secs(60),
            deadline
        ));
        // A renewal stamped later than now (its request was sent after now was read) is open.
        assert!(may_act(
            Some(renewed + Duration::from_secs(1)),
            renewed,
            deadline
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_state_stops_leading_when_its_deadline_passes_without_renewal() {
        let (sender, receiver) = watch::channel(true);
        let fence = Fence::new(Duration::from_secs(4));
        let state = LeaderState {
            receiver,
            fence: Some(fence.clone()),
        };
        assert!(!state.is_leader(), "not before the first renewal");
        fence.renewed(Instant::now());
        assert!(state.is_leader());
        tokio::time::advance(Duration::from_millis(3_900)).await;
        assert!(state.is_leader());
        // The renewal hangs: the fence closes though nothing told the state.
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(!state.is_leader());
        fence.renewed(Instant::now());
        assert!(state.is_leader());
        sender.send(false).expect("receiver alive");
        assert!(!state.is_leader(), "not the holder");
        let (always, _sender) = LeaderState::always();
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert!(always.is_leader());
    }

    #[test]
    fn a_candidate_takes_a_lease_only_when_free_its_own_or_unchanged_for_its_duration() {
        let seen = Instant::now();
        let duration = Duration::from_secs(6);
        assert!(may_take(None, "a", seen, seen, duration));
        assert!(may_take(Some(""), "a", seen, seen, duration));
        assert!(may_take(Some("a"), "a", seen, seen, duration));
        assert!(!may_take(Some("b"), "a", seen, seen, duration));
        assert!(!may_take(
            Some("b"),
            "a",
            seen,
            seen + Duration::from_millis(5_999),
            duration
        ));
        assert!(may_take(Some("b"), "a", seen, seen + duration, duration));
    }

    #[test]
    fn only_mutating_requests_are_fenced() {
        use axum::http::Method;
        for write in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
            assert!(is_write(&write), "{write}");
        }
        for read in [Method::GET, Method::HEAD, Method::OPTIONS] {
            assert!(!is_write(&read), "{read}");
        }
    }

    #[tokio::test]
    async fn the_fenced_client_refuses_writes_before_sending_them() {
        // A client whose requests go nowhere: a refused write must fail with NotLeader, not
        // with a connection error (it never reaches the network).
        let config = kube::Config::new("http://127.0.0.1:9".parse().expect("url"));
        let client = Client::try_from(config).expect("client");
        let (sender, receiver) = watch::channel(false);
        let state = LeaderState {
            receiver,
            fence: Some(Fence::new(Duration::from_secs(4))),
        };
        let fenced = fenced_client(client, state);
        let configmaps: Api<k8s_openapi::api::core::v1::ConfigMap> =
            Api::namespaced(fenced, "default");
        let error = configmaps
            .delete("x", &Default::default())
            .await
            .expect_err("refused");
        assert!(
            matches!(&error, kube::Error::Service(e) if e.is::<NotLeader>()),
            "{error:?}"
        );
        // A read goes through the fence (and fails on the network instead).
        let error = configmaps.get("x").await.expect_err("nothing listens");
        assert!(
            !matches!(&error, kube::Error::Service(e) if e.is::<NotLeader>()),
            "{error:?}"
        );
        drop(sender);
    }
}
