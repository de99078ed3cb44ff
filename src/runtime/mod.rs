//! What the controllers and the HTTP API share at run time: the watch caches and their lookups,
//! how their watches recover from a cut ([`watch`]) and watch several namespaces ([`namespaces`]), API calls with a timeout ([`call`]), the
//! clock, random secrets, leader election, the admin server, metrics and telemetry, retry delays
//! ([`backoff`]). Uses only `resources` and `lifecycle`.
pub mod admin;
pub mod backoff;
pub mod cache;
pub mod call;
pub mod clock;
pub mod index;
pub mod leader;
mod lookup;
pub mod metrics;
pub mod namespaces;
pub mod random;
pub mod telemetry;
pub mod watch;
