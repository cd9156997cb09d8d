//! The static-file membership source: a JSON or YAML list of peers, re-read whenever its
//! directory changes (inotify through `notify`; no polling).
//!
//! ```yaml
//! - name: node-1
//!   vtep: 192.0.2.1
//!   podCIDR: 10.244.1.0/24
//! - name: node-2
//!   vtep: 192.0.2.2
//! ```
//!
//! A file that does not parse is refused whole (logged; the last good membership stays): an
//! operator edits it in one go and should not get half of it applied.

use std::path::{Path, PathBuf};

use ipnet::IpNet;
use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{EventKind, RecursiveMode, Watcher};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::membership::{MemberRecord, Membership, Publisher, RecordError};

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("not a list of peers ({{name, vtep, podCIDR}})")]
    Syntax(#[source] serde_yaml::Error),
    #[error("the file is empty (write `[]` for no peers)")]
    Empty,
    #[error("peer {index}: empty name")]
    EmptyName { index: usize },
    #[error("peer {name} is listed twice")]
    Duplicate { name: String },
    #[error("peer {name}")]
    Peer {
        name: String,
        #[source]
        source: RecordError,
    },
    #[error("cannot watch {path}")]
    Watch {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Peer {
    name: String,
    vtep: std::net::IpAddr,
    #[serde(rename = "podCIDR", default)]
    pod_cidr: Option<IpNet>,
    /// Dual-stack: every subnet of the node (`podCIDR`, if given, is the first).
    #[serde(rename = "podCIDRs", default)]
    pod_cidrs: Vec<IpNet>,
}

/// Parses a peer list (YAML, or JSON, which YAML reads too).
pub fn parse_peers(text: &str) -> Result<Membership, FileError> {
    if text.trim().is_empty() {
        // Most likely a file caught while being rewritten; an empty list is `[]`.
        return Err(FileError::Empty);
    }
    let peers: Vec<Peer> = serde_yaml::from_str(text).map_err(FileError::Syntax)?;
    let mut members = Membership::new();
    for (index, p) in peers.into_iter().enumerate() {
        if p.name.trim().is_empty() {
            return Err(FileError::EmptyName { index });
        }
        let rec = MemberRecord {
            vtep: p.vtep,
            pod_cidr: p.pod_cidr,
            pod_cidrs: p.pod_cidrs,
        };
        let m = rec.into_member().map_err(|source| FileError::Peer {
            name: p.name.clone(),
            source,
        })?;
        if members.insert(p.name.clone(), m).is_some() {
            return Err(FileError::Duplicate { name: p.name });
        }
    }
    Ok(members)
}

/// Reads and parses the peer file.
pub fn read_peers(path: &Path) -> Result<Membership, FileError> {
    let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_peers(&text)
}

/// Whether an event may have changed the file's content for good. A write in progress
/// (`IN_MODIFY`) is not: reading then could see half a file, so the reload waits for the
/// writer to close it (`IN_CLOSE_WRITE`) or for a rename.
fn worth_reading(kind: &EventKind) -> bool {
    match kind {
        EventKind::Modify(ModifyKind::Data(_)) => false,
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

pub struct FileSource {
    path: PathBuf,
}

impl FileSource {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileSource { path: path.into() }
    }

    /// Publishes the file's peers now and after every change of its directory, until
    /// `shutdown`. Fails only if the directory cannot be watched.
    pub async fn run(
        self,
        publisher: Publisher,
        shutdown: CancellationToken,
    ) -> Result<(), FileError> {
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let watch_err = |source| FileError::Watch {
            path: dir.clone(),
            source,
        };
        // The directory, not the file: editors and Kubernetes ConfigMaps replace files by
        // renaming, which a watch on the old inode would miss.
        let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            if ev.as_ref().map_or(true, |e| worth_reading(&e.kind)) {
                let _ = tx.send(ev.map(|_| ()));
            }
        })
        .map_err(watch_err)?;
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(watch_err)?;
        tracing::info!(path = %self.path.display(), "watching the peer file");
        self.reload(&publisher);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                ev = rx.recv() => match ev {
                    Some(Ok(())) => {}
                    Some(Err(e)) => tracing::warn!(error = %e, "file watch error; re-reading"),
                    None => return Ok(()),
                },
            }
            // A burst of events (write, close, rename) needs one read.
            while rx.try_recv().is_ok() {}
            self.reload(&publisher);
        }
    }

    fn reload(&self, publisher: &Publisher) {
        match read_peers(&self.path) {
            Ok(members) => {
                tracing::debug!(peers = members.len(), "peer file read");
                publisher.publish(members);
            }
            Err(e) => {
                publisher.set_connected(false);
                tracing::error!(path = %self.path.display(), error = %linen::error::chain(&e), "peer file refused; keeping the last good membership");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse() {
        let yaml = "- name: a\n  vtep: 192.0.2.1\n  podCIDR: 10.244.1.0/24\n- name: b\n  vtep: 192.0.2.2\n";
        let json = r#"[{"name":"a","vtep":"192.0.2.1","podCIDR":"10.244.1.0/24"},
                       {"name":"b","vtep":"192.0.2.2"}]"#;
        for text in [yaml, json] {
            let m = parse_peers(text).expect(text);
            assert_eq!(m.len(), 2);
            assert_eq!(
                m["a"].vtep,
                "192.0.2.1".parse::<std::net::IpAddr>().unwrap()
            );
            assert_eq!(m["a"].pod_cidrs, ["10.244.1.0/24".parse().unwrap()]);
            assert!(m["b"].pod_cidrs.is_empty());
        }
        assert!(parse_peers("[]").unwrap().is_empty());
        assert!(matches!(parse_peers(" \n"), Err(FileError::Empty)));
        // A dual-stack peer: podCIDRs, one per family.
        let dual =
            "- name: a\n  vtep: 192.0.2.1\n  podCIDRs: [fd00:10:244:1::/64, 10.244.1.0/24]\n";
        let m = parse_peers(dual).expect(dual);
        let want: Vec<IpNet> = vec![
            "10.244.1.0/24".parse().unwrap(),
            "fd00:10:244:1::/64".parse().unwrap(),
        ];
        assert_eq!(m["a"].pod_cidrs, want);
        let two_v4 = "- name: a\n  vtep: 192.0.2.1\n  podCIDRs: [10.244.1.0/24, 10.244.2.0/24]\n";
        assert!(matches!(parse_peers(two_v4), Err(FileError::Peer { .. })));
    }

    #[test]
    fn bad_files_are_refused() {
        let cases = [
            "name: a",
            "- name: a\n",
            "- name: a\n  vtep: nope\n",
            "- name: a\n  vtep: 192.0.2.1\n  extra: 1\n",
            "- name: ''\n  vtep: 192.0.2.1\n",
            "- name: a\n  vtep: 127.0.0.1\n",
            "- name: a\n  vtep: 192.0.2.1\n- name: a\n  vtep: 192.0.2.2\n",
            "[{",
        ];
        for c in cases {
            assert!(parse_peers(c).is_err(), "{c:?}");
        }
        assert!(matches!(
            parse_peers("- name: a\n  vtep: 192.0.2.1\n- name: a\n  vtep: 192.0.2.2\n"),
            Err(FileError::Duplicate { .. })
        ));
    }
}
