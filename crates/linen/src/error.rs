//! The plugin's error type and the one place where errors become CNI error codes.

use crate::config::ConfigError;
use crate::link::LinkError;
use crate::ovs::OvsError;

/// Linen's plugin-specific CNI error codes (the spec reserves 100 and up for plugins).
pub mod code {
    /// An OVSDB transaction or read failed for a reason other than reachability.
    pub const OVSDB_FAILED: u32 = 100;
    /// An OVS row or link Linen needs is held by something Linen did not create.
    pub const CONFLICT: u32 = 101;
    /// ovs-vswitchd did not create the bridge's internal port.
    pub const NO_INTERNAL_PORT: u32 = 102;
    /// CHECK found the overlay not as configured.
    pub const CHECK_FAILED: u32 = 110;
    /// A hostPort this pod asks for is held by another pod of the node.
    pub const HOST_PORT_TAKEN: u32 = 103;
}

/// The CNI verb an error happened in: some errors map to different codes per verb.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Add,
    Check,
    Del,
    Status,
    Gc,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid linen configuration: {0}")]
    Config(#[from] ConfigError),
    #[error(
        "linen is a chained plugin and needs a prevResult: list it after the bridge plugin in a conflist"
    )]
    NotChained,
    #[error(
        "prevResult has no Linux bridge among its host interfaces ({names}): list linen after the bridge plugin"
    )]
    NoLinuxBridge { names: String },
    #[error("prevResult has no interface inside the container named {ifname}")]
    NoPodInterface { ifname: String },
    #[error(
        "prevResult.interfaces[{index}]: {name:?} is not a Linux interface name (1-15 bytes, no '/', ':', NUL or whitespace)"
    )]
    BadPrevResultName { index: usize, name: String },
    #[error("CNI_NETNS {netns} is not a network namespace ({why})")]
    NotANetns { netns: String, why: String },
    #[error("cannot enter the container's network namespace {netns}: {reason}")]
    PodNetns { netns: String, reason: String },
    #[error("pod interface {ifname} is missing from network namespace {netns}")]
    PodLinkMissing { ifname: String, netns: String },
    #[error(
        "field `mtu`: {mtu} is larger than a VXLAN tunnel can carry over this underlay (MTU {underlay}): at most {max}"
    )]
    MtuTooLarge { mtu: u32, max: u32, underlay: u32 },
    #[error("the underlay MTU {underlay} is too small to carry VXLAN")]
    UnderlayTooSmall { underlay: u32 },
    #[error(transparent)]
    Ovs(Box<OvsError>),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(
        "OVS internal port {bridge} is already a port of Linux bridge {other}, not of {wanted}"
    )]
    AttachedElsewhere {
        bridge: String,
        other: String,
        wanted: String,
    },
    #[error(
        "link {name} (index {index}) is not the internal port of Linen's OVS bridge {name} ({why}); Linen does not attach links it did not create: pick another ovsBridge or remove the link"
    )]
    LinkNotOurs {
        name: String,
        index: u32,
        why: String,
    },
    #[error(
        "ovs-vswitchd has not reported the ifindex of bridge {bridge}'s internal port yet (ovsdb-server restarted?): try again"
    )]
    IfindexUnknown { bridge: String },
    #[error("ovs-vswitchd did not create the internal port of bridge {bridge}{}", why.as_ref().map(|w| format!(": {w}")).unwrap_or_default())]
    NoInternalPort { bridge: String, why: Option<String> },
    #[error("check failed: {0}")]
    Check(String),
    #[error(transparent)]
    HostPort(#[from] crate::hostport::HostPortError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

impl From<OvsError> for Error {
    fn from(e: OvsError) -> Self {
        Error::Ovs(Box::new(e))
    }
}

/// The causes of `e` that its message (and the causes before them) do not already say,
/// outermost first.
pub fn causes(e: &dyn std::error::Error) -> Vec<String> {
    let mut said = e.to_string();
    let mut out = Vec::new();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !said.contains(&text) {
            said.push_str(": ");
            said.push_str(&text);
            out.push(text);
        }
        cause = c.source();
    }
    out
}

/// An error and its causes, `: `-separated, each said once ([`causes`]): the one way every
/// Linen binary (plugin, flaxd, lab, bench) renders an error chain for logs and `/healthz`.
pub fn chain(e: &dyn std::error::Error) -> String {
    std::iter::once(e.to_string())
        .chain(causes(e))
        .collect::<Vec<_>>()
        .join(": ")
}

impl Error {
    /// Maps an error to its CNI code. Every code Linen emits is decided here.
    pub fn to_cni(&self, verb: Verb) -> cni::Error {
        use cni::Error as E;
        let msg = self.to_string();
        let details = causes(self).join(": ");
        let code = match self {
            Error::Ovs(ovs) => match (&**ovs, verb) {
                (OvsError::Unreachable { .. } | OvsError::Ovsdb { .. }, Verb::Status) => {
                    E::PLUGIN_NOT_AVAILABLE
                }
                (
                    OvsError::Unreachable { .. }
                    | OvsError::NotApplied { .. }
                    | OvsError::Contended { .. },
                    _,
                ) => E::TRY_AGAIN_LATER,
                // The connection went away mid-call (ovsdb-server stopped or restarted):
                // nothing was decided, the runtime should retry.
                (
                    OvsError::Ovsdb {
                        source: ovsdb::Error::Closed | ovsdb::Error::Connect { .. },
                        ..
                    },
                    _,
                ) => E::TRY_AGAIN_LATER,
                (OvsError::Conflict(_) | OvsError::ForeignSsl { .. }, _) => code::CONFLICT,
                (OvsError::Ovsdb { .. } | OvsError::NoRootRow, _) => code::OVSDB_FAILED,
            },
            Error::Config(_)
            | Error::NotChained
            | Error::NoLinuxBridge { .. }
            | Error::NoPodInterface { .. }
            | Error::BadPrevResultName { .. }
            | Error::MtuTooLarge { .. }
            | Error::UnderlayTooSmall { .. } => E::INVALID_NETWORK_CONFIG,
            Error::PodLinkMissing { .. } | Error::PodNetns { .. } if verb == Verb::Check => {
                code::CHECK_FAILED
            }
            Error::PodNetns { .. } => E::UNKNOWN_CONTAINER,
            Error::NotANetns { .. } => E::INVALID_ENVIRONMENT_VARIABLES,
            Error::PodLinkMissing { .. } => E::UNKNOWN_CONTAINER,
            Error::AttachedElsewhere { .. } | Error::LinkNotOurs { .. } => code::CONFLICT,
            Error::NoInternalPort { .. } => code::NO_INTERNAL_PORT,
            Error::IfindexUnknown { .. } => E::TRY_AGAIN_LATER,
            Error::Check(_) => code::CHECK_FAILED,
            Error::HostPort(crate::hostport::HostPortError::Taken { .. }) => code::HOST_PORT_TAKEN,
            Error::HostPort(crate::hostport::HostPortError::BadMapping(_)) => {
                E::INVALID_NETWORK_CONFIG
            }
            Error::HostPort(crate::hostport::HostPortError::Io { .. }) => E::IO_FAILURE,
            Error::Link(_) | Error::Runtime(_) => E::IO_FAILURE,
        };
        E::new(code, msg, details)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        let unreachable = || {
            Error::from(OvsError::Unreachable {
                addr: "unix:/nope".into(),
                source: ovsdb::Error::Closed,
            })
        };
        let cases: Vec<(Error, Verb, u32)> = vec![
            (Error::NotChained, Verb::Add, 7),
            (Error::Config(ConfigError::BadVni(1 << 30)), Verb::Add, 7),
            (Error::NoLinuxBridge { names: "x".into() }, Verb::Add, 7),
            (
                Error::MtuTooLarge {
                    mtu: 1500,
                    max: 1450,
                    underlay: 1500,
                },
                Verb::Add,
                7,
            ),
            (unreachable(), Verb::Add, 11),
            (unreachable(), Verb::Check, 11),
            (unreachable(), Verb::Status, 50),
            // ovsdb-server went away mid-transaction: retry, not "OVSDB failed".
            (
                Error::from(OvsError::Ovsdb {
                    step: "transact",
                    source: ovsdb::Error::Closed,
                }),
                Verb::Add,
                11,
            ),
            (
                Error::from(OvsError::Ovsdb {
                    step: "transact",
                    source: ovsdb::Error::Transaction {
                        db: "Open_vSwitch".into(),
                        index: 0,
                        op: "insert".into(),
                        error: "constraint violation".into(),
                        details: None,
                    },
                }),
                Verb::Add,
                code::OVSDB_FAILED,
            ),
            (
                Error::IfindexUnknown {
                    bridge: "br0".into(),
                },
                Verb::Add,
                11,
            ),
            (
                Error::NotANetns {
                    netns: "/tmp/fifo".into(),
                    why: "x".into(),
                },
                Verb::Add,
                4,
            ),
            (
                Error::BadPrevResultName {
                    index: 1,
                    name: "x".into(),
                },
                Verb::Add,
                7,
            ),
            (Error::Check("x".into()), Verb::Check, code::CHECK_FAILED),
            (
                Error::PodLinkMissing {
                    ifname: "eth0".into(),
                    netns: "/x".into(),
                },
                Verb::Add,
                3,
            ),
            (
                Error::PodLinkMissing {
                    ifname: "eth0".into(),
                    netns: "/x".into(),
                },
                Verb::Check,
                code::CHECK_FAILED,
            ),
            (
                Error::NoInternalPort {
                    bridge: "br0".into(),
                    why: None,
                },
                Verb::Add,
                code::NO_INTERNAL_PORT,
            ),
        ];
        for (err, verb, want) in cases {
            let cni = err.to_cni(verb);
            assert_eq!(cni.code, want, "{err} in {verb:?}");
            assert_eq!(cni.msg, err.to_string());
        }
    }

    #[test]
    fn details_carry_the_cause() {
        let err = Error::from(OvsError::Unreachable {
            addr: "unix:/nope".into(),
            source: ovsdb::Error::Closed,
        });
        let cni = err.to_cni(Verb::Add);
        assert!(cni.msg.contains("unix:/nope"), "{}", cni.msg);
        assert_eq!(cni.details, "OVSDB connection closed");
        let io = std::io::Error::from_raw_os_error(libc::ENOENT);
        let err = Error::from(OvsError::Unreachable {
            addr: "unix:/nope".into(),
            source: ovsdb::Error::Connect {
                addr: "unix:/nope".into(),
                source: io,
            },
        });
        let cni = err.to_cni(Verb::Add);
        assert!(cni.details.contains("No such file"), "{cni:?}");
    }

    #[test]
    fn chain_says_every_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("{0}")]
        struct Leaf(&'static str);
        #[derive(Debug, thiserror::Error)]
        #[error("{what}")]
        struct Wrap {
            what: &'static str,
            #[source]
            source: Box<dyn std::error::Error + Send + Sync>,
        }
        let e = Wrap {
            what: "cannot apply",
            source: Box::new(Wrap {
                what: "transaction failed: timed out",
                source: Box::new(Leaf("timed out")),
            }),
        };
        assert_eq!(chain(&e), "cannot apply: transaction failed: timed out");
        assert_eq!(causes(&e), ["transaction failed: timed out"]);
        assert_eq!(chain(&Leaf("alone")), "alone");
    }
}
