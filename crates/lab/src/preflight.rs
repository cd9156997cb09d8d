//! Checks before touching anything: root, and the system tools the lab runs.

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::ovs::SCHEMA;
use crate::spec::Membership;

pub const INSTALL_HINT: &str =
    "install them with `./scripts/install-deps.sh` (as root, from the repository)";

/// Programs looked up in `PATH`, with the Debian package that provides each.
pub const PROGRAMS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("ovsdb-server", "openvswitch-switch"),
    ("ovs-vswitchd", "openvswitch-switch"),
    ("ovs-vsctl", "openvswitch-switch"),
    ("ovs-appctl", "openvswitch-switch"),
    ("ovsdb-tool", "openvswitch-switch"),
    ("ping", "iputils-ping"),
];

/// What an etcd lab runs besides: etcd itself (flaxd is this repository's,
/// see [`crate::flaxd::binary`]).
pub const ETCD_PROGRAMS: &[(&str, &str)] = &[("etcd", "etcd-server")];

/// Files at fixed paths: the CNI plugins pods are wired with, and the OVSDB
/// schema every node's database is created from.
pub const FILES: &[(&str, &str)] = &[
    ("/usr/lib/cni/bridge", "containernetworking-plugins"),
    ("/usr/lib/cni/host-local", "containernetworking-plugins"),
    (SCHEMA, "openvswitch-common"),
];

#[derive(Debug, Error)]
pub enum Error {
    #[error("must run as root: the lab creates network namespaces and starts OVS (try sudo)")]
    NotRoot,
    #[error(
        "missing system tools: {} (Debian packages: {}); {INSTALL_HINT} or `apt-get install {}`",
        .missing.join(", "), .packages.join(", "), .packages.join(" ")
    )]
    Missing {
        missing: Vec<String>,
        packages: Vec<String>,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Fails with every problem found, not just the first missing tool.
pub fn check() -> Result<()> {
    check_for(Membership::Static)
}

/// [`check`], plus etcd for a lab with [`Membership::Etcd`].
pub fn check_for(membership: Membership) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return Err(Error::NotRoot);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    let mut programs = PROGRAMS.to_vec();
    if membership == Membership::Etcd {
        programs.extend_from_slice(ETCD_PROGRAMS);
    }
    let missing = missing_tools(&dirs, &programs, FILES);
    if missing.is_empty() {
        return Ok(());
    }
    let mut packages: Vec<String> = missing.iter().map(|(_, p)| p.to_string()).collect();
    packages.sort();
    packages.dedup();
    Err(Error::Missing {
        missing: missing.into_iter().map(|(what, _)| what).collect(),
        packages,
    })
}

/// Pure part of `check`: which of `programs` is in none of `dirs`, and which
/// of `files` does not exist, each with its package.
pub fn missing_tools<'a>(
    dirs: &[PathBuf],
    programs: &[(&str, &'a str)],
    files: &[(&str, &'a str)],
) -> Vec<(String, &'a str)> {
    let in_path = |p: &str| dirs.iter().any(|d| is_executable(&d.join(p)));
    programs
        .iter()
        .filter(|(p, _)| !in_path(p))
        .map(|(p, pkg)| (format!("{p} (not in PATH)"), *pkg))
        .chain(
            files
                .iter()
                .filter(|(f, _)| !Path::new(f).is_file())
                .map(|(f, pkg)| (f.to_string(), *pkg)),
        )
        .collect()
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_each_missing_tool() {
        let dir = tempfile::tempdir().unwrap();
        let tool = dir.path().join("present");
        std::fs::write(&tool, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&tool, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let not_exec = dir.path().join("plain");
        std::fs::write(&not_exec, "").unwrap();
        let dirs = vec![dir.path().to_path_buf()];
        let file = tool.to_string_lossy().into_owned();
        let missing = missing_tools(
            &dirs,
            &[("present", "p1"), ("plain", "p2"), ("absent", "p3")],
            &[(&file, "p4"), ("/nonexistent/host-local", "p5")],
        );
        let want: Vec<(String, &str)> = vec![
            ("plain (not in PATH)".into(), "p2"),
            ("absent (not in PATH)".into(), "p3"),
            ("/nonexistent/host-local".into(), "p5"),
        ];
        assert_eq!(missing, want);
    }

    #[test]
    fn missing_message_names_packages_and_the_script() {
        let e = Error::Missing {
            missing: vec!["ping (not in PATH)".into()],
            packages: vec!["iputils-ping".into()],
        };
        let msg = e.to_string();
        assert!(msg.contains("ping (not in PATH)"), "{msg}");
        assert!(msg.contains("./scripts/install-deps.sh"), "{msg}");
        assert!(msg.contains("apt-get install iputils-ping"), "{msg}");
    }
}
