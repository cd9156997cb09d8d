//! How flaxd reaches etcd: TLS (the CA that etcd's certificate must chain to, and this
//! node's client certificate), optional user/password auth, and the one explicit way to use
//! plaintext.
//!
//! **Secure by default.** Whoever can write under flaxd's prefix joins the pod network (every
//! node lays a tunnel to the VTEP a member record names), so a plaintext, unauthenticated
//! etcd is an open door. `https://` endpoints need a CA; an `http://` endpoint is refused
//! unless the operator says `--etcd-insecure`, so a forgotten flag never silently downgrades a
//! cluster to plaintext.

use std::path::PathBuf;

use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};

/// TLS material, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTls {
    /// The CA etcd's server certificate must chain to.
    pub ca: PathBuf,
    /// This node's client certificate and key (etcd `--client-cert-auth`: the certificate's
    /// common name is the etcd user).
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// User/password authentication (etcd issues a token for it).
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdUser {
    pub name: String,
    pub password: String,
}

impl std::fmt::Debug for EtcdUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdUser")
            .field("name", &self.name)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Everything but the endpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcdAccess {
    pub tls: Option<EtcdTls>,
    pub user: Option<EtcdUser>,
    /// `--etcd-insecure`: `http://` endpoints are allowed.
    pub allow_plaintext: bool,
}

impl EtcdAccess {
    /// Plaintext, no authentication: for tests against a throwaway etcd.
    pub fn insecure() -> Self {
        EtcdAccess {
            allow_plaintext: true,
            ..EtcdAccess::default()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error(
        "etcd endpoint {endpoint} is plaintext: anyone on the path could read and forge membership; use https:// with --etcd-ca-cert (and a client certificate), or say --etcd-insecure"
    )]
    PlaintextRefused { endpoint: String },
    #[error("etcd endpoint {endpoint} is https:// but no --etcd-ca-cert is given")]
    NoCa { endpoint: String },
    #[error("etcd endpoint {endpoint} is neither http:// nor https://")]
    Scheme { endpoint: String },
    #[error("etcd endpoints mix http:// and https://: {endpoints:?}")]
    Mixed { endpoints: Vec<String> },
    #[error("TLS options are given but endpoint {endpoint} is http://")]
    TlsOverPlaintext { endpoint: String },
    #[error("cannot read {what} {path}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Checks `endpoints` against `access` and builds the client options (reads the PEM files).
pub fn connect_options(
    endpoints: &[String],
    access: &EtcdAccess,
) -> Result<ConnectOptions, AccessError> {
    let mut https = false;
    let mut http = false;
    for ep in endpoints {
        if ep.starts_with("https://") {
            https = true;
            if access.tls.is_none() {
                return Err(AccessError::NoCa {
                    endpoint: ep.clone(),
                });
            }
        } else if ep.starts_with("http://") {
            http = true;
            if !access.allow_plaintext {
                return Err(AccessError::PlaintextRefused {
                    endpoint: ep.clone(),
                });
            }
            if access.tls.is_some() {
                return Err(AccessError::TlsOverPlaintext {
                    endpoint: ep.clone(),
                });
            }
        } else {
            return Err(AccessError::Scheme {
                endpoint: ep.clone(),
            });
        }
    }
    if http && https {
        return Err(AccessError::Mixed {
            endpoints: endpoints.to_vec(),
        });
    }
    let mut opts = ConnectOptions::new();
    if let Some(tls) = &access.tls {
        let read = |what, path: &PathBuf| {
            std::fs::read(path).map_err(|source| AccessError::Read {
                what,
                path: path.clone(),
                source,
            })
        };
        let mut t = TlsOptions::new().ca_certificate(Certificate::from_pem(read(
            "the etcd CA certificate",
            &tls.ca,
        )?));
        if let Some((cert, key)) = &tls.identity {
            t = t.identity(Identity::from_pem(
                read("the etcd client certificate", cert)?,
                read("the etcd client key", key)?,
            ));
        }
        opts = opts.with_tls(t);
    }
    if let Some(u) = &access.user {
        opts = opts.with_user(u.name.clone(), u.password.clone());
    }
    Ok(opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eps(e: &[&str]) -> Vec<String> {
        e.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn plaintext_needs_an_explicit_opt_in() {
        let err =
            connect_options(&eps(&["http://127.0.0.1:2379"]), &EtcdAccess::default()).unwrap_err();
        assert!(matches!(err, AccessError::PlaintextRefused { .. }), "{err}");
        assert!(err.to_string().contains("--etcd-insecure"), "{err}");
        connect_options(&eps(&["http://127.0.0.1:2379"]), &EtcdAccess::insecure()).unwrap();
    }

    #[test]
    fn https_needs_a_ca_and_schemes_are_not_mixed() {
        let err =
            connect_options(&eps(&["https://10.0.0.1:2379"]), &EtcdAccess::insecure()).unwrap_err();
        assert!(matches!(err, AccessError::NoCa { .. }), "{err}");
        let tls = EtcdAccess {
            tls: Some(EtcdTls {
                ca: "/nonexistent/ca.pem".into(),
                identity: None,
            }),
            ..EtcdAccess::insecure()
        };
        let err = connect_options(&eps(&["http://a:1", "https://b:1"]), &tls).unwrap_err();
        assert!(matches!(err, AccessError::TlsOverPlaintext { .. }), "{err}");
        let err = connect_options(&eps(&["https://b:1"]), &tls).unwrap_err();
        assert!(matches!(err, AccessError::Read { .. }), "{err}");
        let err = connect_options(&eps(&["unix:///x"]), &tls).unwrap_err();
        assert!(matches!(err, AccessError::Scheme { .. }), "{err}");
        let plain = EtcdAccess::insecure();
        let err = connect_options(&eps(&["https://b:1", "http://a:1"]), &plain).unwrap_err();
        assert!(matches!(err, AccessError::NoCa { .. }), "{err}");
    }

    #[test]
    fn the_password_is_not_in_debug_output() {
        let u = EtcdUser {
            name: "n1".into(),
            password: "s3cret".into(),
        };
        assert!(!format!("{u:?}").contains("s3cret"));
    }
}
