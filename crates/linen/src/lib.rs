//! Linen: a chained CNI plugin that puts an OVS bridge with VXLAN tunnels behind the pods'
//! Linux bridge. The library holds the rules every Linen binary shares (configuration, the
//! OVS data model, tunnel naming, MTU) and the plugin's work; `main.rs` only dispatches.

pub mod config;
pub mod error;
pub mod hostport;
pub mod install;
pub mod link;
pub mod model;
pub mod mtu;
pub mod naming;
pub mod ovs;
pub mod plugin;
