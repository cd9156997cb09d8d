//! Linen's own configuration fields, read from the plugin's network configuration.
//!
//! The seed's fields (`isMaster`, `ovsBridge`, `vtepIPs`, `controller`) are accepted at the
//! plugin's top level and, as the seed's example files had them, under `runtimeConfig.ovs`.
//! A field given in both places with different values is an error rather than a silent
//! precedence rule: an operator should not have to guess which one won.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

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
    #[error("field `{field}` must be {expected}, got {got}")]
    WrongType {
        field: String,
        expected: &'static str,
        got: String,
    },
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
    /// Reads Linen's fields from a plugin configuration object (the whole stdin JSON).
    /// Unknown fields are ignored, as the CNI spec asks of plugins.
    pub fn from_json(conf: &Value) -> Result<Self, ConfigError> {
        let nested = conf.pointer("/runtimeConfig/ovs");
        let pick = |key: &'static str| -> Result<Option<&Value>, ConfigError> {
            let top = conf.get(key).filter(|v| !v.is_null());
            let low = nested.and_then(|n| n.get(key)).filter(|v| !v.is_null());
            match (top, low) {
                (Some(a), Some(b)) if a != b => Err(ConfigError::Conflict(key)),
                (a, b) => Ok(a.or(b)),
            }
        };

        let is_master = match pick("isMaster")? {
            None => false,
            Some(v) => v
                .as_bool()
                .ok_or_else(|| wrong("isMaster", "a boolean", v))?,
        };
        let bridge = match pick("ovsBridge")? {
            None => DEFAULT_BRIDGE.to_owned(),
            Some(v) => {
                let s = v
                    .as_str()
                    .ok_or_else(|| wrong("ovsBridge", "a string", v))?;
                if !is_creatable_ifname(s) {
                    return Err(ConfigError::BadBridgeName(s.to_owned()));
                }
                s.to_owned()
            }
        };
        let vtep_ips = match pick("vtepIPs")? {
            None => Vec::new(),
            Some(v) => parse_vteps(v)?,
        };
        let controller = match pick("controller")? {
            None => Vec::new(),
            Some(v) => {
                let targets: Vec<&Value> = match v {
                    Value::Array(a) => a.iter().collect(),
                    one => vec![one],
                };
                let mut parsed = targets
                    .into_iter()
                    .map(|t| {
                        let s = t.as_str().ok_or_else(|| {
                            wrong("controller", "a string or a list of strings", v)
                        })?;
                        parse_controller(s)
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                parsed.sort();
                parsed.dedup();
                parsed
            }
        };
        let ovsdb = match conf.get("ovsdbSocket").filter(|v| !v.is_null()) {
            None => DEFAULT_OVSDB.to_owned(),
            Some(v) => {
                let s = v
                    .as_str()
                    .ok_or_else(|| wrong("ovsdbSocket", "a string", v))?;
                parse_ovsdb(s)?
            }
        };
        let datapath = match conf.get("datapathType").filter(|v| !v.is_null()) {
            None => Datapath::System,
            Some(v) => match v.as_str() {
                Some("system") | Some("") => Datapath::System,
                Some("netdev") => Datapath::Netdev,
                Some(other) => return Err(ConfigError::BadDatapath(other.to_owned())),
                None => return Err(wrong("datapathType", "a string", v)),
            },
        };
        let key = match conf.get("vni").filter(|v| !v.is_null()) {
            None => TunnelKey::Flow,
            Some(v) => {
                let n = v.as_u64().ok_or_else(|| wrong("vni", "an integer", v))?;
                TunnelKey::Vni(
                    u32::try_from(n)
                        .ok()
                        .filter(|n| *n <= MAX_VNI)
                        .ok_or(ConfigError::BadVni(n))?,
                )
            }
        };
        let mtu = opt_u32(conf, "mtu", 68, 65535)?;
        let underlay_mtu = opt_u32(conf, "underlayMTU", 68, 65535)?;
        let host_port_dir = match conf.get("hostPortDir").filter(|v| !v.is_null()) {
            None => crate::hostport::DEFAULT_DIR.into(),
            Some(v) => {
                let s = v
                    .as_str()
                    .ok_or_else(|| wrong("hostPortDir", "a string", v))?;
                if !s.starts_with('/') {
                    return Err(ConfigError::BadHostPortDir(s.to_owned()));
                }
                s.into()
            }
        };
        let host_ports = crate::hostport::from_runtime_config(conf)
            .map_err(|e| ConfigError::PortMappings(e.to_string()))?;

        Ok(LinenConfig {
            is_master,
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

fn wrong(field: &str, expected: &'static str, got: &Value) -> ConfigError {
    ConfigError::WrongType {
        field: field.to_owned(),
        expected,
        got: got.to_string(),
    }
}

fn opt_u32(
    conf: &Value,
    field: &'static str,
    min: u64,
    max: u64,
) -> Result<Option<u32>, ConfigError> {
    let Some(v) = conf.get(field).filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let n = v.as_u64().ok_or_else(|| wrong(field, "an integer", v))?;
    if !(min..=max).contains(&n) {
        return Err(ConfigError::OutOfRange {
            field,
            value: n,
            min,
            max,
        });
    }
    Ok(Some(n as u32))
}

fn parse_vteps(v: &Value) -> Result<Vec<IpAddr>, ConfigError> {
    let list = v
        .as_array()
        .ok_or_else(|| wrong("vtepIPs", "a list of IP addresses", v))?;
    if list.len() > MAX_VTEPS {
        return Err(ConfigError::TooManyVteps { count: list.len() });
    }
    let mut out = BTreeSet::new();
    for (i, item) in list.iter().enumerate() {
        let field = format!("vtepIPs[{i}]");
        let s = item
            .as_str()
            .ok_or_else(|| wrong(&field, "a string", item))?;
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
}
