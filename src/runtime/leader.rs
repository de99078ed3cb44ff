//! Leader election on a Lease (kube-lease-manager): only the holder reconciles; every replica
//! serves the HTTP API. The holder releases the Lease when it stops, so another replica takes
//! over at once instead of after the lease duration.
use futures::{Stream, StreamExt};
use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::{sync::watch, task::JoinHandle};
use tokio_stream::wrappers::WatchStream;

use crate::resources::names::FIELD_MANAGER;

/// Name of the Lease the replicas compete for, unless `--lease-name` says otherwise.
pub const LEASE_NAME: &str = "plugin-operator-leader";

/// Whether this replica holds the Lease, shared by the reconcilers.
#[derive(Clone)]
pub struct LeaderState {
    receiver: watch::Receiver<bool>,
}

impl LeaderState {
    /// A replica that always leads (`--no-leader-election`).
    pub fn always() -> (Self, watch::Sender<bool>) {
        let (sender, receiver) = watch::channel(true);
        (Self { receiver }, sender)
    }

    pub fn is_leader(&self) -> bool {
        *self.receiver.borrow()
    }

    /// Yields each time this replica becomes the leader (and once at the start if it already
    /// is), so that every object is reconciled by the new leader.
    pub fn gained(&self) -> impl Stream<Item = ()> + Send + 'static {
        WatchStream::new(self.receiver.clone())
            .filter_map(|leading| futures::future::ready(leading.then_some(())))
    }
}

/// Lease timings.
#[derive(Clone, Copy, Debug)]
pub struct LeaseTimings {
    /// Seconds a Lease stays valid after its last renewal.
    pub duration: u64,
    /// Seconds before expiry at which the holder renews it.
    pub renew_before: u64,
}

impl LeaseTimings {
    /// How long one Lease call may take: half the renew margin, between 1 s and 5 s, so that
    /// a renewal whose call hangs is given up and tried again before the Lease runs out.
    pub fn call_timeout(&self) -> std::time::Duration {
        let half = self.renew_before as f64 / 2.0;
        std::time::Duration::from_secs_f64(half.clamp(1.0, 5.0))
    }
}

/// A running election. Dropping [`Election::state`]'s receivers and awaiting
/// [`Election::step_down`] releases the Lease.
pub struct Election {
    pub state: LeaderState,
    task: JoinHandle<Result<LeaseManager, kube_lease_manager::LeaseManagerError>>,
}

impl Election {
    pub async fn start(
        client: Client,
        namespace: &str,
        lease_name: &str,
        identity: &str,
        timings: LeaseTimings,
    ) -> Result<Self, kube_lease_manager::LeaseManagerError> {
        let manager = LeaseManagerBuilder::new(client, lease_name)
            .with_namespace(namespace)
            .with_identity(identity)
            .with_duration(timings.duration)
            .with_grace(timings.renew_before)
            .with_field_manager(FIELD_MANAGER)
            .build()
            .await?;
        let (receiver, task) = manager.watch().await;
        Ok(Self {
            state: LeaderState { receiver },
            task,
        })
    }

    /// Releases the Lease (when held) and ends the election.
    pub async fn step_down(self) {
        let Self { state, task } = self;
        drop(state);
        match tokio::time::timeout(std::time::Duration::from_secs(5), task).await {
            Ok(Ok(Ok(_))) => tracing::info!("released the leader Lease"),
            Ok(Ok(Err(error))) => tracing::warn!(%error, "could not release the leader Lease"),
            Ok(Err(error)) => tracing::warn!(%error, "leader election task failed"),
            Err(_) => tracing::warn!("releasing the leader Lease timed out"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_lease_call_gives_up_within_the_renew_margin() {
        let timings = |renew_before| LeaseTimings {
            duration: 15,
            renew_before,
        };
        assert_eq!(timings(5).call_timeout(), Duration::from_millis(2500));
        assert_eq!(timings(1).call_timeout(), Duration::from_secs(1));
        assert_eq!(timings(14).call_timeout(), Duration::from_secs(5));
    }
}
