//! The runtime half against fake plugins (small shell scripts that record
//! their stdin and environment): chaining, ordering, caching, error mapping.
//! No privileges needed.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use cni::Attachment;
use cni::runtime::{Error, Exec, NetworkConfigList, RuntimeConf};
use serde_json::{Value, json};

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let f = Self {
            dir: testkit::tempdir().unwrap(),
        };
        fs::create_dir(f.bin()).unwrap();
        f
    }
    fn bin(&self) -> PathBuf {
        self.dir.path().join("bin")
    }
    fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }
    fn exec(&self) -> Exec {
        Exec::new(
            vec![self.dir.path().join("empty"), self.bin()],
            self.cache(),
        )
    }

    /// A plugin named `name` that appends "CMD name" to the log, saves its
    /// stdin and env, and on ADD prints `add_output` and exits `code`.
    fn plugin(&self, name: &str, add_output: &str, code: i32) {
        let d = self.dir.path().display();
        let script = format!(
            "#!/bin/sh\n\
             cat > '{d}/{name}-'\"$CNI_COMMAND\".json\n\
             env | grep ^CNI_ | sort > '{d}/{name}-'\"$CNI_COMMAND\".env\n\
             echo \"$CNI_COMMAND {name}\" >> '{d}/log'\n\
             echo 'some log line' >&2\n\
             case \"$CNI_COMMAND\" in\n\
               ADD) printf '%s' '{add_output}'; exit {code};;\n\
               VERSION) printf '%s' '{{\"cniVersion\":\"1.1.0\",\"supportedVersions\":[\"1.0.0\",\"1.1.0\"]}}';;\n\
             esac\n"
        );
        let p = self.bin().join(name);
        fs::write(&p, script).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn log(&self) -> Vec<String> {
        fs::read_to_string(self.dir.path().join("log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
    fn stdin_of(&self, name: &str, cmd: &str) -> Value {
        let p = self.dir.path().join(format!("{name}-{cmd}.json"));
        serde_json::from_slice(&fs::read(p).unwrap()).unwrap()
    }
    fn env_of(&self, name: &str, cmd: &str) -> String {
        fs::read_to_string(self.dir.path().join(format!("{name}-{cmd}.env"))).unwrap()
    }
}

fn list(version: &str, plugins: Value) -> NetworkConfigList {
    let v = json!({"cniVersion": version, "name": "fakenet", "plugins": plugins});
    NetworkConfigList::from_slice(v.to_string().as_bytes()).unwrap()
}

fn rt() -> RuntimeConf {
    RuntimeConf {
        container_id: "ctr1".into(),
        netns: "/run/netns/pod1".into(),
        ifname: "eth0".into(),
        args: vec![("K8S_POD_NAME".into(), "web".into())],
        capability_args: json!({"portMappings": [{"hostPort": 8080, "containerPort": 80}]})
            .as_object()
            .unwrap()
            .clone(),
    }
}

const RESULT_A: &str = r#"{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/run/netns/pod1"}],"ips":[{"address":"10.77.0.2/24","interface":0}]}"#;
const RESULT_B_040: &str = r#"{"cniVersion":"0.4.0","interfaces":[{"name":"eth0","sandbox":"/run/netns/pod1"}],"ips":[{"version":"4","address":"10.77.0.2/24","interface":0}],"dns":{"nameservers":["10.77.0.1"]}}"#;

#[test]
fn add_check_del_chain() {
    let f = Fixture::new();
    f.plugin("a", RESULT_A, 0);
    f.plugin("b", RESULT_B_040, 0);
    let exec = f.exec();
    let list = list(
        "1.0.0",
        json!([{"type": "a", "own": 1},
               {"type": "b", "capabilities": {"portMappings": true}}]),
    );

    let result = exec.add_network_list(&list, &rt()).unwrap();
    assert_eq!(
        result.dns.nameservers,
        ["10.77.0.1"],
        "last plugin's result wins"
    );
    // The first plugin gets no prevResult; the second gets the first's, in
    // the list's version (no ips[].version in 1.0.0).
    let a_in = f.stdin_of("a", "ADD");
    assert_eq!(a_in["own"], 1);
    assert_eq!(a_in["name"], "fakenet");
    assert!(a_in.get("prevResult").is_none());
    assert!(a_in.get("runtimeConfig").is_none());
    let b_in = f.stdin_of("b", "ADD");
    assert_eq!(b_in["cniVersion"], "1.0.0");
    assert_eq!(b_in["prevResult"]["cniVersion"], "1.0.0");
    assert_eq!(b_in["prevResult"]["ips"][0]["address"], "10.77.0.2/24");
    assert!(b_in["prevResult"]["ips"][0].get("version").is_none());
    assert_eq!(b_in["runtimeConfig"]["portMappings"][0]["hostPort"], 8080);
    assert!(b_in.get("capabilities").is_none());
    let env = f.env_of("a", "ADD");
    for want in [
        "CNI_COMMAND=ADD",
        "CNI_CONTAINERID=ctr1",
        "CNI_IFNAME=eth0",
        "CNI_NETNS=/run/netns/pod1",
        "CNI_ARGS=K8S_POD_NAME=web",
    ] {
        assert!(env.lines().any(|l| l == want), "{want} in {env}");
    }
    assert!(env.contains(&format!(
        "CNI_PATH={}:{}",
        f.dir.path().join("empty").display(),
        f.bin().display()
    )));

    // Cached in the list's version.
    let cache_path = exec.cache_path("fakenet", &rt());
    assert_eq!(cache_path, f.cache().join("results/fakenet-ctr1-eth0"));
    let cached: Value = serde_json::from_slice(&fs::read(&cache_path).unwrap()).unwrap();
    assert_eq!(cached["result"]["cniVersion"], "1.0.0");
    assert_eq!(
        exec.cached_result(&list, &rt()).unwrap(),
        Some(result.clone())
    );

    exec.check_network_list(&list, &rt()).unwrap();
    assert_eq!(
        f.stdin_of("a", "CHECK")["prevResult"]["dns"]["nameservers"][0],
        "10.77.0.1"
    );

    exec.del_network_list(&list, &rt()).unwrap();
    assert_eq!(
        f.stdin_of("a", "DEL")["prevResult"]["dns"]["nameservers"][0],
        "10.77.0.1"
    );
    assert!(!cache_path.exists());
    assert_eq!(
        f.log(),
        ["ADD a", "ADD b", "CHECK a", "CHECK b", "DEL b", "DEL a"]
    );

    // DEL again, without a cache: no prevResult, still success.
    exec.del_network_list(&list, &rt()).unwrap();
    assert!(f.stdin_of("a", "DEL").get("prevResult").is_none());
    // CHECK without a cache is a clear error.
    assert!(matches!(
        exec.check_network_list(&list, &rt()),
        Err(Error::MissingCachedResult { .. })
    ));
}

#[test]
fn check_gates() {
    let f = Fixture::new();
    f.plugin("a", RESULT_A, 0);
    let exec = f.exec();
    let old = list("0.3.1", json!([{"type": "a"}]));
    assert!(matches!(
        exec.check_network_list(&old, &rt()),
        Err(Error::CheckNotSupported { .. })
    ));
    let v = json!({"cniVersion": "1.0.0", "name": "fakenet", "disableCheck": true, "plugins": [{"type": "a"}]});
    let disabled = NetworkConfigList::from_slice(v.to_string().as_bytes()).unwrap();
    exec.check_network_list(&disabled, &rt()).unwrap();
    assert!(f.log().is_empty());
    // 0.3.x DEL gets no prevResult (it arrived in 0.4.0).
    exec.add_network_list(&old, &rt()).unwrap();
    exec.del_network_list(&old, &rt()).unwrap();
    assert!(f.stdin_of("a", "DEL").get("prevResult").is_none());
}

#[test]
fn plugin_failures_are_typed() {
    let f = Fixture::new();
    f.plugin("ok", RESULT_A, 0);
    f.plugin(
        "fails",
        r#"{"cniVersion":"1.0.0","code":7,"msg":"bad subnet","details":"10.0.0.0/31"}"#,
        1,
    );
    f.plugin("garbage", "hello", 0);
    f.plugin("crashes", "", 2);
    f.plugin(
        "oldresult",
        r#"{"cniVersion":"0.2.0","ip4":{"ip":"10.1.0.2/24"}}"#,
        0,
    );
    fs::write(f.bin().join("noexec"), "#!/bin/sh\n").unwrap();
    let exec = f.exec();
    let add = |t: &str| {
        exec.add_network_list(&list("1.0.0", json!([{"type": "ok"}, {"type": t}])), &rt())
    };

    match add("fails").unwrap_err() {
        Error::Plugin {
            plugin,
            error,
            stderr,
            ..
        } => {
            assert_eq!(plugin, "fails");
            assert_eq!(error, cni::Error::new(7, "bad subnet", "10.0.0.0/31"));
            assert!(stderr.contains("some log line"));
        }
        e => panic!("{e}"),
    }
    let e = add("fails").unwrap_err();
    assert_eq!(e.cni_error().map(|e| e.code), Some(7));
    assert!(e.to_string().contains("\"fails\""), "{e}");
    assert!(matches!(
        add("garbage").unwrap_err(),
        Error::DecodeResult { .. }
    ));
    assert!(matches!(
        add("oldresult").unwrap_err(),
        Error::DecodeResult { .. }
    ));
    match add("crashes").unwrap_err() {
        Error::PluginExit { status, stderr, .. } => {
            assert_eq!(status.code(), Some(2));
            assert!(stderr.contains("some log line"));
        }
        e => panic!("{e}"),
    }
    assert!(matches!(add("noexec").unwrap_err(), Error::Spawn { .. }));
    match add("missing").unwrap_err() {
        Error::PluginNotFound { plugin, dirs } => {
            assert_eq!(plugin, "missing");
            assert_eq!(dirs.len(), 2);
        }
        e => panic!("{e}"),
    }
    // Nothing was cached by any failed ADD.
    assert!(
        exec.cached_result(&list("1.0.0", json!([{"type": "ok"}])), &rt())
            .unwrap()
            .is_none()
    );
}

#[test]
fn invalid_attachment_parameters() {
    let f = Fixture::new();
    f.plugin("a", RESULT_A, 0);
    let exec = f.exec();
    let l = list("1.0.0", json!([{"type": "a"}]));
    for (cid, ifname) in [
        ("", "eth0"),
        ("../x", "eth0"),
        ("c", ""),
        ("c", "a/b"),
        ("c", "waytoolongifname0"),
    ] {
        let r = RuntimeConf {
            container_id: cid.into(),
            ifname: ifname.into(),
            ..rt()
        };
        assert!(
            matches!(
                exec.add_network_list(&l, &r),
                Err(Error::InvalidRuntimeConf { .. })
            ),
            "{cid} {ifname}"
        );
        assert!(matches!(
            exec.del_network_list(&l, &r),
            Err(Error::InvalidRuntimeConf { .. })
        ));
    }
    assert!(f.log().is_empty());
}

#[test]
fn gc_deletes_stale_attachments_then_calls_gc() {
    let f = Fixture::new();
    f.plugin("a", RESULT_A, 0);
    let exec = f.exec();
    let l = list("1.1.0", json!([{"type": "a"}]));
    let at = |id: &str| RuntimeConf {
        container_id: id.into(),
        ..rt()
    };
    exec.add_network_list(&l, &at("keep")).unwrap();
    exec.add_network_list(&l, &at("stale")).unwrap();
    let valid = [Attachment {
        container_id: "keep".into(),
        ifname: "eth0".into(),
    }];
    let cached: Vec<_> = exec
        .cached_attachments("fakenet")
        .unwrap()
        .into_iter()
        .map(|a| a.runtime_conf.container_id)
        .collect();
    assert_eq!(cached, ["keep", "stale"]);
    exec.gc_network_list(&l, &valid).unwrap();
    assert_eq!(f.log(), ["ADD a", "ADD a", "DEL a", "GC a"]);
    assert_eq!(
        f.stdin_of("a", "DEL")["prevResult"]["ips"][0]["address"],
        "10.77.0.2/24"
    );
    assert!(f.env_of("a", "DEL").contains("CNI_CONTAINERID=stale"));
    let gc_in = f.stdin_of("a", "GC");
    assert_eq!(
        gc_in["cni.dev/valid-attachments"],
        json!([{"containerID": "keep", "ifname": "eth0"}])
    );
    assert_eq!(
        gc_in["cni.dev/attachments"],
        gc_in["cni.dev/valid-attachments"]
    );
    assert!(!f.env_of("a", "GC").contains("CNI_CONTAINERID"));
    assert!(exec.cached_result(&l, &at("keep")).unwrap().is_some());
    assert!(exec.cached_result(&l, &at("stale")).unwrap().is_none());

    // Older lists: stale attachments are still deleted, but there is no GC verb.
    let old = list("1.0.0", json!([{"type": "a"}]));
    exec.add_network_list(&old, &at("old")).unwrap();
    exec.gc_network_list(&old, &[]).unwrap();
    assert_eq!(
        f.log()[4..],
        ["ADD a", "DEL a", "DEL a"],
        "deletes old and keep (same network name)"
    );
}

#[test]
fn gc_collects_errors() {
    let f = Fixture::new();
    f.plugin("a", RESULT_A, 0);
    let exec = f.exec();
    let l = list(
        "1.1.0",
        json!([{"type": "a"}, {"type": "missing1"}, {"type": "missing2"}]),
    );
    match exec.gc_network_list(&l, &[]).unwrap_err() {
        Error::Gc { errors, .. } => assert_eq!(errors.len(), 2),
        e => panic!("{e}"),
    }
    assert_eq!(f.log(), ["GC a"], "GC carries on past errors");
}

#[test]
fn status_and_version() {
    let f = Fixture::new();
    f.plugin("a", RESULT_A, 0);
    let exec = f.exec();
    exec.status_network_list(&list("1.1.0", json!([{"type": "a"}])))
        .unwrap();
    exec.status_network_list(&list("1.0.0", json!([{"type": "a"}])))
        .unwrap();
    assert_eq!(f.log(), ["STATUS a"], "no STATUS before 1.1.0");
    assert_eq!(
        f.stdin_of("a", "STATUS"),
        json!({"cniVersion": "1.1.0", "name": "fakenet", "type": "a"})
    );

    let info = exec.version_info("a").unwrap();
    assert_eq!(info.supported_versions, ["1.0.0", "1.1.0"]);
    assert!(info.supports(cni::Version::V1_1_0) && !info.supports(cni::Version::V0_4_0));
    assert!(matches!(
        exec.version_info("nope"),
        Err(Error::PluginNotFound { .. })
    ));
}

#[test]
fn netns_that_does_not_exist() {
    let f = Fixture::new();
    f.plugin("a", RESULT_A, 0);
    let exec = f.exec().in_netns(Path::new("/nonexistent/netns/x"));
    assert!(matches!(
        exec.version_info("a"),
        Err(Error::OpenNetns { .. })
    ));
}
