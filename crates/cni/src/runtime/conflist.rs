//! Network configuration lists (`.conflist`) and single-plugin `.conf` files.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Map, Value};

use super::{Error, Result};
use crate::Version;
use crate::conf::validate_network_name;

/// A parsed network configuration list.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfigList {
    pub name: String,
    /// The version chosen: the highest of `cniVersion` and `cniVersions` that
    /// this crate supports (SPEC.md 1.1.0, "Version considerations").
    pub cni_version: Version,
    pub disable_check: bool,
    pub disable_gc: bool,
    pub plugins: Vec<PluginConfig>,
    /// The list as read (stored, base64, in the result cache like libcni).
    pub bytes: Vec<u8>,
}

/// One entry of `plugins`.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginConfig {
    /// `type`: the binary's name.
    pub plugin_type: String,
    /// `capabilities`, e.g. `{"portMappings": true}`.
    pub capabilities: BTreeMap<String, bool>,
    /// The whole object; passed to the plugin with the protocol keys injected.
    pub raw: Map<String, Value>,
}

impl NetworkConfigList {
    /// Parses a `.conflist`.
    pub fn from_slice(bytes: &[u8]) -> Result<Self> {
        let obj = object(bytes)?;
        let name = network_name(&obj)?;
        let cni_version = choose_version(&obj)?;
        let Some(Value::Array(raw_plugins)) = obj.get("plugins") else {
            return Err(Error::ConfField {
                field: "plugins".into(),
            });
        };
        if raw_plugins.is_empty() {
            return Err(Error::NoPlugins { network: name });
        }
        let plugins = raw_plugins
            .iter()
            .enumerate()
            .map(|(index, p)| PluginConfig::from_value(&name, index, p))
            .collect::<Result<_>>()?;
        Ok(Self {
            disable_check: flag(&obj, "disableCheck")?,
            disable_gc: flag(&obj, "disableGC")?,
            name,
            cni_version,
            plugins,
            bytes: bytes.to_vec(),
        })
    }

    /// Turns a single-plugin `.conf` into a list of one, as libcni's
    /// `ConfListFromConf` does (name and version come from the plugin).
    pub fn from_conf_slice(bytes: &[u8]) -> Result<Self> {
        let obj = object(bytes)?;
        let list = serde_json::json!({
            "cniVersion": obj.get("cniVersion").cloned().unwrap_or(Value::Null),
            "name": obj.get("name").cloned().unwrap_or(Value::Null),
            "plugins": [Value::Object(obj)],
        });
        Self::from_slice(&serde_json::to_vec(&list).expect("a Value always serializes"))
    }

    /// Reads a file: `.conflist` as a list, anything else (`.conf`, `.json`)
    /// as a single plugin.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| Error::ReadConf {
            path: path.to_owned(),
            source,
        })?;
        if path.extension().is_some_and(|e| e == "conflist") {
            Self::from_slice(&bytes)
        } else {
            Self::from_conf_slice(&bytes)
        }
    }
}

impl PluginConfig {
    fn from_value(network: &str, index: usize, value: &Value) -> Result<Self> {
        let bad = |field| Error::PluginField {
            network: network.to_owned(),
            index,
            field,
        };
        let raw = value.as_object().ok_or_else(|| bad("(object)"))?.clone();
        let plugin_type = match raw.get("type") {
            Some(Value::String(t)) if !t.is_empty() => t.clone(),
            _ => return Err(bad("type")),
        };
        let capabilities = match raw.get("capabilities") {
            None | Some(Value::Null) => BTreeMap::new(),
            Some(v) => serde_json::from_value(v.clone()).map_err(|_| bad("capabilities"))?,
        };
        Ok(Self {
            plugin_type,
            capabilities,
            raw,
        })
    }
}

fn object(bytes: &[u8]) -> Result<Map<String, Value>> {
    match serde_json::from_slice(bytes) {
        Ok(Value::Object(obj)) => Ok(obj),
        Ok(_) => Err(Error::ConfField {
            field: "(top-level object)".into(),
        }),
        Err(source) => Err(Error::ParseConf { source }),
    }
}

fn network_name(obj: &Map<String, Value>) -> Result<String> {
    let Some(Value::String(name)) = obj.get("name") else {
        return Err(Error::ConfField {
            field: "name".into(),
        });
    };
    validate_network_name(name).map_err(|source| Error::ConfName { source })?;
    Ok(name.clone())
}

/// The highest supported version among `cniVersion` and `cniVersions`;
/// entries we do not support (older, newer or malformed) are skipped.
fn choose_version(obj: &Map<String, Value>) -> Result<Version> {
    let mut offered: Vec<String> = Vec::new();
    match obj.get("cniVersion") {
        None | Some(Value::Null) => {}
        Some(Value::String(v)) => offered.push(v.clone()),
        Some(_) => {
            return Err(Error::ConfField {
                field: "cniVersion".into(),
            });
        }
    }
    match obj.get("cniVersions") {
        None | Some(Value::Null) => {}
        Some(Value::Array(vs)) => {
            for v in vs {
                let v = v.as_str().ok_or_else(|| Error::ConfField {
                    field: "cniVersions".into(),
                })?;
                offered.push(v.to_owned());
            }
        }
        Some(_) => {
            return Err(Error::ConfField {
                field: "cniVersions".into(),
            });
        }
    }
    offered
        .iter()
        .filter_map(|v| v.parse::<Version>().ok())
        .max()
        .ok_or(Error::NoSupportedVersion { offered })
}

/// A boolean flag; libcni also accepts "true"/"false" strings.
fn flag(obj: &Map<String, Value>, field: &str) -> Result<bool> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(true),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(false),
        Some(_) => Err(Error::ConfField {
            field: field.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(v: Value) -> Result<NetworkConfigList> {
        NetworkConfigList::from_slice(v.to_string().as_bytes())
    }

    #[test]
    fn spec_example() {
        // SPEC.md 1.1.0 section 1 example, comments removed.
        let list = parse(json!({
          "cniVersion": "1.1.0",
          "cniVersions": ["0.3.1", "0.4.0", "1.0.0", "1.1.0"],
          "name": "dbnet",
          "plugins": [
            {"type": "bridge", "bridge": "cni0",
             "keyA": ["some more", "plugin specific", "configuration"],
             "ipam": {"type": "host-local", "subnet": "10.1.0.0/16", "gateway": "10.1.0.1",
                      "routes": [{"dst": "0.0.0.0/0"}]},
             "dns": {"nameservers": ["10.1.0.1"]}},
            {"type": "tuning", "capabilities": {"mac": true},
             "sysctl": {"net.core.somaxconn": "500"}},
            {"type": "portmap", "capabilities": {"portMappings": true}}
          ]
        }))
        .unwrap();
        assert_eq!(list.name, "dbnet");
        assert_eq!(list.cni_version, Version::V1_1_0);
        assert!(!list.disable_check && !list.disable_gc);
        let types: Vec<_> = list
            .plugins
            .iter()
            .map(|p| p.plugin_type.as_str())
            .collect();
        assert_eq!(types, ["bridge", "tuning", "portmap"]);
        assert!(list.plugins[1].capabilities["mac"]);
        assert_eq!(list.plugins[0].raw["bridge"], "cni0");
    }

    #[test]
    fn version_selection() {
        let table: &[(Value, Value, Option<Version>)] = &[
            (json!("1.0.0"), Value::Null, Some(Version::V1_0_0)),
            (
                json!("0.3.1"),
                json!(["1.0.0", "0.4.0"]),
                Some(Version::V1_0_0),
            ),
            (
                Value::Null,
                json!(["0.4.0", "1.1.0", "9.0.0"]),
                Some(Version::V1_1_0),
            ),
            (json!("1.2.0"), json!(["1.0.0"]), Some(Version::V1_0_0)),
            (json!("0.2.0"), Value::Null, None),
            (Value::Null, Value::Null, None),
            (Value::Null, json!(["0.1.0", "2.0.0"]), None),
        ];
        for (v, vs, want) in table {
            let list = parse(json!({"cniVersion": v, "cniVersions": vs, "name": "n",
                                    "plugins": [{"type": "bridge"}]}));
            assert_eq!(list.as_ref().ok().map(|l| l.cni_version), *want, "{v} {vs}");
            if want.is_none() {
                assert!(matches!(list, Err(Error::NoSupportedVersion { .. })));
            }
        }
    }

    #[test]
    fn flags() {
        for (value, want) in [
            (json!(true), true),
            (json!("true"), true),
            (json!(false), false),
        ] {
            let list = parse(
                json!({"cniVersion": "1.1.0", "name": "n", "disableCheck": value,
                                    "disableGC": value, "plugins": [{"type": "x"}]}),
            )
            .unwrap();
            assert_eq!((list.disable_check, list.disable_gc), (want, want));
        }
    }

    #[test]
    fn invalid_lists() {
        let table = [
            json!({"cniVersion": "1.0.0", "plugins": [{"type": "x"}]}),
            json!({"cniVersion": "1.0.0", "name": "bad/name", "plugins": [{"type": "x"}]}),
            json!({"cniVersion": "1.0.0", "name": "n"}),
            json!({"cniVersion": "1.0.0", "name": "n", "plugins": []}),
            json!({"cniVersion": "1.0.0", "name": "n", "plugins": [{"bridge": "x"}]}),
            json!({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": ""}]}),
            json!({"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "x", "capabilities": [1]}]}),
            json!({"cniVersion": 1, "name": "n", "plugins": [{"type": "x"}]}),
            json!({"cniVersion": "1.0.0", "name": "n", "disableCheck": 1, "plugins": [{"type": "x"}]}),
            json!([]),
        ];
        for bad in table {
            assert!(parse(bad.clone()).is_err(), "{bad}");
        }
        assert!(matches!(
            NetworkConfigList::from_slice(b"{"),
            Err(Error::ParseConf { .. })
        ));
    }

    #[test]
    fn single_conf_becomes_list() {
        let conf = json!({"cniVersion": "0.4.0", "name": "single", "type": "bridge",
                          "bridge": "br9", "ipam": {"type": "host-local"}});
        let list = NetworkConfigList::from_conf_slice(conf.to_string().as_bytes()).unwrap();
        assert_eq!(list.name, "single");
        assert_eq!(list.cni_version, Version::V0_4_0);
        assert_eq!(list.plugins.len(), 1);
        assert_eq!(list.plugins[0].raw["bridge"], "br9");
    }

    #[test]
    fn from_file_by_extension() {
        let dir = tempfile::tempdir().unwrap();
        let list_path = dir.path().join("10-x.conflist");
        std::fs::write(
            &list_path,
            r#"{"cniVersion":"1.0.0","name":"a","plugins":[{"type":"t"}]}"#,
        )
        .unwrap();
        let conf_path = dir.path().join("10-y.conf");
        std::fs::write(
            &conf_path,
            r#"{"cniVersion":"1.0.0","name":"b","type":"t"}"#,
        )
        .unwrap();
        assert_eq!(NetworkConfigList::from_file(&list_path).unwrap().name, "a");
        assert_eq!(NetworkConfigList::from_file(&conf_path).unwrap().name, "b");
        assert!(matches!(
            NetworkConfigList::from_file(&dir.path().join("missing.conf")),
            Err(Error::ReadConf { .. })
        ));
    }
}
