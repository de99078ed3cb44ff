#![deny(warnings)]
//! plugin-operator: runs plugins on a Kubernetes cluster.
//!
//! Data flows one way: watches fill the caches; the reconcilers and the HTTP API read them; only
//! apply and status (and the API's writes on a caller's behalf) talk back to the API server.
pub mod api;
pub mod cli;
pub mod lifecycle;
pub mod reconcile;
pub mod resources;
pub mod runtime;

mod operator;
pub use operator::{RunError, run};
