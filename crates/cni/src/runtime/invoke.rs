//! Building a plugin's stdin and running the plugin binary.

use std::fs::File;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use nix::sched::{CloneFlags, setns};
use serde_json::{Map, Value};

use super::{Error, PluginConfig, Result, RuntimeConf};
use crate::plugin::Command;
use crate::{Version, types};

/// Variables a plugin reads; cleared before each call so none leaks from
/// our own environment (e.g. when the runtime itself runs inside a plugin).
const CNI_ENV: [&str; 7] = [
    "CNI_COMMAND",
    "CNI_CONTAINERID",
    "CNI_NETNS",
    "CNI_IFNAME",
    "CNI_ARGS",
    "CNI_PATH",
    "CNI_NETNS_OVERRIDE",
];

/// What goes into the request besides the plugin's own configuration.
pub(super) enum Inject<'a> {
    /// ADD, CHECK, DEL: runtimeConfig from capability args, and prevResult.
    Attachment {
        rt: &'a RuntimeConf,
        prev_result: Option<&'a types::Result>,
    },
    /// GC: the still-valid attachments, under both keys libcni sends.
    Gc { valid: Value },
    /// STATUS, VERSION-less probes: nothing.
    Nothing,
}

/// Derives the request configuration (SPEC.md section 3, "Deriving request
/// configuration"): `cniVersion` and `name` from the list; `capabilities` and
/// every `cni.dev/` key removed; then the per-command keys. The plugin's other
/// keys pass through unchanged. `prevResult` is emitted in the list's version,
/// which is the version the plugin is asked to speak.
pub(super) fn build_request(
    network: &str,
    version: Version,
    plugin: &PluginConfig,
    inject: Inject<'_>,
) -> Value {
    let mut out = Map::new();
    out.insert("cniVersion".into(), version.as_str().into());
    out.insert("name".into(), network.into());
    for (k, v) in &plugin.raw {
        if !matches!(k.as_str(), "cniVersion" | "name" | "capabilities")
            && !k.starts_with("cni.dev/")
        {
            out.insert(k.clone(), v.clone());
        }
    }
    match inject {
        Inject::Attachment { rt, prev_result } => {
            let runtime_config: Map<String, Value> = plugin
                .capabilities
                .iter()
                .filter(|(_, enabled)| **enabled)
                .filter_map(|(cap, _)| Some((cap.clone(), rt.capability_args.get(cap)?.clone())))
                .collect();
            if !runtime_config.is_empty() {
                out.insert("runtimeConfig".into(), Value::Object(runtime_config));
            }
            if let Some(prev) = prev_result {
                out.insert("prevResult".into(), prev.to_value(version));
            }
        }
        Inject::Gc { valid } => {
            out.insert(crate::conf::VALID_ATTACHMENTS_KEY.into(), valid.clone());
            out.insert(crate::conf::LEGACY_ATTACHMENTS_KEY.into(), valid);
        }
        Inject::Nothing => {}
    }
    Value::Object(out)
}

/// CNI_ARGS from pairs (`K=V;K2=V2`).
pub(super) fn cni_args_string(args: &[(String, String)]) -> String {
    args.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(";")
}

/// Finds `plugin_type` in `dirs`: the first regular file of that name.
pub(super) fn find_plugin(plugin_type: &str, dirs: &[PathBuf]) -> Result<PathBuf> {
    if plugin_type.is_empty()
        || plugin_type.contains('/')
        || plugin_type == "."
        || plugin_type == ".."
    {
        return Err(Error::InvalidPluginType {
            plugin: plugin_type.into(),
        });
    }
    dirs.iter()
        .map(|d| d.join(plugin_type))
        .find(|p| p.is_file())
        .ok_or_else(|| Error::PluginNotFound {
            plugin: plugin_type.into(),
            dirs: dirs.to_vec(),
        })
}

/// One plugin execution.
pub(super) struct Call<'a> {
    pub plugin: &'a str,
    pub path: &'a Path,
    pub command: Command,
    /// CNI_* variables other than CNI_COMMAND.
    pub env: Vec<(&'static str, String)>,
    pub stdin: Vec<u8>,
    /// Run inside this network namespace.
    pub netns: Option<&'a Path>,
}

impl Call<'_> {
    /// Runs the plugin and returns its stdout. A non-zero exit becomes
    /// [`Error::Plugin`] when stdout holds the error JSON, else
    /// [`Error::PluginExit`] with both streams.
    pub fn run(self) -> Result<Vec<u8>> {
        let mut cmd = std::process::Command::new(self.path);
        for k in CNI_ENV {
            cmd.env_remove(k);
        }
        cmd.env("CNI_COMMAND", self.command.as_str())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(ns_path) = self.netns {
            let ns = File::open(ns_path).map_err(|source| Error::OpenNetns {
                path: ns_path.to_owned(),
                source,
            })?;
            // SAFETY: the closure runs in the forked child before exec, where
            // only async-signal-safe work is allowed. It makes one syscall
            // (setns) on a descriptor opened above, allocates nothing, takes no
            // lock, and maps the errno to an io::Error without allocating. The
            // child is single-threaded, which setns(CLONE_NEWNET) needs; the
            // parent's namespace is untouched. The descriptor is O_CLOEXEC, so
            // the plugin does not inherit it.
            unsafe {
                cmd.pre_exec(move || {
                    setns(&ns, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
                });
            }
        }
        let spawn_err = |source| Error::Spawn {
            plugin: self.plugin.into(),
            path: self.path.to_owned(),
            source,
        };
        // Like libcni, retry a spawn that failed with "text file busy": a plugin binary
        // just written (an install, a test) can still be held open for writing by a
        // child another thread forked but has not exec'd yet. The window is short.
        let mut attempts = 0;
        let mut child = loop {
            match cmd.spawn() {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempts < 5 => {
                    // Nothing to await: back off 10, 20, 40, 80, 160 ms.
                    std::thread::sleep(std::time::Duration::from_millis(10 << attempts));
                    attempts += 1;
                }
                other => break other.map_err(spawn_err)?,
            }
        };
        let mut stdin = child.stdin.take().expect("stdin is piped");
        // Feed stdin from a thread so a plugin that writes before it has read
        // everything cannot deadlock against us.
        let output = std::thread::scope(|s| {
            s.spawn(move || {
                // A plugin may exit without reading stdin (VERSION): EPIPE is fine.
                if let Err(e) = stdin.write_all(&self.stdin) {
                    tracing::debug!(plugin = self.plugin, error = %e, "plugin did not read all of stdin");
                }
            });
            child.wait_with_output()
        })
        .map_err(spawn_err)?;
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        if !stderr.is_empty() {
            tracing::debug!(plugin = self.plugin, command = %self.command, %stderr, "plugin stderr");
        }
        if output.status.success() {
            return Ok(output.stdout);
        }
        match serde_json::from_slice::<crate::Error>(&output.stdout) {
            Ok(error) => Err(Error::Plugin {
                plugin: self.plugin.into(),
                command: self.command,
                error,
                stderr,
            }),
            Err(_) => Err(Error::PluginExit {
                plugin: self.plugin.into(),
                command: self.command,
                status: output.status,
                stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
                stderr,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn plugin(v: Value) -> PluginConfig {
        let list = json!({"cniVersion": "1.1.0", "name": "dbnet", "plugins": [v]});
        super::super::NetworkConfigList::from_slice(list.to_string().as_bytes())
            .unwrap()
            .plugins
            .remove(0)
    }

    fn rt() -> RuntimeConf {
        RuntimeConf {
            container_id: "c".into(),
            netns: "/run/netns/blue".into(),
            ifname: "eth0".into(),
            args: vec![],
            capability_args: json!({
                "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
                "mac": "00:11:22:33:44:66"
            })
            .as_object()
            .unwrap()
            .clone(),
        }
    }

    #[test]
    fn spec_portmap_request() {
        // SPEC.md "Add example", step 3, minus prevResult.
        let p = plugin(
            json!({"type": "portmap", "capabilities": {"portMappings": true},
                              "cni.dev/secret": 1, "name": "ignored", "cniVersion": "0.1.0"}),
        );
        let rt = rt();
        let got = build_request(
            "dbnet",
            Version::V1_1_0,
            &p,
            Inject::Attachment {
                rt: &rt,
                prev_result: None,
            },
        );
        assert_eq!(
            got,
            json!({"cniVersion": "1.1.0", "name": "dbnet", "type": "portmap",
                   "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}})
        );
    }

    #[test]
    fn runtime_config_only_for_enabled_capabilities() {
        let rt = rt();
        let table = [
            (json!({"type": "t"}), None),
            (json!({"type": "t", "capabilities": {"mac": false}}), None),
            (
                json!({"type": "t", "capabilities": {"bandwidth": true}}),
                None,
            ),
            (
                json!({"type": "t", "capabilities": {"mac": true}}),
                Some(json!({"mac": "00:11:22:33:44:66"})),
            ),
        ];
        for (p, want) in table {
            let got = build_request(
                "n",
                Version::V1_0_0,
                &plugin(p.clone()),
                Inject::Attachment {
                    rt: &rt,
                    prev_result: None,
                },
            );
            assert_eq!(got.get("runtimeConfig").cloned(), want, "{p}");
            assert!(got.get("capabilities").is_none());
        }
    }

    #[test]
    fn prev_result_in_list_version() {
        let prev = types::Result {
            ips: vec![types::IpConfig::new("10.1.0.5/16".parse().unwrap())],
            ..Default::default()
        };
        let rt = rt();
        let p = plugin(json!({"type": "t"}));
        let got = build_request(
            "n",
            Version::V0_4_0,
            &p,
            Inject::Attachment {
                rt: &rt,
                prev_result: Some(&prev),
            },
        );
        assert_eq!(got["prevResult"]["cniVersion"], "0.4.0");
        assert_eq!(got["prevResult"]["ips"][0]["version"], "4");
    }

    #[test]
    fn gc_request() {
        let p = plugin(json!({"type": "t", "capabilities": {"mac": true}}));
        let valid = json!([{"containerID": "a", "ifname": "eth0"}]);
        let got = build_request(
            "n",
            Version::V1_1_0,
            &p,
            Inject::Gc {
                valid: valid.clone(),
            },
        );
        assert_eq!(got["cni.dev/valid-attachments"], valid);
        assert_eq!(got["cni.dev/attachments"], valid);
        assert!(got.get("runtimeConfig").is_none());
    }

    #[test]
    fn cni_args_round_trip() {
        let args = vec![
            ("A".to_owned(), "1".to_owned()),
            ("B".to_owned(), "x=y".to_owned()),
        ];
        let s = cni_args_string(&args);
        assert_eq!(s, "A=1;B=x=y");
        assert_eq!(crate::plugin::parse_cni_args(&s).unwrap(), args);
    }

    #[test]
    fn plugin_lookup() {
        let d1 = tempfile::tempdir().unwrap();
        let d2 = tempfile::tempdir().unwrap();
        std::fs::create_dir(d1.path().join("bridge")).unwrap(); // a directory is not a plugin
        std::fs::write(d2.path().join("bridge"), "").unwrap();
        let dirs = vec![d1.path().to_owned(), d2.path().to_owned()];
        assert_eq!(
            find_plugin("bridge", &dirs).unwrap(),
            d2.path().join("bridge")
        );
        assert!(matches!(
            find_plugin("nope", &dirs),
            Err(Error::PluginNotFound { .. })
        ));
        for bad in ["", "../bridge", "a/b", ".", ".."] {
            assert!(
                matches!(
                    find_plugin(bad, &dirs),
                    Err(Error::InvalidPluginType { .. })
                ),
                "{bad}"
            );
        }
    }
}
