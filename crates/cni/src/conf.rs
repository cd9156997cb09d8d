//! A plugin's configuration as it arrives on stdin, and the validation rules
//! the spec puts on names.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{Error, Version, types};

/// GC input key (SPEC.md 1.1.0).
pub const VALID_ATTACHMENTS_KEY: &str = "cni.dev/valid-attachments";
/// The key SPEC.md 1.1.0 first printed by mistake (containernetworking/cni#1101);
/// libcni sends both, plugins accept both.
pub const LEGACY_ATTACHMENTS_KEY: &str = "cni.dev/attachments";

/// A still-valid attachment, as listed in a GC request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The configuration a plugin receives on stdin.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    pub cni_version: Version,
    pub name: String,
    /// `type`: the plugin binary's name. Not validated: the runtime chose the
    /// binary by it already.
    pub plugin_type: String,
    /// Set by the admin in the list; the runtime should strip it before
    /// calling, so it is usually empty here.
    pub capabilities: BTreeMap<String, bool>,
    /// Capability arguments the runtime passed (empty when absent).
    pub runtime_config: Map<String, Value>,
    /// `args`, passed through as is (CONVENTIONS.md).
    pub args: Option<Value>,
    /// `prevResult`, decoded in this configuration's version.
    pub prev_result: Option<types::Result>,
    /// `prevResult` exactly as received.
    pub raw_prev_result: Option<Value>,
    /// GC only: `cni.dev/valid-attachments` (or the legacy key). `None` when
    /// neither key is present; an explicit `null` is an empty list.
    pub valid_attachments: Option<Vec<Attachment>>,
    /// The whole object, for the plugin's own fields; see [`NetConf::plugin_config`].
    pub raw: Value,
}

/// The protocol keys, decoded leniently enough to report the right error code.
#[derive(Deserialize)]
struct Wire {
    #[serde(default, rename = "cniVersion")]
    cni_version: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default, rename = "type")]
    plugin_type: Option<String>,
    #[serde(default)]
    capabilities: Option<BTreeMap<String, bool>>,
    #[serde(default, rename = "runtimeConfig")]
    runtime_config: Option<Map<String, Value>>,
    #[serde(default)]
    args: Option<Value>,
    #[serde(default, rename = "prevResult")]
    prev_result: Option<Value>,
}

impl NetConf {
    /// Decodes stdin. Errors carry the codes skel uses, in skel's order:
    /// not a JSON object or a protocol key of the wrong type: 6; missing or
    /// invalid `name`: 7; missing or unsupported `cniVersion`: 1 (libcni reads a
    /// missing version as 0.1.0, which nobody here supports); bad `prevResult`
    /// or attachments list: 6.
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        let raw: Value = serde_json::from_slice(bytes).map_err(|e| {
            Error::decoding_failure(format!("error unmarshalling network config: {e}"))
        })?;
        Self::from_value(raw)
    }

    /// [`NetConf::parse`] for an already decoded value.
    pub fn from_value(raw: Value) -> Result<Self, Error> {
        if !raw.is_object() {
            return Err(Error::decoding_failure(
                "network config is not a JSON object",
            ));
        }
        let wire: Wire = serde_json::from_value(raw.clone()).map_err(|e| {
            Error::decoding_failure(format!("error unmarshalling network config: {e}"))
        })?;
        let name = wire.name.unwrap_or_default();
        validate_network_name(&name)?;
        let cni_version = match wire.cni_version.as_deref() {
            None | Some("") => {
                return Err(
                    Error::incompatible_version("incompatible CNI versions").with_details(
                        "config has no cniVersion (read as 0.1.0), which is not supported",
                    ),
                );
            }
            Some(v) => v.parse::<Version>().map_err(|e| {
                Error::incompatible_version("incompatible CNI versions").with_details(e.to_string())
            })?,
        };
        let raw_prev_result = wire.prev_result.filter(|v| !v.is_null());
        let prev_result = raw_prev_result
            .clone()
            .map(|v| types::Result::from_value(v, cni_version))
            .transpose()
            .map_err(|e| Error::decoding_failure(format!("error parsing prevResult: {e}")))?;
        let valid_attachments = [VALID_ATTACHMENTS_KEY, LEGACY_ATTACHMENTS_KEY]
            .iter()
            .find_map(|key| raw.get(*key).map(|v| (*key, v.clone())))
            .map(|(key, v)| {
                serde_json::from_value::<Option<Vec<Attachment>>>(v)
                    .map(Option::unwrap_or_default)
                    .map_err(|e| Error::decoding_failure(format!("error parsing {key}: {e}")))
            })
            .transpose()?;
        Ok(Self {
            cni_version,
            name,
            plugin_type: wire.plugin_type.unwrap_or_default(),
            capabilities: wire.capabilities.unwrap_or_default(),
            runtime_config: wire.runtime_config.unwrap_or_default(),
            args: wire.args,
            prev_result,
            raw_prev_result,
            valid_attachments,
            raw,
        })
    }

    /// Deserializes the plugin's own fields from the raw config (unknown keys,
    /// including the protocol's, are the plugin type's business). Fails with
    /// code 7, invalid network config.
    pub fn plugin_config<T: DeserializeOwned>(&self) -> Result<T, Error> {
        T::deserialize(&self.raw).map_err(|e| {
            Error::invalid_config(format!("invalid {} plugin configuration", self.plugin_type))
                .with_details(e.to_string())
        })
    }
}

fn is_valid_name(s: &str) -> bool {
    // `[a-zA-Z0-9][a-zA-Z0-9_.\-]*`, the spec's rule for container IDs and network names.
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Network name rule (SPEC.md section 1). Code 7, as skel.
pub fn validate_network_name(name: &str) -> Result<(), Error> {
    if name.is_empty() {
        return Err(Error::invalid_config("missing network name"));
    }
    if !is_valid_name(name) {
        return Err(
            Error::invalid_config("invalid characters found in network name").with_details(name),
        );
    }
    Ok(())
}

/// CNI_CONTAINERID rule (SPEC.md section 2). Code 4, as skel (which uses 3
/// only for an empty id, a case the dispatcher reports as a missing variable).
pub fn validate_container_id(id: &str) -> Result<(), Error> {
    if !is_valid_name(id) {
        return Err(Error::invalid_env("invalid characters in CNI_CONTAINERID").with_details(id));
    }
    Ok(())
}

/// The kernel's `dev_valid_name`, on bytes (the one interface-name rule of the workspace:
/// CNI_IFNAME here, and every name Linen looks up or passes on): 1 to 15 bytes, not `.` or
/// `..`, and no `/`, `:`, NUL or byte the kernel's `isspace` counts (`\t \n \v \f \r`,
/// space and 0xA0: so `brà`, whose UTF-8 ends in 0xA0, is refused, while `é` is not).
pub fn is_valid_ifname(name: &str) -> bool {
    ifname_problem(name).is_none()
}

fn ifname_problem(name: &str) -> Option<&'static str> {
    let b = name.as_bytes();
    if b.is_empty() {
        Some("is empty")
    } else if b.len() > 15 {
        Some("is longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("is . or ..")
    } else if b
        .iter()
        .any(|&c| matches!(c, b'/' | b':' | 0 | b'\t'..=b'\r' | b' ' | 0xa0))
    {
        Some("contains /, :, NUL or whitespace")
    } else {
        None
    }
}

/// CNI_IFNAME rule: [`is_valid_ifname`], with what is wrong. Code 4.
pub fn validate_ifname(name: &str) -> Result<(), Error> {
    let Some(why) = ifname_problem(name) else {
        return Ok(());
    };
    Err(Error::invalid_env(format!("CNI_IFNAME {why}")).with_details(name))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn parses_spec_request() {
        // The tuning request from SPEC.md's "Add example", plus args.
        let conf = NetConf::parse(
            json!({
                "cniVersion": "1.1.0", "name": "dbnet", "type": "tuning",
                "sysctl": {"net.core.somaxconn": "500"},
                "runtimeConfig": {"mac": "00:11:22:33:44:66"},
                "args": {"cni": {"labels": []}},
                "prevResult": {
                    "ips": [{"address": "10.1.0.5/16", "gateway": "10.1.0.1", "interface": 2}],
                    "interfaces": [{"name": "cni0"}, {"name": "veth3243"},
                                   {"name": "eth0", "sandbox": "/var/run/netns/blue"}]
                }
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(conf.cni_version, Version::V1_1_0);
        assert_eq!(conf.name, "dbnet");
        assert_eq!(conf.plugin_type, "tuning");
        assert_eq!(conf.runtime_config["mac"], "00:11:22:33:44:66");
        assert!(conf.args.is_some());
        let prev = conf.prev_result.as_ref().unwrap();
        assert_eq!(prev.ips[0].interface, Some(2));
        assert_eq!(
            conf.raw_prev_result.as_ref().unwrap()["ips"][0]["gateway"],
            "10.1.0.1"
        );
        assert_eq!(conf.valid_attachments, None);

        #[derive(Deserialize)]
        struct Tuning {
            sysctl: BTreeMap<String, String>,
        }
        let t: Tuning = conf.plugin_config().unwrap();
        assert_eq!(t.sysctl["net.core.somaxconn"], "500");
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Strict {
            mtu: u32,
        }
        assert_eq!(conf.plugin_config::<Strict>().unwrap_err().code, 7);
    }

    #[test]
    fn parse_error_codes() {
        let table: &[(&str, u32)] = &[
            ("", 6),
            ("{", 6),
            ("[]", 6),
            (r#"{"cniVersion": 1, "name": "n"}"#, 6),
            (r#"{"cniVersion": "1.0.0"}"#, 7),
            (r#"{"cniVersion": "1.0.0", "name": "-bad"}"#, 7),
            (r#"{"cniVersion": "1.0.0", "name": "a/b"}"#, 7),
            (r#"{"name": "n"}"#, 1),
            (r#"{"cniVersion": "0.2.0", "name": "n"}"#, 1),
            (r#"{"cniVersion": "9.9.9", "name": "n"}"#, 1),
            (
                r#"{"cniVersion": "1.0.0", "name": "n", "prevResult": []}"#,
                6,
            ),
            (
                r#"{"cniVersion": "1.0.0", "name": "n", "prevResult": {"ips": [{"address": "x"}]}}"#,
                6,
            ),
            (
                r#"{"cniVersion": "1.1.0", "name": "n", "cni.dev/valid-attachments": [{"ifname": "a"}]}"#,
                6,
            ),
        ];
        for (input, code) in table {
            let err = NetConf::parse(input.as_bytes()).unwrap_err();
            assert_eq!(err.code, *code, "{input}: {err}");
        }
    }

    #[test]
    fn prev_result_in_config_version() {
        let conf = NetConf::parse(
            br#"{"cniVersion":"0.4.0","name":"n","prevResult":{"cniVersion":"0.4.0",
                "ips":[{"version":"4","address":"10.0.0.2/24"}]}}"#,
        )
        .unwrap();
        let prev = conf.prev_result.unwrap();
        assert!(prev.ips[0].extra.is_empty());
        assert_eq!(prev.to_value(Version::V0_4_0)["ips"][0]["version"], "4");
        let conf =
            NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n","prevResult":null}"#).unwrap();
        assert_eq!(conf.prev_result, None);
    }

    #[test]
    fn gc_attachments_keys() {
        let a = |c: &str, i: &str| Attachment {
            container_id: c.into(),
            ifname: i.into(),
        };
        let table: &[(&str, Option<Vec<Attachment>>)] = &[
            (r#"{}"#, None),
            (r#"{"cni.dev/valid-attachments": null}"#, Some(vec![])),
            (r#"{"cni.dev/valid-attachments": []}"#, Some(vec![])),
            (
                r#"{"cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}]}"#,
                Some(vec![a("c1", "eth0")]),
            ),
            (
                r#"{"cni.dev/attachments": [{"containerID": "c2", "ifname": "net1"}]}"#,
                Some(vec![a("c2", "net1")]),
            ),
        ];
        for (extra, want) in table {
            let mut v: Value = serde_json::from_str(extra).unwrap();
            v["cniVersion"] = "1.1.0".into();
            v["name"] = "n".into();
            let conf = NetConf::from_value(v).unwrap();
            assert_eq!(&conf.valid_attachments, want, "{extra}");
        }
    }

    #[test]
    fn container_ids() {
        for ok in ["a", "0", "abc-DEF_1.2", "4f3c9d0e"] {
            assert!(validate_container_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "_a", ".a", "a b", "a/b", "a:b", "ä", "a\n"] {
            assert_eq!(validate_container_id(bad).unwrap_err().code, 4, "{bad:?}");
        }
    }

    #[test]
    fn ifnames() {
        for ok in ["eth0", "a", "123456789012345", "net-1.2_x", "é"] {
            assert!(validate_ifname(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "1234567890123456",
            ".",
            "..",
            "a/b",
            "a:b",
            "a b",
            "a\tb",
            "ééééééééé",
            "a\0b",
            "br\u{e0}",
        ] {
            assert_eq!(validate_ifname(bad).unwrap_err().code, 4, "{bad:?}");
        }
    }
}
