//! Checks before touching anything: root, and the system tools the lab runs.

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::ovs::SCHEMA;

pub const INSTALL_HINT: &str = "install them with `apt-get install openvswitch-switch containernetworking-plugins iputils-ping iproute2` (or the project's scripts/install-deps.sh)";

/// Programs looked up in `PATH`.
pub const PROGRAMS: &[&str] = &[
    "ip",
    "ovsdb-server",
    "ovs-vswitchd",
    "ovs-vsctl",
    "ovs-appctl",
    "ovsdb-tool",
    "ping",
];

/// Files at fixed paths: the CNI plugins pods will be wired with, and the
/// OVSDB schema every node's database is created from.
pub const FILES: &[&str] = &["/usr/lib/cni/bridge", "/usr/lib/cni/host-local", SCHEMA];

#[derive(Debug, Error)]
pub enum Error {
    #[error("linen-lab must run as root (it creates network namespaces and starts OVS); try sudo")]
    NotRoot,
    #[error("missing system tools: {}; {INSTALL_HINT}", .missing.join(", "))]
    Missing { missing: Vec<String> },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Fails with every problem found, not just the first missing tool.
pub fn check() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return Err(Error::NotRoot);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    let missing = missing_tools(&dirs, PROGRAMS, FILES);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::Missing { missing })
    }
}

/// Pure part of `check`: which of `programs` is in none of `dirs`, and which
/// of `files` does not exist.
pub fn missing_tools(dirs: &[PathBuf], programs: &[&str], files: &[&str]) -> Vec<String> {
    let in_path = |p: &str| dirs.iter().any(|d| is_executable(&d.join(p)));
    programs
        .iter()
        .filter(|p| !in_path(p))
        .map(|p| format!("{p} (not in PATH)"))
        .chain(
            files
                .iter()
                .filter(|f| !is_executable(Path::new(f)) && !Path::new(f).is_file())
                .map(|f| f.to_string()),
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
            &["present", "plain", "absent"],
            &[&file, "/nonexistent/host-local"],
        );
        assert_eq!(
            missing,
            vec![
                "plain (not in PATH)",
                "absent (not in PATH)",
                "/nonexistent/host-local"
            ]
        );
    }

    #[test]
    fn missing_message_says_how_to_install() {
        let e = Error::Missing {
            missing: vec!["ping (not in PATH)".into()],
        };
        let msg = e.to_string();
        assert!(msg.contains("ping"));
        assert!(msg.contains("apt-get install openvswitch-switch"));
    }
}
