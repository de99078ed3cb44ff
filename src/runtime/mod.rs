//! What the controllers and the HTTP API share at run time: the admin server, telemetry and
//! readiness state.
pub mod admin;
pub mod telemetry;
