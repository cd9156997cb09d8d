//! The binaries a test runs must be this build's: not one installed in a system directory,
//! and not one older than its sources (a targeted `cargo nextest run -p linen-lab` does not
//! rebuild `linen` or `flaxd`; a stale one would test old code and pass).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Where installed programs live; a test never runs Linen from there.
const SYSTEM_DIRS: [&str; 7] = [
    "/usr/", "/opt/", "/bin/", "/sbin/", "/lib/", "/lib64/", "/etc/",
];

/// Panics unless `binary` is outside the system directories and at least as new as every
/// file under `sources` (directories are walked; `target` and hidden entries skipped).
#[track_caller]
pub fn require_fresh(binary: &Path, sources: &[PathBuf]) {
    if let Err(why) = check_fresh(binary, sources) {
        panic!(
            "refusing to test {}: {why}. Build this tree's binaries first: \
             `cargo build --release --workspace --tests` (scripts/test.sh does), and point LINEN_BIN_DIR at \
             target/release",
            binary.display()
        );
    }
}

/// [`require_fresh`] for a binary of this workspace: against the source files cargo recorded
/// for it (`<binary>.d` beside it, which must all lie in this workspace: a binary of another
/// checkout is not this build's), else against the `src` of workspace crates `crates` (e.g.
/// `linen` is built from `["linen", "cni", "ovsdb"]`); always against the workspace's and the
/// crates' `Cargo.toml` and `Cargo.lock`.
#[track_caller]
pub fn require_fresh_build(binary: &Path, crates: &[&str]) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the workspace root");
    let mut sources = vec![root.join("Cargo.toml"), root.join("Cargo.lock")];
    for c in crates {
        sources.push(root.join("crates").join(c).join("Cargo.toml"));
    }
    match std::fs::read_to_string(binary.with_extension("d")) {
        Ok(dep_info) => {
            let listed = dep_info_sources(&dep_info);
            if let Some(foreign) = listed.iter().find(|p| !p.starts_with(&root)) {
                panic!(
                    "refusing to test {}: built from {}, outside this workspace ({})",
                    binary.display(),
                    foreign.display(),
                    root.display()
                );
            }
            sources.extend(listed);
        }
        Err(_) => sources.extend(
            crates
                .iter()
                .map(|c| root.join("crates").join(c).join("src")),
        ),
    }
    require_fresh(binary, &sources);
}

/// The prerequisites of a make-style dep-info file (`target: a.rs b\ c.rs`).
fn dep_info_sources(text: &str) -> Vec<PathBuf> {
    let Some((_, deps)) = text.lines().next().and_then(|l| l.split_once(": ")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = deps.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => cur.extend(chars.next()),
            ' ' => {
                if !cur.is_empty() {
                    out.push(PathBuf::from(std::mem::take(&mut cur)));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(PathBuf::from(cur));
    }
    out
}

/// The crates `linen` is built from.
pub const LINEN_CRATES: &[&str] = &["linen", "cni", "ovsdb"];
/// The crates `flaxd` is built from.
pub const FLAXD_CRATES: &[&str] = &["flaxd", "linen", "cni", "ovsdb"];

/// Why `binary` is not this build's, if it is not.
pub fn check_fresh(binary: &Path, sources: &[PathBuf]) -> Result<(), String> {
    let real = binary
        .canonicalize()
        .map_err(|e| format!("cannot resolve it: {e}"))?;
    let shown = real.to_string_lossy();
    if let Some(dir) = SYSTEM_DIRS.iter().find(|d| shown.starts_with(*d)) {
        return Err(format!("it is installed in the system directory {dir}"));
    }
    let built = modified(&real).map_err(|e| format!("cannot read its time: {e}"))?;
    let mut newest: Option<(SystemTime, PathBuf)> = None;
    for src in sources {
        newest_under(src, &mut newest);
    }
    match newest {
        Some((t, path)) if t > built => Err(format!(
            "it is older than its source {} (changed after the build)",
            path.display()
        )),
        _ => Ok(()),
    }
}

fn modified(path: &Path) -> std::io::Result<SystemTime> {
    std::fs::metadata(path)?.modified()
}

fn newest_under(path: &Path, newest: &mut Option<(SystemTime, PathBuf)>) {
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    if meta.is_dir() {
        let Ok(entries) = std::fs::read_dir(path) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || name == "target" {
                continue;
            }
            newest_under(&e.path(), newest);
        }
    } else if let Ok(t) = meta.modified()
        && newest.as_ref().is_none_or(|(n, _)| t > *n)
    {
        *newest = Some((t, path.to_path_buf()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::time::Duration;

    #[test]
    fn a_binary_older_than_a_source_is_refused() {
        let d = crate::tempdir().unwrap();
        let src = d.path().join("src");
        std::fs::create_dir(&src).unwrap();
        let old = SystemTime::now() - Duration::from_secs(60);
        std::fs::write(src.join("lib.rs"), "").unwrap();
        File::options()
            .write(true)
            .open(src.join("lib.rs"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        let bin = d.path().join("linen");
        std::fs::write(&bin, "").unwrap();
        assert_eq!(check_fresh(&bin, std::slice::from_ref(&src)), Ok(()));
        // A source edited after the build.
        std::fs::write(src.join("main.rs"), "").unwrap();
        File::options()
            .write(true)
            .open(&bin)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let err = check_fresh(&bin, &[src]).unwrap_err();
        assert!(err.contains("main.rs"), "{err}");
    }

    #[test]
    fn dep_info_lists_sources_with_escaped_spaces() {
        let got = dep_info_sources("/t/linen: /w/a.rs /w/my\\ b.rs\n\n/w/a.rs:\n");
        assert_eq!(got, [PathBuf::from("/w/a.rs"), PathBuf::from("/w/my b.rs")]);
    }

    #[test]
    fn a_system_binary_is_refused() {
        let err = check_fresh(Path::new("/bin/sh"), &[]).unwrap_err();
        assert!(err.contains("system directory"), "{err}");
    }
}
