//! The ADD result, held in one internal (1.1.0-shaped) form and converted to
//! and from every supported version on the wire.
//!
//! Differences between versions handled here:
//! - 0.3.x/0.4.0 carry `ips[].version` ("4"/"6"); 1.0.0 dropped it. It is
//!   ignored on input (the address says it) and computed from the address on
//!   output.
//! - 1.1.0 added `interfaces[].mtu/socketPath/pciID` and
//!   `routes[].mtu/advmss/priority/table/scope`. They are accepted on input in
//!   any version (as libcni does) and dropped when emitting an older version.
//!
//! Keys this crate does not know are kept in each object's `extra` map and
//! emitted unchanged in every version, so a chained plugin passes through
//! what another plugin added. `extra` must not hold keys of the typed fields.

use std::net::IpAddr;

pub use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::Version;

/// A result could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum ResultError {
    #[error("result is not a JSON object")]
    NotAnObject,
    #[error("result field cniVersion is not a string")]
    VersionNotString,
    #[error("result has {0}")]
    Version(#[from] crate::version::UnsupportedVersion),
    #[error("decode result: {0}")]
    Decode(#[from] serde_json::Error),
}

/// The result of ADD (SPEC.md section 5, "ADD Success").
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Result {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Dns::is_empty")]
    pub dns: Dns,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// 1.1.0 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Netns path for interfaces inside the container; `None` on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// 1.1.0 only.
    #[serde(
        default,
        rename = "socketPath",
        skip_serializing_if = "Option::is_none"
    )]
    pub socket_path: Option<String>,
    /// 1.1.0 only.
    #[serde(default, rename = "pciID", skip_serializing_if = "Option::is_none")]
    pub pci_id: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Address with prefix length, host bits kept ("10.1.0.5/16").
    pub address: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`; absent in IPAM plugin results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<u32>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    /// 1.1.0 only, like `advmss`, `priority`, `table` and `scope`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u32>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
            && self.extra.is_empty()
    }
}

impl IpConfig {
    pub fn new(address: IpNet) -> Self {
        Self {
            address,
            gateway: None,
            interface: None,
            extra: Map::new(),
        }
    }

    /// "4" or "6", the value of `ips[].version` in 0.3.x/0.4.0 results.
    pub fn ip_version(&self) -> &'static str {
        match self.address {
            IpNet::V4(_) => "4",
            IpNet::V6(_) => "6",
        }
    }
}

impl Route {
    pub fn new(dst: IpNet) -> Self {
        Self {
            dst,
            gw: None,
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
            extra: Map::new(),
        }
    }
}

const INTERFACE_1_1_KEYS: [&str; 3] = ["mtu", "socketPath", "pciID"];
const ROUTE_1_1_KEYS: [&str; 5] = ["mtu", "advmss", "priority", "table", "scope"];

impl Result {
    /// Decodes a result whose wire version is `version` (e.g. a `prevResult`,
    /// whose version is its configuration's). A `cniVersion` key in `value` is
    /// ignored; use [`Result::from_slice`] to honour it.
    pub fn from_value(value: Value, version: Version) -> std::result::Result<Self, ResultError> {
        if !value.is_object() {
            return Err(ResultError::NotAnObject);
        }
        let mut result: Result = serde_json::from_value(value)?;
        result.extra.remove("cniVersion");
        // `version` is a known key in 0.x results and obsolete since 1.0.0: in
        // neither case is it an unknown key to pass through.
        for ip in &mut result.ips {
            ip.extra.remove("version");
        }
        tracing::trace!(%version, "decoded result");
        Ok(result)
    }

    /// Decodes a plugin's output. Its own `cniVersion` wins; a result without
    /// one is taken to be in `default_version` (libcni does the same, see
    /// containernetworking/cni#895). Returns the version it was in.
    pub fn from_slice(
        bytes: &[u8],
        default_version: Version,
    ) -> std::result::Result<(Version, Self), ResultError> {
        let value: Value = serde_json::from_slice(bytes)?;
        let version = match value.get("cniVersion") {
            None => default_version,
            Some(Value::String(s)) if s.is_empty() => default_version,
            Some(Value::String(s)) => s.parse()?,
            Some(_) => return Err(ResultError::VersionNotString),
        };
        Ok((version, Self::from_value(value, version)?))
    }

    /// The result as a JSON object in `version`, `cniVersion` first.
    pub fn to_value(&self, version: Version) -> Value {
        let Value::Object(body) = serde_json::to_value(self).expect("a Result always serializes")
        else {
            unreachable!("a Result serializes to an object")
        };
        let mut out = Map::new();
        out.insert("cniVersion".into(), version.as_str().into());
        for (key, mut value) in body {
            match key.as_str() {
                "ips" if version.has_ip_version_field() => {
                    for (ip, obj) in self.ips.iter().zip(objects_mut(&mut value)) {
                        obj.insert("version".into(), ip.ip_version().into());
                    }
                }
                "interfaces" if !version.has_1_1_result_fields() => {
                    for obj in objects_mut(&mut value) {
                        INTERFACE_1_1_KEYS.iter().for_each(|k| drop(obj.remove(*k)));
                    }
                }
                "routes" if !version.has_1_1_result_fields() => {
                    for obj in objects_mut(&mut value) {
                        ROUTE_1_1_KEYS.iter().for_each(|k| drop(obj.remove(*k)));
                    }
                }
                _ => {}
            }
            out.insert(key, value);
        }
        Value::Object(out)
    }

    /// [`Result::to_value`] as bytes.
    pub fn to_vec(&self, version: Version) -> Vec<u8> {
        serde_json::to_vec(&self.to_value(version)).expect("a Value always serializes")
    }
}

fn objects_mut(array: &mut Value) -> impl Iterator<Item = &mut Map<String, Value>> {
    array
        .as_array_mut()
        .into_iter()
        .flatten()
        .filter_map(Value::as_object_mut)
}

#[cfg(test)]
#[path = "types_tests.rs"]
mod tests;
