//! The CNI protocol, both halves, for spec versions 0.3.0 to 1.1.0.
//!
//! - Plugin side: [`plugin::dispatch`] / [`plugin::run`] turn env + stdin into
//!   a call on a [`plugin::Plugin`] and print its result or error.
//! - Runtime side: [`runtime`] executes a network configuration list the way a
//!   container runtime does (libcni-compatible result cache).
//!
//! Shared: [`Version`], [`Error`] (the error JSON), [`types::Result`] (the ADD
//! result in every version) and [`NetConf`] (a plugin's stdin).

pub mod conf;
pub mod error;
pub mod plugin;
pub mod runtime;
pub mod types;
pub mod version;

pub use conf::{Attachment, NetConf};
pub use error::Error;
pub use version::Version;

// Dependency types in the public API.
pub use ipnet;
pub use serde_json;
