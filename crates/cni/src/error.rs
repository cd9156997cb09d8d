//! The CNI error result: `{"cniVersion", "code", "msg", "details"}` (SPEC.md section 5).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// An error as a plugin reports it to the runtime.
///
/// Codes 0-99 are reserved by the spec; see the associated constants. 100+ are
/// free for plugin-specific errors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{msg}{} (CNI error code {code})", details_suffix(.details))]
pub struct Error {
    pub code: u32,
    pub msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

fn details_suffix(details: &str) -> String {
    if details.is_empty() {
        String::new()
    } else {
        format!("; {details}")
    }
}

/// The error JSON written on stdout: the error plus the protocol version in use.
#[derive(Serialize)]
struct Reply<'a> {
    #[serde(rename = "cniVersion")]
    cni_version: &'a str,
    #[serde(flatten)]
    error: &'a Error,
}

impl Error {
    /// 1: Incompatible CNI version.
    pub const INCOMPATIBLE_CNI_VERSION: u32 = 1;
    /// 2: Unsupported field in network configuration (message names key and value).
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// 3: Container unknown or does not exist (the runtime need not clean up).
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// 4: Invalid necessary environment variables (message names them).
    pub const INVALID_ENVIRONMENT_VARIABLES: u32 = 4;
    /// 5: I/O failure, e.g. reading stdin.
    pub const IO_FAILURE: u32 = 5;
    /// 6: Failed to decode content, e.g. the network config JSON.
    pub const DECODING_FAILURE: u32 = 6;
    /// 7: Invalid network config.
    pub const INVALID_NETWORK_CONFIG: u32 = 7;
    /// 11: Try again later (transient condition).
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// 50: The plugin is not available (cannot service ADD requests).
    pub const PLUGIN_NOT_AVAILABLE: u32 = 50;
    /// 51: The plugin is not available, and existing containers in the network
    /// may have limited connectivity.
    pub const PLUGIN_NOT_AVAILABLE_LIMITED_CONNECTIVITY: u32 = 51;
    /// 999: internal error. Not a spec code: libcni's `ErrInternal`, which skel
    /// uses for any plugin failure that is not a typed CNI error. We use it for a
    /// plugin that panicked. It lies in the plugin-specific range (100+), so it
    /// cannot collide with a future well-known code.
    pub const INTERNAL: u32 = 999;

    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// Replaces the details (the longer description).
    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    pub fn incompatible_version(msg: impl Into<String>) -> Self {
        Self::new(Self::INCOMPATIBLE_CNI_VERSION, msg, "")
    }

    /// The spec requires the message to name the key and the value.
    pub fn unsupported_field(key: &str, value: impl std::fmt::Display) -> Self {
        Self::new(
            Self::UNSUPPORTED_FIELD,
            format!("unsupported field {key:?} = {value}"),
            "",
        )
    }

    pub fn unknown_container(msg: impl Into<String>) -> Self {
        Self::new(Self::UNKNOWN_CONTAINER, msg, "")
    }

    pub fn invalid_env(msg: impl Into<String>) -> Self {
        Self::new(Self::INVALID_ENVIRONMENT_VARIABLES, msg, "")
    }

    pub fn io_failure(msg: impl Into<String>) -> Self {
        Self::new(Self::IO_FAILURE, msg, "")
    }

    pub fn decoding_failure(msg: impl Into<String>) -> Self {
        Self::new(Self::DECODING_FAILURE, msg, "")
    }

    pub fn invalid_config(msg: impl Into<String>) -> Self {
        Self::new(Self::INVALID_NETWORK_CONFIG, msg, "")
    }

    pub fn try_again_later(msg: impl Into<String>) -> Self {
        Self::new(Self::TRY_AGAIN_LATER, msg, "")
    }

    pub fn plugin_not_available(msg: impl Into<String>) -> Self {
        Self::new(Self::PLUGIN_NOT_AVAILABLE, msg, "")
    }

    pub fn limited_connectivity(msg: impl Into<String>) -> Self {
        Self::new(Self::PLUGIN_NOT_AVAILABLE_LIMITED_CONNECTIVITY, msg, "")
    }

    pub fn internal(msg: impl Into<String>) -> Self {
        Self::new(Self::INTERNAL, msg, "")
    }

    /// The error JSON object as printed on stdout. `cni_version` is the version
    /// string of the configuration in use, echoed even when unsupported (the
    /// spec: "the same value as provided by the configuration").
    pub fn to_json(&self, cni_version: &str) -> Value {
        serde_json::to_value(Reply {
            cni_version,
            error: self,
        })
        .expect("an Error always serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_shape() {
        let cases = [
            (
                Error::invalid_config("Invalid Configuration")
                    .with_details("Network 192.168.0.0/31 too small to allocate from."),
                json!({"cniVersion": "1.1.0", "code": 7, "msg": "Invalid Configuration",
                       "details": "Network 192.168.0.0/31 too small to allocate from."}),
            ),
            (
                Error::invalid_env("required env variables [CNI_NETNS] missing"),
                json!({"cniVersion": "1.1.0", "code": 4,
                       "msg": "required env variables [CNI_NETNS] missing"}),
            ),
        ];
        for (err, want) in cases {
            let got = err.to_json("1.1.0");
            assert_eq!(got, want);
            // Field order follows the spec's example.
            let keys: Vec<_> = got.as_object().unwrap().keys().cloned().collect();
            assert_eq!(keys[..3], ["cniVersion", "code", "msg"]);
        }
    }

    #[test]
    fn constructors_use_spec_codes() {
        let table = [
            (Error::incompatible_version("x"), 1),
            (Error::unsupported_field("k", "v"), 2),
            (Error::unknown_container("x"), 3),
            (Error::invalid_env("x"), 4),
            (Error::io_failure("x"), 5),
            (Error::decoding_failure("x"), 6),
            (Error::invalid_config("x"), 7),
            (Error::try_again_later("x"), 11),
            (Error::plugin_not_available("x"), 50),
            (Error::limited_connectivity("x"), 51),
            (Error::internal("x"), 999),
        ];
        for (err, code) in table {
            assert_eq!(err.code, code, "{err}");
        }
        assert!(Error::unsupported_field("mtu", 9000).msg.contains("mtu"));
        assert!(Error::unsupported_field("mtu", 9000).msg.contains("9000"));
    }

    #[test]
    fn parses_errors_from_other_plugins() {
        // Go plugins omit cniVersion and details.
        let e: Error = serde_json::from_str(r#"{"code": 11, "msg": "busy"}"#).unwrap();
        assert_eq!(e, Error::try_again_later("busy"));
        let e: Error =
            serde_json::from_str(r#"{"cniVersion":"0.4.0","code":100,"msg":"m","details":"d"}"#)
                .unwrap();
        assert_eq!(e, Error::new(100, "m", "d"));
    }

    #[test]
    fn display() {
        assert_eq!(
            Error::new(7, "bad", "worse").to_string(),
            "bad; worse (CNI error code 7)"
        );
        assert_eq!(Error::new(5, "io", "").to_string(), "io (CNI error code 5)");
    }
}
