//! CNI specification versions this crate speaks.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A CNI specification version supported by this crate.
///
/// Ordered oldest to newest, so `a < b` compares spec versions. 0.1.0 and
/// 0.2.0 are deliberately absent: their result type predates plugin chaining
/// and no runtime Linen targets still speaks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

/// A version string that is not one of [`Version::SUPPORTED`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported CNI version {0:?} (supported: 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0)")]
pub struct UnsupportedVersion(pub String);

impl Version {
    /// Every supported version, oldest first (the order of `supportedVersions`).
    pub const SUPPORTED: &'static [Version] = &[
        Version::V0_3_0,
        Version::V0_3_1,
        Version::V0_4_0,
        Version::V1_0_0,
        Version::V1_1_0,
    ];

    /// The newest supported version.
    pub const LATEST: Version = Version::V1_1_0;

    pub fn as_str(self) -> &'static str {
        match self {
            Version::V0_3_0 => "0.3.0",
            Version::V0_3_1 => "0.3.1",
            Version::V0_4_0 => "0.4.0",
            Version::V1_0_0 => "1.0.0",
            Version::V1_1_0 => "1.1.0",
        }
    }

    /// CHECK (and prevResult on DEL) arrived in 0.4.0.
    pub fn supports_check(self) -> bool {
        self >= Version::V0_4_0
    }

    /// GC and STATUS arrived in 1.1.0.
    pub fn supports_gc_status(self) -> bool {
        self >= Version::V1_1_0
    }

    /// Results of 0.3.x and 0.4.0 carry `ips[].version` ("4"/"6"); 1.0.0 removed it.
    pub fn has_ip_version_field(self) -> bool {
        self < Version::V1_0_0
    }

    /// 1.1.0 added `interfaces[].mtu/socketPath/pciID` and
    /// `routes[].mtu/advmss/priority/table/scope` to the result.
    pub fn has_1_1_result_fields(self) -> bool {
        self >= Version::V1_1_0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Version {
    type Err = UnsupportedVersion;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Version::SUPPORTED
            .iter()
            .copied()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnsupportedVersion(s.to_owned()))
    }
}

impl Serialize for Version {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_display_round_trip() {
        for v in Version::SUPPORTED {
            assert_eq!(v.as_str().parse::<Version>().unwrap(), *v);
            assert_eq!(v.to_string(), v.as_str());
            let json = serde_json::to_string(v).unwrap();
            assert_eq!(serde_json::from_str::<Version>(&json).unwrap(), *v);
        }
    }

    #[test]
    fn rejects_unsupported() {
        for s in ["0.1.0", "0.2.0", "1.2.0", "", "1.0", "v1.0.0"] {
            assert_eq!(
                s.parse::<Version>(),
                Err(UnsupportedVersion(s.into())),
                "{s}"
            );
        }
        assert!(serde_json::from_str::<Version>("\"0.2.0\"").is_err());
    }

    #[test]
    fn capability_helpers() {
        use Version::*;
        let table = [
            // version, check, gc/status, ips[].version, 1.1 fields
            (V0_3_0, false, false, true, false),
            (V0_3_1, false, false, true, false),
            (V0_4_0, true, false, true, false),
            (V1_0_0, true, false, false, false),
            (V1_1_0, true, true, false, true),
        ];
        for (v, check, gc, ipv, f11) in table {
            assert_eq!(v.supports_check(), check, "{v}");
            assert_eq!(v.supports_gc_status(), gc, "{v}");
            assert_eq!(v.has_ip_version_field(), ipv, "{v}");
            assert_eq!(v.has_1_1_result_fields(), f11, "{v}");
        }
        assert_eq!(Version::LATEST, *Version::SUPPORTED.last().unwrap());
    }
}
