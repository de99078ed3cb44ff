//! Development tooling for plugin-operator: the node simulator and the end-to-end test kit.
//! Never part of the operator image.
pub mod fault_proxy;
pub mod sim;
pub mod testkit;
