//! The runtime half: what a container runtime does with a network
//! configuration list (SPEC.md section 3), compatible with libcni's behaviour
//! and on-disk result cache.
//!
//! Plugins run as child processes (synchronously: they are short-lived). With
//! [`Exec::in_netns`] they run inside a given network namespace, which then
//! is their "host" namespace — how the lab runs plugins on a simulated node.

use std::path::PathBuf;
use std::process::ExitStatus;

use serde_json::{Map, Value};

use crate::plugin::Command;

mod cache;
mod conflist;
mod exec;
mod invoke;

pub use cache::{CACHE_KIND, CachedAttachment};
pub use conflist::{NetworkConfigList, PluginConfig};
pub use exec::{Exec, VersionInfo};

/// The per-attachment parameters of an ADD, CHECK or DEL.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuntimeConf {
    pub container_id: String,
    /// The pod's network namespace (CNI_NETNS).
    pub netns: PathBuf,
    pub ifname: String,
    /// CNI_ARGS pairs.
    pub args: Vec<(String, String)>,
    /// Capability arguments, e.g. `portMappings`; each plugin gets those it
    /// declares in `capabilities`, in `runtimeConfig`.
    pub capability_args: Map<String, Value>,
}

/// Runtime-side errors; each names the step and the object.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("read network config {path}: {source}")]
    ReadConf {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parse network config: {source}")]
    ParseConf { source: serde_json::Error },
    #[error("network config field {field:?} is missing or has the wrong type")]
    ConfField { field: String },
    #[error("network config has invalid name: {source}")]
    ConfName { source: crate::Error },
    #[error("network config offers no supported CNI version (offered {offered:?})")]
    NoSupportedVersion { offered: Vec<String> },
    #[error("network config list {network:?} has no plugins")]
    NoPlugins { network: String },
    #[error("plugin #{index} of {network:?}: field {field:?} is missing or invalid")]
    PluginField {
        network: String,
        index: usize,
        field: &'static str,
    },
    #[error("invalid attachment parameters for {network:?}: {source}")]
    InvalidRuntimeConf {
        network: String,
        source: crate::Error,
    },
    #[error("plugin type {plugin:?} is not a file name")]
    InvalidPluginType { plugin: String },
    #[error("plugin {plugin:?} not found in {dirs:?}")]
    PluginNotFound { plugin: String, dirs: Vec<PathBuf> },
    #[error("open network namespace {path} to run plugins in: {source}")]
    OpenNetns {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("start plugin {plugin:?} ({path}): {source}")]
    Spawn {
        plugin: String,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The plugin reported a CNI error: its code, msg and details are in `error`.
    #[error("plugin {plugin:?} failed ({command}): {error}")]
    Plugin {
        plugin: String,
        command: Command,
        error: crate::Error,
        stderr: String,
    },
    #[error(
        "plugin {plugin:?} failed ({command}) with {status} and no error JSON; stdout {stdout:?}, stderr {stderr:?}"
    )]
    PluginExit {
        plugin: String,
        command: Command,
        status: ExitStatus,
        stdout: String,
        stderr: String,
    },
    #[error("plugin {plugin:?} ({command}) printed an undecodable result {output:?}: {source}")]
    DecodeResult {
        plugin: String,
        command: Command,
        output: String,
        source: crate::types::ResultError,
    },
    #[error("plugin {plugin:?} printed undecodable VERSION output {output:?}: {source}")]
    DecodeVersion {
        plugin: String,
        output: String,
        source: serde_json::Error,
    },
    #[error("network {network:?} has CNI version {version}, which has no CHECK")]
    CheckNotSupported {
        network: String,
        version: crate::Version,
    },
    #[error(
        "no cached ADD result for network {network:?}, container {container_id:?}, interface {ifname:?}"
    )]
    MissingCachedResult {
        network: String,
        container_id: String,
        ifname: String,
    },
    #[error("read cached result {path}: {source}")]
    ReadCache {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("decode cached result {path}: {reason}")]
    DecodeCache { path: PathBuf, reason: String },
    #[error("write cached result {path}: {source}")]
    WriteCache {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("delete cached result {path}: {source}")]
    DeleteCache {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("GC of network {network:?} had {} error(s): {}", errors.len(), join(errors))]
    Gc { network: String, errors: Vec<Error> },
}

fn join(errors: &[Error]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl Error {
    /// The CNI error a plugin reported, if this is one.
    pub fn cni_error(&self) -> Option<&crate::Error> {
        match self {
            Error::Plugin { error, .. } => Some(error),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
