//! Linen's own configuration fields, read from the plugin's network configuration.
//!
//! The seed's fields (`isMaster`, `ovsBridge`, `vtepIPs`, `controller`) are accepted at the
//! plugin's top level and, as the seed's example files had them, under `runtimeConfig.ovs`.
//! A field given in both places with different values is an error rather than a silent
//! precedence rule: an operator should not have to guess which one won.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::{BridgeSpec, Source, TunnelSpec};
use crate::naming::is_creatable_ifname;

/// Default OVS bridge name (the seed's).
pub const DEFAULT_BRIDGE: &str = "br0";
/// Default OVSDB socket of a packaged Open vSwitch.
pub const DEFAULT_OVSDB: &str = "unix:/var/run/openvswitch/db.sock";
/// The largest VXLAN network identifier (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;
/// The most addresses `vtepIPs` may list. A static list is for small meshes; past a few
/// hundred nodes flaxd keeps the tunnels (its membership has no such cap). The bound keeps
/// one ADD's transaction, and ovs-vswitchd's work after it, finite: 10,000 VTEPs kept
/// ovs-vswitchd busy for about two minutes on the next ADD's prune.
pub const MAX_VTEPS: usize = 5000;

/// Why a configuration was refused. Every variant names the field at fault.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The field is not of its type (a string where a boolean belongs, a negative `vni`).
    #[error("field `{field}`: {why}")]
    Malformed { field: String, why: String },
    #[error("field `{field}`: {value:?} is not an IP address")]
    BadIp { field: String, value: String },
    #[error(
        "field `vtepIPs`: {count} addresses, at most {MAX_VTEPS} (let flaxd keep the tunnels of a larger cluster)"
    )]
    TooManyVteps { count: usize },
    #[error("field `{field}`: {value} cannot be a VTEP address ({why})")]
    UnusableVtep {
        field: String,
        value: IpAddr,
        why: &'static str,
    },
    #[error(
        "field `ovsBridge`: {0:?} is not a name Linen creates an interface with (1-15 bytes of ASCII letters, digits, '-', '_' and '.'; not '.' or '..')"
    )]
    BadBridgeName(String),
    #[error(
        "field `controller`: {0:?} is not a controller address (use IP:PORT, tcp:IP:PORT, ssl:IP:PORT or unix:PATH, with a unicast IP and an absolute PATH without control characters)"
    )]
    BadController(String),
    #[error("field `ovsdbSocket`: {0:?} is not an OVSDB address (use unix:PATH or tcp:IP:PORT)")]
    BadOvsdbSocket(String),
    #[error("field `datapathType`: {0:?} is not supported (use \"system\" or \"netdev\")")]
    BadDatapath(String),
    #[error("field `vni`: {0} is out of range (0 to {MAX_VNI})")]
    BadVni(u64),
    #[error("field `{field}`: {value} is out of range ({min} to {max})")]
    OutOfRange {
        field: &'static str,
        value: u64,
        min: u64,
        max: u64,
    },
    #[error(
        "field `{0}` is set both at the top level and under runtimeConfig.ovs with different values"
    )]
    Conflict(&'static str),
    #[error("field `hostPortDir`: {0:?} is not an absolute path")]
    BadHostPortDir(String),
    /// `runtimeConfig.portMappings` is malformed (the message says how).
    #[error("{0}")]
    PortMappings(String),
}

/// The OVS datapath a bridge uses: `system` (the kernel module, production) or `netdev`
/// (userspace, what these test machines have).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datapath {
    System,
    Netdev,
}

impl Datapath {
    /// The value of the Bridge table's `datapath_type` column.
    pub fn as_ovs(self) -> &'static str {
        match self {
            Datapath::System => "system",
            Datapath::Netdev => "netdev",
        }
    }
}

/// The tunnel key: a fixed VNI, or `flow` (the seed's `key=flow`: the key is set by flows,
/// and with NORMAL switching that is key 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelKey {
    Flow,
    Vni(u32),
}

impl TunnelKey {
    /// The value of the Interface `options:key` column.
    pub fn as_ovs(self) -> String {
        match self {
            TunnelKey::Flow => "flow".to_owned(),
            TunnelKey::Vni(v) => v.to_string(),
        }
    }
}

/// The `linen` plugin object's own fields as a conflist writes them: the one wire format.
/// The plugin deserializes it ([`LinenConfig::from_json`] applies the rules and defaults);
/// flaxd and the lab serialize it ([`PluginConf::to_json`]), so a renamed field cannot go
/// out of step between the writer and the reader.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PluginConf {
    /// The seed's fields, which may also come under `runtimeConfig.ovs`.
    #[serde(flatten)]
    pub seed: SeedFields,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ovsdb_socket: Option<String>,
    /// `system` or `netdev`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datapath_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vni: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u64>,
    #[serde(
        default,
        rename = "underlayMTU",
        skip_serializing_if = "Option::is_none"
    )]
    pub underlay_mtu: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port_dir: Option<String>,
}

/// The seed project's four fields, accepted at the plugin's top level and, as the seed's
/// example files had them, under `runtimeConfig.ovs`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SeedFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_master: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ovs_bridge: Option<String>,
    #[serde(default, rename = "vtepIPs", skip_serializing_if = "Option::is_none")]
    pub vtep_ips: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<Controllers>,
}

impl SeedFields {
    /// Both places together. A field given in both with different values is an error
    /// rather than a silent precedence rule.
    fn merge(self, nested: SeedFields) -> Result<SeedFields, ConfigError> {
        fn one<T: PartialEq>(
            field: &'static str,
            top: Option<T>,
            low: Option<T>,
        ) -> Result<Option<T>, ConfigError> {
            match (top, low) {
                (Some(a), Some(b)) if a != b => Err(ConfigError::Conflict(field)),
                (a, b) => Ok(a.or(b)),
            }
        }
        Ok(SeedFields {
            is_master: one("isMaster", self.is_master, nested.is_master)?,
            ovs_bridge: one("ovsBridge", self.ovs_bridge, nested.ovs_bridge)?,
            vtep_ips: one("vtepIPs", self.vtep_ips, nested.vtep_ips)?,
            controller: one("controller", self.controller, nested.controller)?,
        })
    }
}

/// `controller`: one target, or a list of them (OVS allows several).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged, expecting = "a string or a list of strings")]
pub enum Controllers {
    One(String),
    Many(Vec<String>),
}

impl Controllers {
    fn into_vec(self) -> Vec<String> {
        match self {
            Controllers::One(s) => vec![s],
            Controllers::Many(v) => v,
        }
    }
}

impl PluginConf {
    /// The plugin object: `"type": "linen"`, the portMappings capability (the runtime then
    /// passes the pod's hostPorts, which Linen reserves), and the fields that are set.
    pub fn to_json(&self) -> Value {
        let mut v = serde_json::json!({
            "type": "linen",
            "capabilities": { "portMappings": true },
        });
        if let (Some(obj), Ok(Value::Object(fields))) =
            (v.as_object_mut(), serde_json::to_value(self))
        {
            obj.extend(fields);
        }
        v
    }
}

/// Linen's validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinenConfig {
    /// The node relays between tunnels (hub of a hub-and-spoke layout): its tunnel ports are
    /// left unprotected. Every other node's tunnel ports are protected (loop-free mesh).
    pub is_master: bool,
    pub bridge: String,
    /// Remote VTEPs, deduplicated and sorted; may include this node's own address (skipped
    /// at apply time), so one list can serve every node of a mesh.
    pub vtep_ips: Vec<IpAddr>,
    /// OVS controller targets (`tcp:IP:PORT`, `ssl:IP:PORT`, `unix:PATH`), sorted and
    /// deduplicated; `controller` is one target or a list of them, as OVS allows several.
    pub controller: Vec<String>,
    pub ovsdb: String,
    pub datapath: Datapath,
    pub key: TunnelKey,
    /// An explicit pod MTU: must fit the tunnel, else ADD fails.
    pub mtu: Option<u32>,
    /// The underlay MTU, when it should not be detected from the route to the VTEPs.
    pub underlay_mtu: Option<u32>,
    /// Where hostPort holders are recorded ([`crate::hostport`]).
    pub host_port_dir: std::path::PathBuf,
    /// The hostPorts this pod asks for (`runtimeConfig.portMappings`), sorted.
    pub host_ports: Vec<crate::hostport::HostPort>,
}

impl LinenConfig {
    /// Reads Linen's fields from a plugin configuration object (the whole stdin JSON):
    /// [`PluginConf`] at the top level and [`SeedFields`] under `runtimeConfig.ovs`, merged,
    /// then every rule applied here, in one place. Unknown fields are ignored, as the CNI
    /// spec asks of plugins.
    pub fn from_json(conf: &Value) -> Result<Self, ConfigError> {
        // The seed's fields first, on their own: a flattened struct's errors lose the
        // field's name.
        let seed: SeedFields = typed(conf, "")?;
        let top: PluginConf = typed(conf, "")?;
        let nested: SeedFields = match conf.pointer("/runtimeConfig/ovs") {
            None | Some(Value::Null) => SeedFields::default(),
            Some(v) => typed(v, "runtimeConfig.ovs.")?,
        };
        debug_assert_eq!(seed, top.seed);
        let seed = seed.merge(nested)?;

        let bridge = match seed.ovs_bridge {
            None => DEFAULT_BRIDGE.to_owned(),
            Some(s) if is_creatable_ifname(&s) => s,
            Some(s) => return Err(ConfigError::BadBridgeName(s)),
        };
        let vtep_ips = match seed.vtep_ips {
            None => Vec::new(),
            Some(list) => parse_vteps(&list)?,
        };
        let mut controller = seed
            .controller
            .map(Controllers::into_vec)
            .unwrap_or_default()
            .iter()
            .map(|t| parse_controller(t))
            .collect::<Result<Vec<_>, _>>()?;
        controller.sort();
        controller.dedup();
        let ovsdb = match top.ovsdb_socket {
            None => DEFAULT_OVSDB.to_owned(),
            Some(s) => parse_ovsdb(&s)?,
        };
        let datapath = match top.datapath_type.as_deref() {
            None | Some("system") | Some("") => Datapath::System,
            Some("netdev") => Datapath::Netdev,
            Some(other) => return Err(ConfigError::BadDatapath(other.to_owned())),
        };
        let key = match top.vni {
            None => TunnelKey::Flow,
            Some(n) => TunnelKey::Vni(
                u32::try_from(n)
                    .ok()
                    .filter(|n| *n <= MAX_VNI)
                    .ok_or(ConfigError::BadVni(n))?,
            ),
        };
        let mtu = in_range("mtu", top.mtu, 68, 65535)?;
        let underlay_mtu = in_range("underlayMTU", top.underlay_mtu, 68, 65535)?;
        let host_port_dir = match top.host_port_dir {
            None => crate::hostport::DEFAULT_DIR.into(),
            Some(s) if s.starts_with('/') => s.into(),
            Some(s) => return Err(ConfigError::BadHostPortDir(s)),
        };
        let host_ports = crate::hostport::from_runtime_config(conf)
            .map_err(|e| ConfigError::PortMappings(e.to_string()))?;

        Ok(LinenConfig {
            is_master: seed.is_master.unwrap_or(false),
            bridge,
            vtep_ips,
            controller,
            ovsdb,
            datapath,
            key,
            mtu,
            underlay_mtu,
            host_port_dir,
            host_ports,
        })
    }
}

impl LinenConfig {
    /// The bridge this configuration asks for.
    pub fn bridge_spec(&self) -> BridgeSpec {
        BridgeSpec {
            name: self.bridge.clone(),
            datapath: self.datapath,
            controllers: self.controller.clone(),
        }
    }

    /// The tunnels `vtepIPs` asks for on a node whose own addresses are `local`: one per
    /// remote VTEP, protected unless this node is the hub.
    pub fn tunnels(&self, local: &[IpAddr]) -> Vec<TunnelSpec> {
        self.vtep_ips
            .iter()
            .filter(|ip| !local.contains(ip))
            .map(|&remote| TunnelSpec {
                remote,
                key: self.key,
                protected: !self.is_master,
                source: Source::CniConfig,
                peer: None,
            })
            .collect()
    }
}

/// Deserializes `v` as `T`, naming the field at fault (`prefix` + its path) on error.
fn typed<T: serde::de::DeserializeOwned>(v: &Value, prefix: &str) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(v).map_err(|e| ConfigError::Malformed {
        field: format!("{prefix}{}", e.path()),
        why: e.inner().to_string(),
    })
}

fn in_range(
    field: &'static str,
    value: Option<u64>,
    min: u64,
    max: u64,
) -> Result<Option<u32>, ConfigError> {
    match value {
        None => Ok(None),
        Some(n) if (min..=max).contains(&n) => Ok(Some(n as u32)),
        Some(n) => Err(ConfigError::OutOfRange {
            field,
            value: n,
            min,
            max,
        }),
    }
}

fn parse_vteps(list: &[String]) -> Result<Vec<IpAddr>, ConfigError> {
    if list.len() > MAX_VTEPS {
        return Err(ConfigError::TooManyVteps { count: list.len() });
    }
    let mut out = BTreeSet::new();
    for (i, s) in list.iter().enumerate() {
        let field = format!("vtepIPs[{i}]");
        let ip: IpAddr = s.trim().parse().map_err(|_| ConfigError::BadIp {
            field: field.clone(),
            value: s.to_owned(),
        })?;
        // One address, one spelling: ::ffff:10.0.0.1 is 10.0.0.1 (else a second tunnel).
        let ip = ip.to_canonical();
        if let Some(why) = unusable_vtep(ip) {
            return Err(ConfigError::UnusableVtep {
                field,
                value: ip,
                why,
            });
        }
        out.insert(ip);
    }
    Ok(out.into_iter().collect())
}

/// Why `ip` cannot be a VTEP address (unspecified, loopback, multicast, broadcast, IPv6
/// link-local), if it cannot. The one rule for `vtepIPs` and for flaxd's membership
/// records, which also pass addresses through [`IpAddr::to_canonical`] first (an IPv4
/// address written as `::ffff:a.b.c.d` is that IPv4 address).
pub fn unusable_vtep(ip: IpAddr) -> Option<&'static str> {
    if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if matches!(ip, IpAddr::V4(v4) if v4.is_broadcast()) {
        Some("broadcast")
    } else if matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local()) {
        // fe80::/10 names an address only together with an interface (a scope), which
        // neither the configuration nor OVS's remote_ip carries.
        Some("IPv6 link-local, which needs a scope")
    } else {
        None
    }
}

/// Accepts the seed's `IP:PORT` (meaning TCP) and OVS's own `tcp:`, `ssl:` and `unix:`
/// targets; returns the OVS target string.
pub fn parse_controller(s: &str) -> Result<String, ConfigError> {
    let bad = || ConfigError::BadController(s.to_owned());
    let sock = |rest: &str| -> Result<SocketAddr, ConfigError> {
        let addr: SocketAddr = rest.parse().map_err(|_| bad())?;
        let ip = addr.ip();
        if addr.port() == 0
            || ip.is_unspecified()
            || ip.is_multicast()
            || matches!(ip, IpAddr::V4(v4) if v4.is_broadcast())
            || matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local())
        {
            return Err(bad());
        }
        Ok(addr)
    };
    if let Some(rest) = s.strip_prefix("tcp:") {
        Ok(format!("tcp:{}", ovs_sockaddr(sock(rest)?)))
    } else if let Some(rest) = s.strip_prefix("ssl:") {
        Ok(format!("ssl:{}", ovs_sockaddr(sock(rest)?)))
    } else if let Some(path) = s.strip_prefix("unix:") {
        // OVS reads the target as one line of text: no newline or other control byte.
        if !path.starts_with('/') || path.chars().any(char::is_control) {
            return Err(bad());
        }
        Ok(s.to_owned())
    } else {
        Ok(format!("tcp:{}", ovs_sockaddr(sock(s)?)))
    }
}

/// OVS writes IPv6 targets as `[addr]:port`, which is also SocketAddr's Display.
fn ovs_sockaddr(addr: SocketAddr) -> String {
    addr.to_string()
}

fn parse_ovsdb(s: &str) -> Result<String, ConfigError> {
    let bad = || ConfigError::BadOvsdbSocket(s.to_owned());
    if let Some(path) = s.strip_prefix("unix:") {
        if path.starts_with('/') && !path.chars().any(char::is_control) {
            Ok(s.to_owned())
        } else {
            Err(bad())
        }
    } else if let Some(rest) = s.strip_prefix("tcp:") {
        rest.parse::<SocketAddr>().map_err(|_| bad())?;
        Ok(s.to_owned())
    } else if s.starts_with('/') {
        Ok(format!("unix:{s}"))
    } else {
        Err(bad())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ok(v: Value) -> LinenConfig {
        LinenConfig::from_json(&v).unwrap_or_else(|e| panic!("{v}: {e}"))
    }

    #[test]
    fn defaults() {
        let c = ok(json!({"cniVersion": "1.0.0", "name": "n", "type": "linen"}));
        assert!(!c.is_master);
        assert_eq!(c.bridge, "br0");
        assert!(c.vtep_ips.is_empty());
        assert!(c.controller.is_empty());
        assert_eq!(c.ovsdb, DEFAULT_OVSDB);
        assert_eq!(c.datapath, Datapath::System);
        assert_eq!(c.key, TunnelKey::Flow);
        assert_eq!(c.mtu, None);
    }

    #[test]
    fn top_level_and_runtime_config_forms() {
        let top = ok(
            json!({"isMaster": true, "ovsBridge": "br1", "vtepIPs": ["10.245.2.3", "10.245.2.2", "10.245.2.2"],
            "controller": "192.168.100.20:6653", "datapathType": "netdev", "vni": 42, "mtu": 1400,
            "ovsdbSocket": "/run/x/db.sock"}),
        );
        assert!(top.is_master);
        assert_eq!(top.bridge, "br1");
        assert_eq!(
            top.vtep_ips,
            vec![
                "10.245.2.2".parse::<IpAddr>().unwrap(),
                "10.245.2.3".parse().unwrap()
            ]
        );
        assert_eq!(top.controller, ["tcp:192.168.100.20:6653"]);
        // Several targets, as OVS allows: sorted, deduplicated, each checked.
        let several =
            ok(json!({"controller": ["tcp:10.0.0.2:6653", "10.0.0.1:6653", "tcp:10.0.0.2:6653"]}));
        assert_eq!(
            several.controller,
            ["tcp:10.0.0.1:6653", "tcp:10.0.0.2:6653"]
        );
        assert_eq!(top.datapath, Datapath::Netdev);
        assert_eq!(top.key, TunnelKey::Vni(42));
        assert_eq!(top.mtu, Some(1400));
        assert_eq!(top.ovsdb, "unix:/run/x/db.sock");

        let nested = ok(
            json!({"runtimeConfig": {"ovs": {"isMaster": true, "ovsBridge": "br1",
            "vtepIPs": ["10.245.2.2", "10.245.2.3"], "controller": "tcp:192.168.100.20:6653"}}}),
        );
        assert_eq!(
            (
                nested.is_master,
                &nested.bridge,
                &nested.vtep_ips,
                &nested.controller
            ),
            (top.is_master, &top.bridge, &top.vtep_ips, &top.controller)
        );

        // The same value in both places is fine.
        ok(json!({"ovsBridge": "br1", "runtimeConfig": {"ovs": {"ovsBridge": "br1"}}}));
    }

    #[test]
    fn vteps_are_canonical_and_capped() {
        let c = ok(json!({"vtepIPs": ["::ffff:10.245.2.2", "10.245.2.2", "fd00::1"]}));
        let want: Vec<IpAddr> = vec!["10.245.2.2".parse().unwrap(), "fd00::1".parse().unwrap()];
        assert_eq!(
            c.vtep_ips, want,
            "one tunnel per node, however it is spelled"
        );
        let many: Vec<String> = (0..MAX_VTEPS)
            .map(|i| format!("10.{}.{}.1", i / 256, i % 256))
            .collect();
        assert_eq!(ok(json!({ "vtepIPs": many })).vtep_ips.len(), MAX_VTEPS);
    }

    #[test]
    fn controller_forms() {
        let cases = [
            ("10.0.0.1:6653", Ok("tcp:10.0.0.1:6653")),
            ("tcp:10.0.0.1:6653", Ok("tcp:10.0.0.1:6653")),
            ("ssl:10.0.0.1:6653", Ok("ssl:10.0.0.1:6653")),
            ("[fd00::1]:6653", Ok("tcp:[fd00::1]:6653")),
            ("unix:/run/ctl.sock", Ok("unix:/run/ctl.sock")),
            ("10.0.0.1", Err(())),
            ("10.0.0.1:0", Err(())),
            ("10.0.0.1:70000", Err(())),
            ("0.0.0.0:6653", Err(())),
            ("controller.example:6653", Err(())),
            ("unix:relative", Err(())),
            ("unix:/run/ctl.sock\nother", Err(())),
            ("unix:/run/ctl\0.sock", Err(())),
            ("tcp:255.255.255.255:6653", Err(())),
            ("224.0.0.1:6653", Err(())),
            ("tcp:[fe80::1]:6653", Err(())),
            ("", Err(())),
        ];
        for (input, want) in cases {
            let got = parse_controller(input).map_err(|_| ());
            assert_eq!(got.as_deref(), want.as_deref(), "{input}");
        }
    }

    #[test]
    fn bad_input_is_a_named_error() {
        let cases: Vec<(Value, &str)> = vec![
            (json!({"isMaster": "yes"}), "isMaster"),
            (json!({"ovsBridge": 3}), "ovsBridge"),
            (json!({"ovsBridge": "a-very-long-bridge-name"}), "ovsBridge"),
            (json!({"ovsBridge": "br/0"}), "ovsBridge"),
            (json!({"ovsBridge": "brà"}), "ovsBridge"),
            (json!({"ovsBridge": "%s%n"}), "ovsBridge"),
            (json!({"ovsBridge": "br%d"}), "ovsBridge"),
            (json!({"ovsBridge": "..\\.."}), "ovsBridge"),
            (json!({"vtepIPs": "10.0.0.1"}), "vtepIPs"),
            (json!({"vtepIPs": ["10.0.0.1", "banana"]}), "vtepIPs[1]"),
            (json!({"vtepIPs": ["10.0.0.1", 7]}), "vtepIPs[1]"),
            (json!({"vtepIPs": ["127.0.0.1"]}), "loopback"),
            (json!({"vtepIPs": ["0.0.0.0"]}), "unspecified"),
            (json!({"vtepIPs": ["224.0.0.1"]}), "multicast"),
            (json!({"vtepIPs": ["300.1.1.1"]}), "vtepIPs[0]"),
            (json!({"vtepIPs": ["fe80::1"]}), "link-local"),
            (json!({"vtepIPs": ["fe80::1%eth0"]}), "vtepIPs[0]"),
            (json!({"vtepIPs": ["255.255.255.255"]}), "broadcast"),
            (
                json!({"vtepIPs": vec!["10.0.0.1"; MAX_VTEPS + 1]}),
                "at most 5000",
            ),
            (json!({"ovsBridge": "br\u{0}x"}), "ovsBridge"),
            (json!({"controller": "nowhere"}), "controller"),
            (json!({"controller": 6653}), "controller"),
            (
                json!({"controller": ["tcp:10.0.0.1:6653", 7]}),
                "controller",
            ),
            (
                json!({"controller": ["tcp:10.0.0.1:6653", "nowhere"]}),
                "controller",
            ),
            (json!({"ovsdbSocket": "db.sock"}), "ovsdbSocket"),
            (json!({"ovsdbSocket": "tcp:host:1"}), "ovsdbSocket"),
            (json!({"datapathType": "dpdk"}), "datapathType"),
            (json!({"vni": -1}), "vni"),
            (json!({"vni": 16777216}), "vni"),
            (json!({"mtu": 10}), "mtu"),
            (json!({"mtu": "1450"}), "mtu"),
            (json!({"underlayMTU": 100000}), "underlayMTU"),
            (
                json!({"isMaster": true, "runtimeConfig": {"ovs": {"isMaster": false}}}),
                "isMaster",
            ),
        ];
        for (input, needle) in cases {
            let err = LinenConfig::from_json(&input)
                .expect_err(&input.to_string())
                .to_string();
            assert!(
                err.contains(needle),
                "{input}: {err:?} should mention {needle}"
            );
        }
    }

    #[test]
    fn the_wire_format_round_trips() {
        let wire = PluginConf {
            seed: SeedFields {
                is_master: Some(true),
                ovs_bridge: Some("br1".into()),
                vtep_ips: Some(vec!["10.245.2.2".into(), "fd00::2".into()]),
                controller: Some(Controllers::Many(vec!["tcp:10.0.0.1:6653".into()])),
            },
            ovsdb_socket: Some("unix:/run/x/db.sock".into()),
            datapath_type: Some("netdev".into()),
            vni: Some(42),
            mtu: Some(1400),
            underlay_mtu: Some(1450),
            host_port_dir: Some("/run/x/hostports".into()),
        };
        let json = wire.to_json();
        assert_eq!(json["type"], "linen");
        assert_eq!(json["capabilities"]["portMappings"], true);
        assert_eq!(json["underlayMTU"], 1450, "{json}");
        assert_eq!(json["vtepIPs"][1], "fd00::2", "{json}");
        let back: PluginConf = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back, wire);
        let c = ok(json);
        assert!(c.is_master);
        assert_eq!(c.bridge, "br1");
        assert_eq!(c.vtep_ips.len(), 2);
        assert_eq!(c.controller, ["tcp:10.0.0.1:6653"]);
        assert_eq!(c.datapath, Datapath::Netdev);
        assert_eq!(c.key, TunnelKey::Vni(42));
        assert_eq!((c.mtu, c.underlay_mtu), (Some(1400), Some(1450)));
        // Unset fields are not written, so the reader's defaults apply.
        let empty = PluginConf::default().to_json();
        assert_eq!(empty.as_object().unwrap().len(), 2, "{empty}");
        assert_eq!(ok(empty).bridge, DEFAULT_BRIDGE);
    }

    #[test]
    fn every_example_conflist_reads() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "conflist") {
                continue;
            }
            let list: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            for plugin in list["plugins"].as_array().unwrap() {
                if plugin["type"] == "linen" {
                    LinenConfig::from_json(plugin)
                        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                    // Written back flat (the seed's nested fields at the top level), it
                    // reads the same.
                    let mut wire: PluginConf = serde_json::from_value(plugin.clone()).unwrap();
                    if let Some(nested) = plugin.pointer("/runtimeConfig/ovs") {
                        let nested: SeedFields = serde_json::from_value(nested.clone()).unwrap();
                        wire.seed = wire.seed.merge(nested).unwrap();
                    }
                    let again = wire.to_json();
                    assert_eq!(
                        LinenConfig::from_json(&again).unwrap(),
                        LinenConfig::from_json(plugin).unwrap(),
                        "{}",
                        path.display()
                    );
                    seen += 1;
                }
            }
        }
        assert!(seen > 0, "no linen plugin in {dir}");
    }
}
