//! The crate's error type. Every variant names the step and the object it failed on, so callers
//! can branch on the kind (`is_constraint_violation`, `is_timed_out`, ...) instead of strings.

use std::time::Duration;

use uuid::Uuid;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong talking to an OVSDB server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The address is not `unix:PATH`, `tcp:IP:PORT` or `tcp:[IPv6]:PORT`.
    #[error("invalid OVSDB address {addr:?}: {reason}")]
    Address { addr: String, reason: &'static str },

    /// The socket could not be opened (missing socket file, refused, ...).
    #[error("connecting to OVSDB at {addr}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },

    /// The connection is gone: the server closed it, it failed, or the client shut down.
    /// Every pending call and every monitor stream ends with this error.
    #[error("OVSDB connection closed")]
    Closed,

    /// The server answered a JSON-RPC request with an error (e.g. "unknown database").
    #[error("OVSDB {method} request failed: {error}{}", fmt_details(details))]
    Rpc {
        method: String,
        error: String,
        details: Option<String>,
    },

    /// An operation of a transaction failed, or (with `index == ops.len()` and `op == "commit"`)
    /// the commit itself failed. `error` is the RFC 7047 error string, e.g. "constraint violation".
    #[error(
        "OVSDB transaction on {db}: operation {index} ({op}) failed: {error}{}",
        fmt_details(details)
    )]
    Transaction {
        db: String,
        index: usize,
        op: String,
        error: String,
        details: Option<String>,
    },

    /// The server sent something this client cannot make sense of.
    #[error("malformed {what} from OVSDB server: {reason}")]
    Protocol { what: String, reason: String },

    /// A value did not have the shape RFC 7047 gives it.
    #[error("decoding {what}: {reason}")]
    Decode { what: String, reason: String },

    /// A row could not be turned into its typed struct.
    #[error("{table} row {}: column {column:?}: {reason}", fmt_uuid(uuid))]
    Row {
        table: &'static str,
        uuid: Option<Uuid>,
        column: String,
        reason: String,
    },

    /// A client-side deadline passed (`transact_timeout`, `wait_cur_cfg`, ...).
    #[error("{what} timed out after {after:?}")]
    Timeout { what: String, after: Duration },

    /// A row the caller relies on does not exist (e.g. no `Open_vSwitch` root row).
    #[error("{what}: no row in table {table}")]
    MissingRow { table: &'static str, what: String },

    /// ovs-vswitchd reported an error for an interface (its `error` column).
    #[error("interface {name}: {error}")]
    Interface { name: String, error: String },
}

fn fmt_details(details: &Option<String>) -> String {
    details
        .as_deref()
        .map(|d| format!(" ({d})"))
        .unwrap_or_default()
}

fn fmt_uuid(uuid: &Option<Uuid>) -> String {
    uuid.map(|u| u.to_string())
        .unwrap_or_else(|| "<unknown uuid>".to_string())
}

impl Error {
    /// The RFC 7047 error string of a failed transaction or request, if this is one.
    pub fn ovsdb_error(&self) -> Option<&str> {
        match self {
            Error::Transaction { error, .. } | Error::Rpc { error, .. } => Some(error),
            _ => None,
        }
    }

    /// A transaction failed on a constraint, e.g. a duplicate value in a unique index (two
    /// writers racing to insert the same Bridge name). Re-read and retry.
    pub fn is_constraint_violation(&self) -> bool {
        self.ovsdb_error() == Some("constraint violation")
    }

    /// A `wait` operation's condition did not hold within its timeout.
    pub fn is_timed_out(&self) -> bool {
        matches!(self, Error::Transaction { error, .. } if error == "timed out")
    }

    /// A client-side deadline passed.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout { .. })
    }

    /// A commit failed on references (a row points at a missing row).
    pub fn is_referential_integrity_violation(&self) -> bool {
        self.ovsdb_error() == Some("referential integrity violation")
    }

    /// The connection is gone; reconnect before retrying.
    pub fn is_closed(&self) -> bool {
        matches!(self, Error::Closed)
    }

    pub(crate) fn decode(what: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::Decode {
            what: what.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn protocol(what: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::Protocol {
            what: what.into(),
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txn(error: &str) -> Error {
        Error::Transaction {
            db: "Open_vSwitch".into(),
            index: 2,
            op: "commit".into(),
            error: error.into(),
            details: Some("dup".into()),
        }
    }

    #[test]
    fn classifies_errors() {
        let cases: &[(Error, bool, bool, bool)] = &[
            (txn("constraint violation"), true, false, false),
            (txn("timed out"), false, true, false),
            (txn("referential integrity violation"), false, false, false),
            (Error::Closed, false, false, true),
        ];
        for (err, constraint, timed_out, closed) in cases {
            assert_eq!(err.is_constraint_violation(), *constraint, "{err}");
            assert_eq!(err.is_timed_out(), *timed_out, "{err}");
            assert_eq!(err.is_closed(), *closed, "{err}");
        }
    }

    #[test]
    fn display_names_step_and_details() {
        let msg = txn("constraint violation").to_string();
        assert_eq!(
            msg,
            "OVSDB transaction on Open_vSwitch: operation 2 (commit) failed: constraint violation (dup)"
        );
    }
}
