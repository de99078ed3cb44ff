//! The PluginInstall controller, a pipeline of four steps:
//!
//! 1. **observe** ([`observe()`]): everything the decision needs, read into a plain [`World`]
//!    value: the install, its Plugin and versions, its Deployment and pods (from the caches), its
//!    `configFrom` Secrets and the metadata of its credentials Secret (from the API server), an
//!    external plugin's health (an HTTP check), the time and a fresh client secret.
//! 2. **plan** ([`plan()`]): pure. It decides first (is the spec valid, which version, which
//!    phase, restart or revert), then builds the children once, the credentials Secret among
//!    them.
//! 3. **apply**: writes the credentials Secret and the children the plan built, each only when
//!    it differs from what is there.
//! 4. **status**: writes the status the plan decided, and an Event when the phase changed. When
//!    the API server refused a write of apply (quota, RBAC, admission, invalid), the status says
//!    so (`Ready=False`, [`refused`]) and an Event announces it; the error is then retried with
//!    growing delays.
//!
//! Only observe, apply and status reach outside the process.
mod observe;
mod outcome;
mod plan;
#[cfg(test)]
mod scenarios;
pub mod views;

use std::sync::Arc;

use kube::{Resource, ResourceExt, runtime::controller::Action};

use super::{Context, Error, apply, events::Refused};
use crate::resources::{PluginInstall, conditions::reason};

pub use observe::{ForeignObject, ReadError, SecretConfigError, World, observe};
pub use plan::{
    ChildrenPlan, CredentialsPlan, NameConflict, Plan, RESYNC, name_conflict_message, plan, refused,
};

pub async fn reconcile(install: Arc<PluginInstall>, ctx: Arc<Context>) -> Result<Action, Error> {
    if !ctx.leader.is_leader() || install.meta().deletion_timestamp.is_some() {
        ctx.recent.installs.forget(&install);
        ctx.service_creates.forget(
            &install.namespace().unwrap_or_default(),
            &install.name_any(),
        );
        return Ok(Action::await_change());
    }
    let install = ctx.recent.installs.fresh(install);
    let started = std::time::Instant::now();
    let world = observe(&install, &ctx).await?;
    let observed = started.elapsed();
    let Plan {
        children,
        credentials,
        status,
        transition,
        name_conflict,
        requeue,
    } = plan(&world)?;
    let planned = started.elapsed();
    // Seed 003 credentials: with the children when there are some (before the Deployment).
    if !matches!(children, ChildrenPlan::Apply(_)) {
        apply::credentials_or_warn(&ctx, &credentials).await;
    }
    let applied = match children {
        ChildrenPlan::Keep => Ok(()),
        ChildrenPlan::Apply(children) => {
            // A new Service is created in the background on the first tries; once writes of
            // this install fail in a row, here, so that its retries keep their delays.
            let in_background = !ctx.backoffs.failing(&super::backoff_key(&*install));
            apply::children(&ctx, &install, &children, &credentials, in_background).await
        }
        ChildrenPlan::RemoveDeployment => apply::remove_deployment(&ctx, &install).await,
        ChildrenPlan::External(service_account) => {
            apply::external(&ctx, &install, &service_account).await
        }
    };
    // Status is written even when a write of the children failed: a refusal no retry can fix
    // is reported there (and in an Event when it is new), a transient failure is only retried.
    let mut status = status;
    let mut refusal = None;
    if let Err(error) = &applied
        && let Some(kind) = error.refusal()
    {
        let message = error.user_message();
        let generation = install.meta().generation;
        if refused(
            &mut status,
            install.status.as_ref(),
            kind.reason(),
            &message,
            world.now,
            generation,
        ) {
            refusal = Some(Refused {
                reason: kind.reason().to_owned(),
                message,
            });
        }
    }
    let children_applied = started.elapsed();
    apply::status(&ctx, &ctx.recent.installs, &*install, &status).await?;
    // Where a reconcile's time goes, for tuning (RUST_LOG=plugin_operator::reconcile=debug).
    tracing::debug!(
        install = %install.name_any(),
        namespace = ?install.namespace(),
        phase = ?status.phase,
        pods = world.pods.len(),
        observe_ms = observed.as_millis(),
        plan_ms = (planned - observed).as_millis(),
        apply_ms = (children_applied - planned).as_millis(),
        status_ms = (started.elapsed() - children_applied).as_millis(),
        "reconciled"
    );
    if let Some(transition) = &transition {
        ctx.events
            .publish(&install, transition, ctx.clock.now())
            .await;
    }
    if let Some(refused) = &refusal {
        ctx.events.publish(&install, refused, ctx.clock.now()).await;
    }
    applied?;
    if let Some(conflict) = name_conflict {
        if conflict.announce {
            let refused = Refused {
                reason: reason::NAME_CONFLICT.to_owned(),
                message: conflict.message.clone(),
            };
            ctx.events
                .publish(&install, &refused, ctx.clock.now())
                .await;
        }
        // Retried like a refused write: from 5 s, doubling; the name may be freed meanwhile.
        return Err(Error::NameConflict(conflict.message));
    }
    Ok(ctx.requeue(requeue))
}
