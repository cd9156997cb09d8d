//! What the figures were measured on, and where the measured binaries are.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

/// Where the reference CNI plugins are on Debian.
pub const SYSTEM_CNI_DIR: &str = "/usr/lib/cni";
/// Where `linen` and `flaxd` are looked up first.
pub const BIN_DIR_ENV: &str = "LINEN_BIN_DIR";

/// The machine a report was measured on.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub ovs_version: String,
    pub memory_gib: f64,
}

impl Machine {
    pub fn detect() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let ovs = crate::proc::ok("ovs-vsctl", &["--version"], None).unwrap_or_default();
        Machine {
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model: field(&cpuinfo, "model name").unwrap_or_else(|| "unknown".into()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_else(|_| "unknown".into()),
            ovs_version: ovs
                .lines()
                .next()
                .and_then(|l| l.rsplit(' ').next())
                .unwrap_or("unknown")
                .to_owned(),
            memory_gib: field(&meminfo, "MemTotal")
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
                .map_or(0.0, |kib| kib / (1024.0 * 1024.0)),
        }
    }
}

/// The value of the first `key: value` line of a /proc file.
fn field(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim().to_owned())
    })
}

/// The directory holding `linen` (and `flaxd` when built): `LINEN_BIN_DIR`, else the
/// directory of this executable, else its parent (a test binary lives in `deps/`).
pub fn bin_dir() -> Result<PathBuf> {
    let (env_dir, exe_dir) = linen_lab::pod::bin_dir_hints();
    let explicit = env_dir.is_some();
    let candidates = linen_lab::pod::build_dirs(env_dir, exe_dir);
    match candidates.iter().find(|d| d.join("linen").is_file()) {
        Some(d) => Ok(d.clone()),
        None if explicit => bail!(
            "{BIN_DIR_ENV}={} holds no linen binary",
            candidates[0].display()
        ),
        None => bail!(
            "no linen binary in {}: build it (`cargo build --release -p linen -p linen-bench`) or set {BIN_DIR_ENV}",
            candidates
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// `flaxd` next to `linen`, if it was built.
pub fn flaxd_bin(bin_dir: &Path) -> Option<PathBuf> {
    let p = bin_dir.join("flaxd");
    p.is_file().then_some(p)
}

/// The size of a file in bytes, if it exists.
pub fn file_size(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_fields() {
        let text = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu\n";
        assert_eq!(field(text, "model name").as_deref(), Some("AMD EPYC 7B13"));
        assert_eq!(field(text, "processor").as_deref(), Some("0"));
        assert_eq!(field(text, "missing"), None);
    }
}
