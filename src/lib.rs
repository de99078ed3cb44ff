#![deny(warnings)]
//! plugin-operator: runs plugins on a Kubernetes cluster.
//!
//! # Layers
//!
//! ```text
//! resources  ←  lifecycle  ←  runtime  ←  reconcile ┐
//!                                      ←  api       ┴ ←  operator.rs
//! ```
//!
//! - [`resources`]: what users write and read: the CRD types, names, labels, annotations, the
//!   field manager, conditions, pure validation.
//! - [`lifecycle`]: pure decisions: which plugin an install may use, which versions may run,
//!   version resolution, the phase from what is observed.
//! - [`runtime`]: what runs beside them: the watch caches and their lookups, API calls with a
//!   timeout, the clock, random secrets, leader election, metrics, the admin server.
//! - [`reconcile`] (the controllers: observe → plan → apply → status) and [`api`] (the HTTP API)
//!   stand side by side on top of those.
//! - `operator.rs` wires everything together; `main.rs` and [`cli`] are the command line.
//!
//! **The rule:** a module uses only its own layer and the layers to its left. `runtime` uses
//! only `resources` and `lifecycle`; `reconcile` and `api` never use each other; nothing but
//! `operator.rs` uses `reconcile`; binaries beside the operator's (`src/bin/`, the kubectl
//! plugin) use only `resources` and `lifecycle`. A unit test (`layers.rs`) reads the sources and fails when a
//! path runs back (`use crate::{reconcile::…}`, `super::super::reconcile`, an inline
//! `crate::reconcile::x::y(…)`). Something both sides need moves down to where both can reach it.
//!
//! Data flows one way: watches fill the caches; the controllers and the HTTP API read them. The
//! controllers write children, status, finalizers and Events, and read what the caches do not
//! hold (the install's Secrets); the API writes on a caller's behalf and asks the API server
//! what a request needs that no cache holds (reviews, tokens, credentials, storage, jobs).
pub mod api;
pub mod cli;
#[cfg(test)]
mod layers;
pub mod lifecycle;
pub mod reconcile;
pub mod resources;
pub mod runtime;

mod operator;
pub use operator::{RunError, run};
