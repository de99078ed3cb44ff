//! The routes, one module per thing they serve; each module's first line says which seed's
//! routes it answers (the documents in `seeds/` beside the product contract).
//!
//! | module | seed | serves |
//! |---|---|---|
//! | [`endpoints`] | 000 | where to reach a plugin's installs; failure reports |
//! | [`registry`] | 001 | the Plugins registered per account (namespace) |
//! | [`instances`] | 002 | installed plugins: active state, config |
//! | [`plugin_services`] | 003 | plugin tokens, and the services plugins call: config, storage, jobs |
//! | [`versions`] | 004 | the details of a version |
pub mod endpoints;
pub mod instances;
pub mod plugin_services;
pub mod registry;
pub mod versions;
