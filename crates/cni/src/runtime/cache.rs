//! libcni's result cache: `<cacheDir>/results/<network>-<containerID>-<ifname>`,
//! a JSON object of kind `cniCacheV1`. The layout and field names match
//! libcni (`libcni/api.go`), so tools that read libcni's cache read ours.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Error, NetworkConfigList, Result, RuntimeConf};
use crate::{Version, types};

/// The `kind` libcni writes.
pub const CACHE_KIND: &str = "cniCacheV1";

/// One cache file, as libcni lays it out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct CacheFile {
    kind: String,
    #[serde(rename = "containerId")]
    container_id: String,
    /// The list's bytes; Go marshals `[]byte` as standard base64.
    #[serde(default)]
    config: String,
    #[serde(rename = "ifName")]
    ifname: String,
    #[serde(rename = "networkName")]
    network_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    netns: String,
    #[serde(rename = "cniArgs", default, skip_serializing_if = "Vec::is_empty")]
    cni_args: Vec<(String, String)>,
    #[serde(
        rename = "capabilityArgs",
        default,
        skip_serializing_if = "Map::is_empty"
    )]
    capability_args: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    result: Option<Value>,
}

/// An attachment found in the cache (what GC compares against).
#[derive(Debug, Clone, PartialEq)]
pub struct CachedAttachment {
    pub network: String,
    pub runtime_conf: RuntimeConf,
    pub result: Option<types::Result>,
}

pub(super) fn path(cache_dir: &Path, network: &str, rt: &RuntimeConf) -> PathBuf {
    cache_dir
        .join("results")
        .join(format!("{network}-{}-{}", rt.container_id, rt.ifname))
}

pub(super) fn write(
    cache_dir: &Path,
    list: &NetworkConfigList,
    rt: &RuntimeConf,
    result: &types::Result,
) -> Result<()> {
    let path = path(cache_dir, &list.name, rt);
    let file = CacheFile {
        kind: CACHE_KIND.into(),
        container_id: rt.container_id.clone(),
        config: base64(&list.bytes),
        ifname: rt.ifname.clone(),
        network_name: list.name.clone(),
        netns: rt.netns.to_string_lossy().into_owned(),
        cni_args: rt.args.clone(),
        capability_args: rt.capability_args.clone(),
        result: Some(result.to_value(list.cni_version)),
    };
    let bytes = serde_json::to_vec(&file).expect("a CacheFile always serializes");
    let err = |source| Error::WriteCache {
        path: path.clone(),
        source,
    };
    let dir = path.parent().expect("cache path has a parent");
    create_private_dir(dir).map_err(err)?;
    // Write then rename, so a crash never leaves a torn cache file for DEL.
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().unwrap().to_string_lossy()
    ));
    write_private(&tmp, &bytes).map_err(err)?;
    fs::rename(&tmp, &path).map_err(err)
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// The cached result, converted to `version`'s view; `None` without a file.
pub(super) fn read(
    cache_dir: &Path,
    network: &str,
    rt: &RuntimeConf,
    version: Version,
) -> Result<Option<types::Result>> {
    let path = path(cache_dir, network, rt);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(Error::ReadCache { path, source }),
    };
    Ok(decode(&path, &bytes, version)?.result)
}

fn decode(path: &Path, bytes: &[u8], version: Version) -> Result<CachedAttachment> {
    let bad = |reason: String| Error::DecodeCache {
        path: path.to_owned(),
        reason,
    };
    let file: CacheFile = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    if file.kind != CACHE_KIND {
        return Err(bad(format!("kind {:?}, want {CACHE_KIND:?}", file.kind)));
    }
    let result = file
        .result
        .map(|v| {
            let bytes = serde_json::to_vec(&v).expect("a Value always serializes");
            types::Result::from_slice(&bytes, version).map(|(_, r)| r)
        })
        .transpose()
        .map_err(|e| bad(e.to_string()))?;
    Ok(CachedAttachment {
        network: file.network_name,
        runtime_conf: RuntimeConf {
            container_id: file.container_id,
            netns: file.netns.into(),
            ifname: file.ifname,
            args: file.cni_args,
            capability_args: file.capability_args,
        },
        result,
    })
}

/// Removes the cache file; a missing one is success.
pub(super) fn delete(cache_dir: &Path, network: &str, rt: &RuntimeConf) -> Result<()> {
    let path = path(cache_dir, network, rt);
    match fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(Error::DeleteCache { path, source: e })
        }
        _ => Ok(()),
    }
}

/// Every readable attachment cached for `network`, sorted by file name.
/// Unreadable or foreign files are skipped, as libcni does.
pub(super) fn list(cache_dir: &Path, network: &str) -> Result<Vec<CachedAttachment>> {
    let dir = cache_dir.join("results");
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(source) => return Err(Error::ReadCache { path: dir, source }),
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| Some(e.ok()?.path())).collect();
    paths.sort();
    Ok(paths
        .iter()
        .filter_map(|p| {
            let bytes = fs::read(p).ok()?;
            match decode(p, &bytes, Version::LATEST) {
                Ok(a) => Some(a),
                Err(e) => {
                    tracing::debug!(error = %e, "skipping cache file");
                    None
                }
            }
        })
        .filter(|a| a.network == network && !a.runtime_conf.ifname.is_empty())
        .collect())
}

/// Standard base64 with padding (Go's `encoding/json` for `[]byte`).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let table = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (input, want) in table {
            assert_eq!(base64(input.as_bytes()), want);
        }
        assert_eq!(base64(&[0xfb, 0xff]), "+/8=");
    }

    fn list() -> NetworkConfigList {
        NetworkConfigList::from_slice(
            br#"{"cniVersion":"0.4.0","name":"net1","plugins":[{"type":"bridge"}]}"#,
        )
        .unwrap()
    }

    fn rt(id: &str) -> RuntimeConf {
        RuntimeConf {
            container_id: id.into(),
            netns: "/run/netns/p".into(),
            ifname: "eth0".into(),
            args: vec![("K".into(), "V".into())],
            capability_args: json!({"portMappings": []}).as_object().unwrap().clone(),
        }
    }

    #[test]
    fn write_read_list_delete() {
        let dir = tempfile::tempdir().unwrap();
        let result = types::Result {
            ips: vec![types::IpConfig::new("10.3.0.2/24".parse().unwrap())],
            ..Default::default()
        };
        write(dir.path(), &list(), &rt("c1"), &result).unwrap();
        let p = dir.path().join("results/net1-c1-eth0");
        let on_disk: Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
        assert_eq!(on_disk["kind"], "cniCacheV1");
        assert_eq!(on_disk["containerId"], "c1");
        assert_eq!(on_disk["ifName"], "eth0");
        assert_eq!(on_disk["networkName"], "net1");
        assert_eq!(on_disk["netns"], "/run/netns/p");
        assert_eq!(on_disk["cniArgs"], json!([["K", "V"]]));
        assert_eq!(on_disk["config"], base64(&list().bytes));
        assert_eq!(on_disk["result"]["cniVersion"], "0.4.0");
        assert_eq!(on_disk["result"]["ips"][0]["version"], "4");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );

        let got = read(dir.path(), "net1", &rt("c1"), Version::V1_0_0).unwrap();
        assert_eq!(got, Some(result));
        assert_eq!(
            read(dir.path(), "net1", &rt("c2"), Version::V1_0_0).unwrap(),
            None
        );

        write(dir.path(), &list(), &rt("c2"), &types::Result::default()).unwrap();
        fs::write(dir.path().join("results/junk"), "not json").unwrap();
        let all = list_for_tests(dir.path());
        assert_eq!(all, ["c1", "c2"]);
        assert!(list_for_tests_net(dir.path(), "other").is_empty());
        assert_eq!(all_attachments(dir.path())[0].runtime_conf, rt("c1"));

        delete(dir.path(), "net1", &rt("c1")).unwrap();
        delete(dir.path(), "net1", &rt("c1")).unwrap();
        assert_eq!(
            read(dir.path(), "net1", &rt("c1"), Version::V1_0_0).unwrap(),
            None
        );
    }

    fn all_attachments(dir: &Path) -> Vec<CachedAttachment> {
        super::list(dir, "net1").unwrap()
    }
    fn list_for_tests(dir: &Path) -> Vec<String> {
        list_for_tests_net(dir, "net1")
    }
    fn list_for_tests_net(dir: &Path, net: &str) -> Vec<String> {
        super::list(dir, net)
            .unwrap()
            .into_iter()
            .map(|a| a.runtime_conf.container_id)
            .collect()
    }

    #[test]
    fn reads_a_libcni_written_file() {
        // The shape libcni 1.x writes (Go field order, base64 config).
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("results")).unwrap();
        fs::write(
            dir.path().join("results/net1-abc-eth0"),
            r#"{"kind":"cniCacheV1","containerId":"abc","config":"e30=","ifName":"eth0",
               "networkName":"net1","netns":"/run/netns/x",
               "result":{"cniVersion":"1.0.0","ips":[{"address":"10.4.0.9/16","gateway":"10.4.0.1"}]}}"#,
        )
        .unwrap();
        let r = RuntimeConf {
            container_id: "abc".into(),
            ifname: "eth0".into(),
            ..Default::default()
        };
        let got = read(dir.path(), "net1", &r, Version::V1_0_0)
            .unwrap()
            .unwrap();
        assert_eq!(got.ips[0].address.to_string(), "10.4.0.9/16");
        fs::write(
            dir.path().join("results/net1-abc-eth0"),
            r#"{"kind":"other"}"#,
        )
        .unwrap();
        assert!(matches!(
            read(dir.path(), "net1", &r, Version::V1_0_0),
            Err(Error::DecodeCache { .. })
        ));
    }
}
