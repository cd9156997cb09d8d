//! etcd's access control in the lab, as a deployment should set it up.
//!
//! With `--client-cert-auth` etcd takes a client certificate's common name as the etcd
//! user. Auth is enabled with a `root` user (the lab's administration), and each node gets
//! a user and a role of its own name that may:
//! - read everything under flaxd's prefix (members, holders, allocations: it must see its
//!   peers and free subnets);
//! - write exactly its own member record `<prefix>/nodes/<node>` and its holder key
//!   `<prefix>/holders/<node>` (exact keys, not prefixes: a prefix `nodes/n1` would also
//!   cover `nodes/n10`);
//! - write `<prefix>/subnets/`: the allocation keys name subnets, not nodes, and whichever
//!   node claims a free subnet first must be able to create its key.
//!
//! So a node's credentials cannot forge or delete another node's record; what they can
//! still do is listed in the README (trust model). The key layout is flaxd's
//! (`flaxd::etcd`); a flaxd that could not register under these roles fails the lab tests.

use std::future::Future;

use etcd_client::{Client, ConnectOptions, Identity, Permission, TlsOptions, UserAddOptions};

use crate::etcd::{Error, Etcd, PREFIX};
use crate::pki::CertFiles;
use crate::underlay::Underlay;

/// The lab's administrator (etcd's built-in root role).
pub const ROOT: &str = "root";

/// The keys node `node` may write (exact keys), and the prefixes it may read and write.
pub fn node_permissions(node: &str) -> (Vec<String>, Vec<String>, Vec<String>) {
    let read_prefixes = vec![format!("{PREFIX}/")];
    let write_keys = vec![
        format!("{PREFIX}/nodes/{node}"),
        format!("{PREFIX}/holders/{node}"),
    ];
    let write_prefixes = vec![format!("{PREFIX}/subnets/")];
    (read_prefixes, write_keys, write_prefixes)
}

/// Creates the `root` user and turns auth on. Idempotent.
pub fn enable(etcd: &Etcd, underlay: &Underlay) -> Result<(), Error> {
    as_root(etcd, underlay, "enable auth", |mut c| async move {
        if c.user_get(ROOT).await.is_err() {
            c.user_add(ROOT, "", Some(UserAddOptions::new().with_no_pwd()))
                .await?;
        }
        c.user_grant_role(ROOT, "root").await?;
        c.auth_enable().await?;
        Ok(())
    })
}

/// Issues `node`'s client certificate into `to` and gives it its user and role (see the
/// module doc). Idempotent.
pub fn grant_node(
    etcd: &Etcd,
    underlay: &Underlay,
    node: &str,
    to: &CertFiles,
) -> Result<(), Error> {
    etcd.pki().issue_client(node, to)?;
    let node = node.to_owned();
    as_root(etcd, underlay, "grant a node", |mut c| async move {
        if c.user_get(node.as_str()).await.is_err() {
            c.user_add(node.as_str(), "", Some(UserAddOptions::new().with_no_pwd()))
                .await?;
        }
        if c.role_get(node.as_str()).await.is_err() {
            c.role_add(node.as_str()).await?;
        }
        let (read, write, write_prefixes) = node_permissions(&node);
        for p in read {
            c.role_grant_permission(node.as_str(), Permission::read(p).with_prefix())
                .await?;
        }
        for k in write {
            c.role_grant_permission(node.as_str(), Permission::read_write(k))
                .await?;
        }
        for p in write_prefixes {
            c.role_grant_permission(node.as_str(), Permission::read_write(p).with_prefix())
                .await?;
        }
        c.user_grant_role(node.as_str(), node.as_str()).await?;
        Ok(())
    })
}

/// Removes `node`'s user and role (a node that left). Tolerates missing ones.
pub fn revoke_node(etcd: &Etcd, underlay: &Underlay, node: &str) -> Result<(), Error> {
    let node = node.to_owned();
    as_root(etcd, underlay, "revoke a node", |mut c| async move {
        if c.user_get(node.as_str()).await.is_ok() {
            c.user_delete(node.as_str()).await?;
        }
        if c.role_get(node.as_str()).await.is_ok() {
            c.role_delete(node.as_str()).await?;
        }
        Ok(())
    })
}

/// A TLS client of the lab's etcd authenticated by `cert` (or by no certificate at all),
/// built on the calling thread's runtime. The caller must be in a namespace that reaches
/// etcd.
pub async fn connect(etcd: &Etcd, cert: Option<&CertFiles>) -> Result<Client, etcd_client::Error> {
    let pki = etcd.pki();
    let read = |p: &std::path::Path| std::fs::read(p).map_err(etcd_client::Error::IoError);
    let mut tls =
        TlsOptions::new().ca_certificate(etcd_client::Certificate::from_pem(read(&pki.ca_cert())?));
    if let Some(c) = cert {
        tls = tls.identity(Identity::from_pem(read(&c.cert)?, read(&c.key)?));
    }
    let opts = ConnectOptions::new()
        .with_tls(tls)
        .with_connect_timeout(std::time::Duration::from_secs(2))
        .with_timeout(std::time::Duration::from_secs(5));
    Client::connect([etcd.endpoint()], Some(opts)).await
}

/// Runs `f` with a root client inside the underlay namespace, on a thread of its own
/// (`setns` is per thread) with a runtime of its own.
fn as_root<F, Fut>(etcd: &Etcd, underlay: &Underlay, step: &'static str, f: F) -> Result<(), Error>
where
    F: FnOnce(Client) -> Fut + Send,
    Fut: Future<Output = Result<(), etcd_client::Error>>,
{
    let root = etcd.pki().client(ROOT);
    in_netns(&underlay.netns, || async {
        let client = connect(etcd, Some(&root)).await?;
        f(client).await
    })
    .map_err(|source| Error::Auth { step, source })
}

/// Runs the future `f` makes on a fresh thread inside `netns` with a current-thread runtime.
pub fn in_netns<T, F, Fut>(netns: &crate::netns::Netns, f: F) -> Result<T, etcd_client::Error>
where
    T: Send,
    F: FnOnce() -> Fut + Send,
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    let file = std::fs::File::open(netns.path()).map_err(etcd_client::Error::IoError)?;
    std::thread::scope(|s| {
        s.spawn(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| etcd_client::Error::IoError(e.into()))?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(etcd_client::Error::IoError)?;
            rt.block_on(f())
        })
        .join()
        .unwrap_or_else(|_| {
            Err(etcd_client::Error::IoError(std::io::Error::other(
                "etcd admin thread panicked",
            )))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_writes_exactly_its_own_keys() {
        let (read, write, write_prefixes) = node_permissions("lab-n1");
        assert_eq!(read, ["/linen/"]);
        assert_eq!(write, ["/linen/nodes/lab-n1", "/linen/holders/lab-n1"]);
        assert_eq!(write_prefixes, ["/linen/subnets/"]);
    }
}
