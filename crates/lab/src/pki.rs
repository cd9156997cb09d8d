//! The lab's own certificate authority for etcd, made fresh per lab with `rcgen`: a CA, a
//! server certificate for etcd's address (and loopback), and one client certificate per etcd
//! user — `root` for the lab's administration, and one per node whose common name is the
//! node's name (etcd's `--client-cert-auth` maps it to the etcd user of that name). Keys are
//! written mode 0600. The CA key stays in the lab directory so that nodes added later get
//! certificates too; it goes with the lab.

use std::io::Write as _;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use thiserror::Error;

const CA_NAME: &str = "linen-lab etcd CA";

#[derive(Debug, Error)]
pub enum Error {
    #[error("make the certificate of {what}")]
    Make {
        what: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("read the lab's CA key {path}")]
    ReadCa {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A certificate and its key, as PEM files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The lab's CA, in `dir`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Pki { dir: dir.into() }
    }

    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    fn ca_key(&self) -> PathBuf {
        self.dir.join("ca-key.pem")
    }

    pub fn server(&self) -> CertFiles {
        self.files("server")
    }

    /// The client certificate of etcd user `user` in this directory.
    pub fn client(&self, user: &str) -> CertFiles {
        self.files(&format!("client-{user}"))
    }

    fn files(&self, stem: &str) -> CertFiles {
        CertFiles {
            cert: self.dir.join(format!("{stem}.pem")),
            key: self.dir.join(format!("{stem}-key.pem")),
        }
    }

    /// A new CA and etcd's server certificate for `ips` (and `localhost`).
    pub fn create(&self, ips: &[IpAddr]) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(|source| Error::Write {
            path: self.dir.clone(),
            source,
        })?;
        let make = |source| Error::Make {
            what: CA_NAME.into(),
            source,
        };
        let key = KeyPair::generate().map_err(make)?;
        let ca = ca_params().self_signed(&key).map_err(make)?;
        write(&self.ca_cert(), &ca.pem(), false)?;
        write(&self.ca_key(), &key.serialize_pem(), true)?;
        let mut server = CertificateParams::new(vec!["localhost".to_owned()]).map_err(make)?;
        server.distinguished_name.push(DnType::CommonName, "etcd");
        server
            .subject_alt_names
            .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign("etcd", server, &self.server())
    }

    /// A client certificate whose common name is `user`, written to `to`.
    pub fn issue_client(&self, user: &str, to: &CertFiles) -> Result<()> {
        let mut params =
            CertificateParams::new(Vec::<String>::new()).map_err(|source| Error::Make {
                what: user.into(),
                source,
            })?;
        params.distinguished_name.push(DnType::CommonName, user);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(user, params, to)
    }

    fn sign(&self, what: &str, params: CertificateParams, to: &CertFiles) -> Result<()> {
        let make = |source| Error::Make {
            what: what.into(),
            source,
        };
        let ca_pem = std::fs::read_to_string(self.ca_key()).map_err(|source| Error::ReadCa {
            path: self.ca_key(),
            source,
        })?;
        let issuer = Issuer::new(ca_params(), KeyPair::from_pem(&ca_pem).map_err(make)?);
        let key = KeyPair::generate().map_err(make)?;
        let cert = params.signed_by(&key, &issuer).map_err(make)?;
        if let Some(dir) = to.cert.parent() {
            std::fs::create_dir_all(dir).map_err(|source| Error::Write {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        write(&to.cert, &cert.pem(), false)?;
        write(&to.key, &key.serialize_pem(), true)
    }
}

/// The CA's parameters: the same each time, so that a certificate signed later (a node that
/// joins) names the same issuer and key as the CA certificate written first.
fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, CA_NAME);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

fn write(path: &Path, text: &str, secret: bool) -> Result<()> {
    let err = |source| Error::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn a_ca_signs_server_and_client_certificates_later_too() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path().join("pki"));
        pki.create(&["10.245.2.254".parse().unwrap()]).unwrap();
        let node = pki.client("lab-n1");
        pki.issue_client("lab-n1", &node).unwrap();
        for f in [pki.ca_cert(), pki.server().cert, node.cert.clone()] {
            let text = std::fs::read_to_string(&f).unwrap();
            assert!(text.starts_with("-----BEGIN CERTIFICATE-----"), "{f:?}");
        }
        for key in [pki.ca_key(), pki.server().key, node.key] {
            let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{key:?}");
        }
    }
}
