//! [`Exec`]: runs a configuration list's plugins for ADD, CHECK, DEL, GC,
//! STATUS and VERSION, like libcni's `CNIConfig`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::invoke::{Call, Inject, build_request, cni_args_string, find_plugin};
use super::{Error, NetworkConfigList, PluginConfig, Result, RuntimeConf, cache};
use crate::conf::{validate_container_id, validate_ifname};
use crate::plugin::Command;
use crate::{Attachment, Version, types};

/// Runs plugins found in `plugin_dirs` (CNI_PATH), caching ADD results under
/// `cache_dir` in libcni's layout, optionally inside a network namespace.
#[derive(Debug, Clone)]
pub struct Exec {
    plugin_dirs: Vec<PathBuf>,
    cache_dir: PathBuf,
    netns: Option<PathBuf>,
}

/// A plugin's answer to VERSION. Versions are strings: plugins may list
/// versions this crate does not support (0.1.0, or newer than 1.1.0).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct VersionInfo {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    #[serde(rename = "supportedVersions", default)]
    pub supported_versions: Vec<String>,
}

impl VersionInfo {
    pub fn supports(&self, version: Version) -> bool {
        self.supported_versions
            .iter()
            .any(|v| v == version.as_str())
    }
}

impl Exec {
    pub fn new(plugin_dirs: Vec<PathBuf>, cache_dir: impl Into<PathBuf>) -> Self {
        Self {
            plugin_dirs,
            cache_dir: cache_dir.into(),
            netns: None,
        }
    }

    /// Runs every plugin inside the network namespace at `netns` (e.g.
    /// `/run/netns/node1`): that namespace is the plugins' host namespace.
    pub fn in_netns(mut self, netns: impl Into<PathBuf>) -> Self {
        self.netns = Some(netns.into());
        self
    }

    pub fn plugin_dirs(&self) -> &[PathBuf] {
        &self.plugin_dirs
    }

    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }

    /// ADD every plugin in order, each getting the previous one's result as
    /// `prevResult`; caches and returns the last result. Not idempotent (a
    /// second ADD fails in the plugins); on failure nothing is cached and the
    /// caller must still DEL, as the spec requires.
    pub fn add_network_list(
        &self,
        list: &NetworkConfigList,
        rt: &RuntimeConf,
    ) -> Result<types::Result> {
        validate(list, rt)?;
        let mut prev: Option<types::Result> = None;
        for plugin in &list.plugins {
            let out = self.attachment_call(list, plugin, Command::Add, rt, prev.as_ref())?;
            let (version, result) =
                types::Result::from_slice(&out, list.cni_version).map_err(|source| {
                    Error::DecodeResult {
                        plugin: plugin.plugin_type.clone(),
                        command: Command::Add,
                        output: String::from_utf8_lossy(&out).into_owned(),
                        source,
                    }
                })?;
            if version != list.cni_version {
                tracing::debug!(plugin = %plugin.plugin_type, %version, "plugin answered in another version; converted");
            }
            prev = Some(result);
        }
        let result = prev.unwrap_or_default();
        cache::write(&self.cache_dir, list, rt, &result)?;
        Ok(result)
    }

    /// Runs ADD, CHECK or DEL of one plugin of `list` for the attachment `rt`, with
    /// `prev_result` as its `prevResult`; returns the plugin's stdout.
    fn attachment_call(
        &self,
        list: &NetworkConfigList,
        plugin: &PluginConfig,
        command: Command,
        rt: &RuntimeConf,
        prev_result: Option<&types::Result>,
    ) -> Result<Vec<u8>> {
        let inject = Inject::Attachment { rt, prev_result };
        let stdin = build_request(&list.name, list.cni_version, plugin, inject);
        self.call(plugin, command, Some(rt), &stdin)
    }

    /// CHECK every plugin in order with the cached ADD result as `prevResult`.
    /// Success without running anything if the list has `disableCheck`. Fails
    /// for lists older than 0.4.0 and when nothing is cached. Read-only.
    pub fn check_network_list(&self, list: &NetworkConfigList, rt: &RuntimeConf) -> Result<()> {
        if !list.cni_version.supports_check() {
            return Err(Error::CheckNotSupported {
                network: list.name.clone(),
                version: list.cni_version,
            });
        }
        if list.disable_check {
            return Ok(());
        }
        validate(list, rt)?;
        let cached =
            cache::read(&self.cache_dir, &list.name, rt, list.cni_version)?.ok_or_else(|| {
                Error::MissingCachedResult {
                    network: list.name.clone(),
                    container_id: rt.container_id.clone(),
                    ifname: rt.ifname.clone(),
                }
            })?;
        for plugin in &list.plugins {
            self.attachment_call(list, plugin, Command::Check, rt, Some(&cached))?;
        }
        Ok(())
    }

    /// DEL every plugin in reverse order, with the cached ADD result as
    /// `prevResult` (0.4.0+, as libcni), then removes the cache. Idempotent:
    /// works without a cache; an unreadable cache is dropped and DEL goes on
    /// without `prevResult` (libcni does the same). Stops at the first error.
    pub fn del_network_list(&self, list: &NetworkConfigList, rt: &RuntimeConf) -> Result<()> {
        validate(list, rt)?;
        let cached = if list.cni_version.supports_check() {
            cache::read(&self.cache_dir, &list.name, rt, list.cni_version).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "ignoring unreadable cached result for DEL");
                None
            })
        } else {
            None
        };
        for plugin in list.plugins.iter().rev() {
            self.attachment_call(list, plugin, Command::Del, rt, cached.as_ref())?;
        }
        cache::delete(&self.cache_dir, &list.name, rt)
    }

    /// Garbage-collects the network, as libcni's `GCNetworkList`: first DELs
    /// every cached attachment of this network not in `valid`, then (1.1.0+)
    /// sends GC to every plugin. Carries on past errors and returns them all.
    /// Does nothing if the list has `disableGC`.
    pub fn gc_network_list(&self, list: &NetworkConfigList, valid: &[Attachment]) -> Result<()> {
        if list.disable_gc {
            return Ok(());
        }
        let keep: HashSet<(&str, &str)> = valid
            .iter()
            .map(|a| (a.container_id.as_str(), a.ifname.as_str()))
            .collect();
        let mut errors = Vec::new();
        match cache::list(&self.cache_dir, &list.name) {
            Ok(cached) => {
                for a in cached {
                    let rt = &a.runtime_conf;
                    if !keep.contains(&(rt.container_id.as_str(), rt.ifname.as_str())) {
                        tracing::info!(network = %list.name, container_id = %rt.container_id, ifname = %rt.ifname, "GC: deleting stale attachment");
                        errors.extend(self.del_network_list(list, rt).err());
                    }
                }
            }
            Err(e) => errors.push(e),
        }
        if list.cni_version.supports_gc_status() {
            let valid = serde_json::to_value(valid).expect("attachments always serialize");
            for plugin in &list.plugins {
                let stdin = build_request(
                    &list.name,
                    list.cni_version,
                    plugin,
                    Inject::Gc {
                        valid: valid.clone(),
                    },
                );
                errors.extend(self.call(plugin, Command::Gc, None, &stdin).err());
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Error::Gc {
                network: list.name.clone(),
                errors,
            })
        }
    }

    /// STATUS every plugin; the first error is returned (its code says 50 or
    /// 51). Lists older than 1.1.0 have no STATUS: success without running
    /// anything, as libcni. Read-only.
    pub fn status_network_list(&self, list: &NetworkConfigList) -> Result<()> {
        if !list.cni_version.supports_gc_status() {
            tracing::debug!(network = %list.name, version = %list.cni_version, "no STATUS before 1.1.0");
            return Ok(());
        }
        for plugin in &list.plugins {
            let stdin = build_request(&list.name, list.cni_version, plugin, Inject::Nothing);
            self.call(plugin, Command::Status, None, &stdin)?;
        }
        Ok(())
    }

    /// Asks a plugin which versions it supports (VERSION). Read-only.
    pub fn version_info(&self, plugin_type: &str) -> Result<VersionInfo> {
        let plugin = PluginConfig {
            plugin_type: plugin_type.to_owned(),
            capabilities: Default::default(),
            raw: Default::default(),
        };
        let stdin = serde_json::json!({"cniVersion": Version::LATEST});
        let out = self.call(&plugin, Command::Version, None, &stdin)?;
        serde_json::from_slice(&out).map_err(|source| Error::DecodeVersion {
            plugin: plugin_type.to_owned(),
            output: String::from_utf8_lossy(&out).into_owned(),
            source,
        })
    }

    /// The cached ADD result of an attachment, in the list's version.
    pub fn cached_result(
        &self,
        list: &NetworkConfigList,
        rt: &RuntimeConf,
    ) -> Result<Option<types::Result>> {
        cache::read(&self.cache_dir, &list.name, rt, list.cni_version)
    }

    /// Every attachment of `network` found in the cache (unreadable files
    /// skipped), e.g. to decide what GC will delete. Read-only.
    pub fn cached_attachments(&self, network: &str) -> Result<Vec<super::CachedAttachment>> {
        cache::list(&self.cache_dir, network)
    }

    /// Where the cached ADD result of an attachment lives.
    pub fn cache_path(&self, network: &str, rt: &RuntimeConf) -> PathBuf {
        cache::path(&self.cache_dir, network, rt)
    }

    fn call(
        &self,
        plugin: &PluginConfig,
        command: Command,
        rt: Option<&RuntimeConf>,
        stdin: &serde_json::Value,
    ) -> Result<Vec<u8>> {
        let path = find_plugin(&plugin.plugin_type, &self.plugin_dirs)?;
        let cni_path = std::env::join_paths(&self.plugin_dirs)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut env = vec![("CNI_PATH", cni_path)];
        if let Some(rt) = rt {
            env.push(("CNI_CONTAINERID", rt.container_id.clone()));
            env.push(("CNI_NETNS", rt.netns.to_string_lossy().into_owned()));
            env.push(("CNI_IFNAME", rt.ifname.clone()));
            env.push(("CNI_ARGS", cni_args_string(&rt.args)));
        }
        tracing::debug!(plugin = %plugin.plugin_type, %command, "running plugin");
        Call {
            plugin: &plugin.plugin_type,
            path: &path,
            command,
            env,
            stdin: serde_json::to_vec(stdin).expect("a Value always serializes"),
            netns: self.netns.as_deref(),
        }
        .run()
    }
}

/// The attachment parameters must be valid before they name a cache file or
/// reach a plugin (libcni validates the same on ADD).
fn validate(list: &NetworkConfigList, rt: &RuntimeConf) -> Result<()> {
    validate_container_id(&rt.container_id)
        .and_then(|()| validate_ifname(&rt.ifname))
        .map_err(|source| Error::InvalidRuntimeConf {
            network: list.name.clone(),
            source,
        })
}
