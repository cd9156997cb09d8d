//! Installing files where a reader may be using them: CNI plugin binaries in the runtime's
//! `bin` directory (an ADD may exec them at any moment) and the conflist in its `net.d`.
//!
//! Every write is atomic: a temporary file in the same directory (so the rename cannot cross
//! a filesystem), written, given its mode, fsynced, renamed over the old name, then the
//! directory fsynced. A reader sees the old file or the new one, never a partial one, and a
//! binary being executed is never opened for writing (no ETXTBSY): the old inode stays
//! whole until its last user exits. The temporary name starts with a dot and ends in
//! `.tmp`, so neither the runtime's conflist scan nor a plugin lookup ever picks it up.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// An installation step failed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0}: not a plain file name")]
    BadName(PathBuf),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> InstallError + '_ {
    move |source| InstallError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes `content` to `path` with `mode`, atomically, unless `path` already holds exactly
/// that content with that mode. Returns whether it wrote.
pub fn write_atomic(path: &Path, content: &[u8], mode: u32) -> Result<bool, InstallError> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| InstallError::BadName(path.to_owned()))?;
    if let Ok(meta) = fs::metadata(path)
        && meta.permissions().mode() & 0o7777 == mode
        && meta.len() == content.len() as u64
        && fs::read(path).is_ok_and(|old| old == content)
    {
        return Ok(false);
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(content)?;
        // The umask may have narrowed `mode` at creation.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(InstallError::Io {
            path: path.to_owned(),
            source: e,
        });
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))?;
    Ok(true)
}

/// What [`install_dir`] did with one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub name: String,
    /// False when the destination already held exactly this file.
    pub written: bool,
}

/// Copies every regular file of `from` into `to` (created if missing) with [`write_atomic`]
/// and mode 0755, in name order. Other entries (directories, links, devices) are skipped.
pub fn install_dir(from: &Path, to: &Path) -> Result<Vec<Installed>, InstallError> {
    let mut files = Vec::new();
    for entry in fs::read_dir(from).map_err(io_err(from))? {
        let entry = entry.map_err(io_err(from))?;
        let kind = entry.file_type().map_err(io_err(&entry.path()))?;
        if !kind.is_file() {
            continue;
        }
        let name = entry
            .file_name()
            .into_string()
            .map_err(|_| InstallError::BadName(entry.path()))?;
        files.push(name);
    }
    files.sort();
    let mut done = Vec::with_capacity(files.len());
    for name in files {
        let src = from.join(&name);
        let content = fs::read(&src).map_err(io_err(&src))?;
        let written = write_atomic(&to.join(&name), &content, 0o755)?;
        done.push(Installed { name, written });
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    #[test]
    fn writes_replaces_by_rename_and_skips_identical_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("linen");
        assert!(write_atomic(&path, b"one", 0o755).unwrap());
        let first = fs::metadata(&path).unwrap();
        assert_eq!(first.permissions().mode() & 0o7777, 0o755);
        assert_eq!(fs::read(&path).unwrap(), b"one");

        // The same content and mode: nothing is written, the inode stays.
        assert!(!write_atomic(&path, b"one", 0o755).unwrap());
        assert_eq!(fs::metadata(&path).unwrap().ino(), first.ino());

        // New content: a new inode (renamed over), so a process running the old file keeps
        // a whole one; a holder of the old file still reads the old bytes.
        let old = File::open(&path).unwrap();
        assert!(write_atomic(&path, b"two!", 0o755).unwrap());
        assert_ne!(fs::metadata(&path).unwrap().ino(), first.ino());
        assert_eq!(fs::read(&path).unwrap(), b"two!");
        assert_eq!(io::read_to_string(old).unwrap(), "one");

        // Only a mode change is still a write.
        assert!(write_atomic(&path, b"two!", 0o644).unwrap());
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o7777,
            0o644
        );
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("linen")]);
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("conf");
        write_atomic(&path, b"old", 0o644).unwrap();
        // A directory where the file should be: the rename fails.
        let blocked = dir.path().join("sub");
        fs::create_dir_all(blocked.join("x")).unwrap();
        assert!(write_atomic(&blocked, b"new", 0o644).is_err());
        assert_eq!(fs::read(&path).unwrap(), b"old");
        let mut names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["conf", "sub"]);
    }

    #[test]
    fn install_dir_copies_plain_files_executable_in_order() {
        let from = tempfile::tempdir().unwrap();
        let to = tempfile::tempdir().unwrap();
        fs::write(from.path().join("linen"), b"L").unwrap();
        fs::write(from.path().join("bridge"), b"B").unwrap();
        fs::create_dir(from.path().join("subdir")).unwrap();
        std::os::unix::fs::symlink("linen", from.path().join("alias")).unwrap();
        let dest = to.path().join("opt/cni/bin");
        let done = install_dir(from.path(), &dest).unwrap();
        assert_eq!(
            done,
            [
                Installed {
                    name: "bridge".into(),
                    written: true
                },
                Installed {
                    name: "linen".into(),
                    written: true
                },
            ]
        );
        for (name, body) in [("bridge", b"B"), ("linen", b"L")] {
            let p = dest.join(name);
            assert_eq!(fs::read(&p).unwrap(), body);
            assert_eq!(
                fs::metadata(&p).unwrap().permissions().mode() & 0o7777,
                0o755
            );
        }
        assert!(!dest.join("subdir").exists() && !dest.join("alias").exists());
        // Again: nothing to write.
        assert!(
            install_dir(from.path(), &dest)
                .unwrap()
                .iter()
                .all(|i| !i.written)
        );
    }
}
