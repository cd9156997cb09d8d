//! hostPort holders: which pod of this node holds each hostPort.
//!
//! The reference `portmap` plugin (chained after linen) writes the DNAT rules, but it never
//! refuses a hostPort already taken: a second pod asking for it gets rules that never match,
//! and the first pod silently keeps the port. So linen, which receives the same
//! `runtimeConfig.portMappings` (`capabilities: {"portMappings": true}`), records one file
//! per held port in a node-local directory, created with `O_EXCL` (as `host-local` records
//! its leases), holding the container ID. ADD refuses a port whose file names another
//! container, before anything of the pod is changed; DEL and GC remove only the files that
//! name their container. Per port, not per address: a hostPort on any address conflicts
//! with the same port on every address (the Kubernetes scheduler's rule for `0.0.0.0`).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// Where holders are recorded unless the conflist's `hostPortDir` says otherwise.
pub const DEFAULT_DIR: &str = "/var/lib/cni/linen/hostports";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HostPort {
    pub protocol: Protocol,
    pub port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.port, self.protocol.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HostPortError {
    #[error("runtimeConfig.portMappings: {0}")]
    BadMapping(String),
    #[error("hostPort {port} is already held by container {holder} on this node")]
    Taken { port: HostPort, holder: String },
    #[error("cannot record hostPort {what} in {path}")]
    Io {
        what: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

type Result<T, E = HostPortError> = std::result::Result<T, E>;

/// The hostPorts of `runtimeConfig.portMappings` (the CNI conventions' form:
/// `{hostPort, containerPort, protocol, hostIP}`), sorted and deduplicated. Absent: none.
///
/// Keys are matched as Go's encoding/json matches them (the exact name first, else one that
/// differs only in ASCII case): containerd 1.6's CRI (go-cni) sends
/// `{"HostPort":8080,"ContainerPort":80,"Protocol":"tcp","HostIP":""}`, and the reference
/// `portmap` plugin, chained after linen, reads that form too.
pub fn from_runtime_config(conf: &Value) -> Result<Vec<HostPort>> {
    let Some(list) = conf
        .pointer("/runtimeConfig/portMappings")
        .filter(|v| !v.is_null())
    else {
        return Ok(Vec::new());
    };
    let bad = |why: String| HostPortError::BadMapping(why);
    let list = list
        .as_array()
        .ok_or_else(|| bad(format!("a list expected, got {list}")))?;
    let mut ports = Vec::new();
    for m in list {
        let port = field(m, "hostPort")
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
            .ok_or_else(|| bad(format!("hostPort must be 1 to 65535 in {m}")))?;
        let protocol = match field(m, "protocol").and_then(Value::as_str) {
            None => Protocol::Tcp,
            Some(p) if p.eq_ignore_ascii_case("tcp") => Protocol::Tcp,
            Some(p) if p.eq_ignore_ascii_case("udp") => Protocol::Udp,
            Some(p) if p.eq_ignore_ascii_case("sctp") => Protocol::Sctp,
            Some(p) => return Err(bad(format!("protocol {p:?} is not tcp, udp or sctp"))),
        };
        ports.push(HostPort { protocol, port });
    }
    ports.sort();
    ports.dedup();
    Ok(ports)
}

/// `object[name]`, else the first key equal to `name` but for ASCII case (Go's rule).
fn field<'a>(object: &'a Value, name: &str) -> Option<&'a Value> {
    let map = object.as_object()?;
    map.get(name).or_else(|| {
        map.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })
}

fn file(dir: &Path, port: HostPort) -> PathBuf {
    dir.join(format!("{}-{}", port.protocol.as_str(), port.port))
}

fn io(what: impl Into<String>, path: &Path) -> impl FnOnce(std::io::Error) -> HostPortError {
    let (what, path) = (what.into(), path.to_owned());
    move |source| HostPortError::Io { what, path, source }
}

/// Records `container` as the holder of every port, or none of them: a port held by another
/// container is [`HostPortError::Taken`], and the ports this call took are given back.
/// Idempotent for the same container (a retried ADD).
pub fn reserve(dir: &Path, container: &str, ports: &[HostPort]) -> Result<()> {
    if ports.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(io("directory", dir))?;
    let mut taken = Vec::new();
    for &port in ports {
        match take(dir, container, port) {
            Ok(true) => taken.push(port),
            Ok(false) => {}
            Err(e) => {
                for p in taken {
                    let _ = std::fs::remove_file(file(dir, p));
                }
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Takes one port: `Ok(true)` when this call recorded it, `Ok(false)` when `container`
/// already held it.
fn take(dir: &Path, container: &str, port: HostPort) -> Result<bool> {
    let path = file(dir, port);
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
    {
        Ok(mut f) => {
            let written = f
                .write_all(container.as_bytes())
                .and_then(|()| f.sync_all());
            if let Err(e) = written {
                let _ = std::fs::remove_file(&path);
                return Err(io(port.to_string(), &path)(e));
            }
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let holder = std::fs::read_to_string(&path).map_err(io(port.to_string(), &path))?;
            if holder.trim() == container {
                Ok(false)
            } else {
                Err(HostPortError::Taken {
                    port,
                    holder: holder.trim().to_owned(),
                })
            }
        }
        Err(e) => Err(io(port.to_string(), &path)(e)),
    }
}

/// Gives back every port whose holder `keep` rejects. Tolerates a missing directory and
/// files removed meanwhile.
pub fn release_where(dir: &Path, mut drop_holder: impl FnMut(&str) -> bool) -> Result<usize> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io("directory", dir)(e)),
    };
    let mut released = 0;
    for entry in entries {
        let path = entry.map_err(io("directory", dir))?.path();
        let holder = match std::fs::read_to_string(&path) {
            Ok(h) => h,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io("holder", &path)(e)),
        };
        if drop_holder(holder.trim()) {
            match std::fs::remove_file(&path) {
                Ok(()) => released += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("holder", &path)(e)),
            }
        }
    }
    Ok(released)
}

/// Gives back the ports `container` holds (DEL).
pub fn release(dir: &Path, container: &str) -> Result<usize> {
    release_where(dir, |h| h == container)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tcp(port: u16) -> HostPort {
        HostPort {
            protocol: Protocol::Tcp,
            port,
        }
    }

    #[test]
    fn parses_port_mappings() {
        assert!(from_runtime_config(&json!({})).unwrap().is_empty());
        let conf = json!({"runtimeConfig": {"portMappings": [
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
            {"hostPort": 53, "containerPort": 53, "protocol": "UDP", "hostIP": "0.0.0.0"},
            {"hostPort": 8080, "containerPort": 81},
        ]}});
        let ports = from_runtime_config(&conf).unwrap();
        assert_eq!(
            ports,
            [
                tcp(8080),
                HostPort {
                    protocol: Protocol::Udp,
                    port: 53
                }
            ]
        );
        // containerd 1.6's CRI (go-cni, no JSON tags on its PortMapping), as it sent it.
        let cri = json!({"runtimeConfig": {"portMappings": [
            {"HostPort": 8080, "ContainerPort": 80, "Protocol": "tcp", "HostIP": ""},
            {"HOSTPORT": 53, "protocol": "udp"},
        ]}});
        assert_eq!(from_runtime_config(&cri).unwrap(), ports);
        for bad in [
            json!({"runtimeConfig": {"portMappings": {}}}),
            json!({"runtimeConfig": {"portMappings": [{"Host_Port": 8080}]}}),
            json!({"runtimeConfig": {"portMappings": [{"hostPort": 0}]}}),
            json!({"runtimeConfig": {"portMappings": [{"hostPort": 70000}]}}),
            json!({"runtimeConfig": {"portMappings": [{"hostPort": 1, "protocol": "icmp"}]}}),
        ] {
            assert!(
                matches!(from_runtime_config(&bad), Err(HostPortError::BadMapping(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn one_holder_per_port_and_all_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("hostports");
        reserve(&d, "a", &[tcp(80), tcp(443)]).unwrap();
        reserve(&d, "a", &[tcp(80), tcp(443)]).unwrap();
        // b asks for a free port and a taken one: refused, and the free one is not kept.
        let err = reserve(&d, "b", &[tcp(81), tcp(443)]).unwrap_err();
        assert!(
            matches!(&err, HostPortError::Taken { port, holder } if *port == tcp(443) && holder == "a"),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "hostPort 443/tcp is already held by container a on this node"
        );
        assert!(!d.join("tcp-81").exists(), "nothing of b's left");
        // b's DEL gives back nothing of a's.
        assert_eq!(release(&d, "b").unwrap(), 0);
        assert!(d.join("tcp-443").exists());
        assert_eq!(release(&d, "a").unwrap(), 2);
        reserve(&d, "b", &[tcp(443)]).unwrap();
        // GC: keep only valid holders.
        assert_eq!(release_where(&d, |h| h != "c").unwrap(), 1);
        assert_eq!(release(&dir.path().join("none"), "a").unwrap(), 0);
    }
}
