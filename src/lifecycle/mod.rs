//! Pure decisions, without the cluster: which plugin an install may use ([`access`]), which of a
//! plugin's versions may run ([`versions`]), which version an install runs ([`resolve`]) and
//! which phase it is in ([`phase`]).
pub mod access;
pub mod phase;
pub mod resolve;
pub mod versions;
