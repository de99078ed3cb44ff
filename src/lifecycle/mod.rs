//! Pure decisions, without the cluster: which version an install runs ([`resolve`]) and which
//! phase it is in ([`phase`]).
pub mod phase;
pub mod resolve;
