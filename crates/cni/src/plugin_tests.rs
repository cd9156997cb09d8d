use std::cell::RefCell;
use std::collections::HashMap;

use serde_json::json;

use super::*;

/// Records what it was called with; ADD returns the prevResult (or a fixed
/// result) so version conversion shows in the output.
#[derive(Default)]
struct Fake {
    calls: RefCell<Vec<String>>,
    seen: RefCell<Option<CmdArgs>>,
    gc_seen: RefCell<Vec<Attachment>>,
    fail: Option<Error>,
    panic: bool,
}

impl Fake {
    fn record(&self, what: &str) -> Result<(), Error> {
        self.calls.borrow_mut().push(what.to_owned());
        if self.panic {
            panic!("boom in {what}");
        }
        self.fail.clone().map_or(Ok(()), Err)
    }
}

impl Plugin for Fake {
    fn add(&self, args: &CmdArgs) -> Result<types::Result, Error> {
        self.record("add")?;
        *self.seen.borrow_mut() = Some(args.clone());
        Ok(args
            .conf
            .prev_result
            .clone()
            .unwrap_or_else(|| types::Result {
                ips: vec![types::IpConfig::new("10.9.0.2/24".parse().unwrap())],
                ..Default::default()
            }))
    }
    fn del(&self, args: &CmdArgs) -> Result<(), Error> {
        self.record("del")?;
        *self.seen.borrow_mut() = Some(args.clone());
        Ok(())
    }
    fn check(&self, args: &CmdArgs) -> Result<(), Error> {
        self.record("check")?;
        *self.seen.borrow_mut() = Some(args.clone());
        Ok(())
    }
    fn status(&self, _conf: &NetConf) -> Result<(), Error> {
        self.record("status")
    }
    fn gc(&self, _conf: &NetConf, valid: &[Attachment]) -> Result<(), Error> {
        self.record("gc")?;
        *self.gc_seen.borrow_mut() = valid.to_vec();
        Ok(())
    }
}

struct Run {
    code: i32,
    out: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.out).unwrap_or_else(|e| panic!("stdout {:?}: {e}", self.out))
    }
    fn err_code(&self) -> u64 {
        assert_ne!(self.code, 0, "expected failure, got {}", self.out);
        self.json()["code"].as_u64().unwrap()
    }
}

fn env_for(cmd: &str) -> HashMap<&'static str, String> {
    let mut env = HashMap::from([("CNI_COMMAND", cmd.to_owned())]);
    if matches!(cmd, "ADD" | "DEL" | "CHECK") {
        env.insert("CNI_CONTAINERID", "c0ffee".into());
        env.insert("CNI_NETNS", "/var/run/netns/pod".into());
        env.insert("CNI_IFNAME", "eth0".into());
    }
    env.insert("CNI_PATH", "/opt/cni/bin::/usr/lib/cni".into());
    env
}

fn conf(version: &str) -> String {
    json!({"cniVersion": version, "name": "linen", "type": "fake", "mtu": 1450}).to_string()
}

fn run_with(plugin: &Fake, env: &HashMap<&'static str, String>, stdin: &str) -> Run {
    let getenv = |k: &str| env.get(k).cloned();
    let mut out = Vec::new();
    let code = dispatch(plugin, "", &getenv, &mut stdin.as_bytes(), &mut out);
    Run {
        code,
        out: String::from_utf8(out).unwrap(),
    }
}

fn run(cmd: &str, stdin: &str) -> (Fake, Run) {
    let fake = Fake::default();
    let r = run_with(&fake, &env_for(cmd), stdin);
    (fake, r)
}

#[test]
fn each_verb_reaches_the_plugin() {
    let attach = r#"{"cniVersion":"1.1.0","name":"linen","type":"fake",
        "cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}]}"#;
    let table = [
        ("ADD", conf("1.1.0"), Some("add"), true),
        ("DEL", conf("1.1.0"), Some("del"), false),
        ("CHECK", conf("1.1.0"), Some("check"), false),
        ("STATUS", conf("1.1.0"), Some("status"), false),
        ("GC", attach.to_owned(), Some("gc"), false),
        ("VERSION", conf("1.1.0"), None, true),
    ];
    for (cmd, stdin, call, prints) in table {
        let (fake, r) = run(cmd, &stdin);
        assert_eq!(r.code, 0, "{cmd}: {}", r.out);
        assert_eq!(
            *fake.calls.borrow(),
            call.into_iter().collect::<Vec<_>>(),
            "{cmd}"
        );
        assert_eq!(!r.out.is_empty(), prints, "{cmd}: {}", r.out);
    }
}

#[test]
fn cmd_args_are_filled_from_env() {
    let fake = Fake::default();
    let mut env = env_for("ADD");
    env.insert("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=web;;X=a=b".into());
    let r = run_with(&fake, &env, &conf("1.0.0"));
    assert_eq!(r.code, 0, "{}", r.out);
    let seen = fake.seen.borrow().clone().unwrap();
    assert_eq!(seen.container_id, "c0ffee");
    assert_eq!(seen.netns, Some(PathBuf::from("/var/run/netns/pod")));
    assert_eq!(seen.ifname, "eth0");
    let kv = |k: &str, v: &str| (k.to_owned(), v.to_owned());
    assert_eq!(
        seen.args,
        [
            kv("IgnoreUnknown", "1"),
            kv("K8S_POD_NAME", "web"),
            kv("X", "a=b")
        ]
    );
    assert_eq!(
        seen.path,
        [PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")]
    );
    assert_eq!(seen.stdin, conf("1.0.0").as_bytes());
    assert_eq!(seen.conf.raw["mtu"], 1450);
}

#[test]
fn missing_env_vars() {
    // (command, variable removed, expected exit code or error code)
    let table: &[(&str, &str, Option<u64>)] = &[
        ("ADD", "CNI_CONTAINERID", Some(4)),
        ("ADD", "CNI_NETNS", Some(4)),
        ("ADD", "CNI_IFNAME", Some(4)),
        ("ADD", "CNI_PATH", None),
        ("ADD", "CNI_ARGS", None),
        ("CHECK", "CNI_CONTAINERID", Some(4)),
        ("CHECK", "CNI_NETNS", Some(4)),
        ("CHECK", "CNI_IFNAME", Some(4)),
        ("DEL", "CNI_CONTAINERID", Some(4)),
        ("DEL", "CNI_IFNAME", Some(4)),
        ("DEL", "CNI_NETNS", None),
        ("DEL", "CNI_PATH", None),
        ("GC", "CNI_PATH", Some(4)),
        ("STATUS", "CNI_PATH", None),
        ("ADD", "CNI_COMMAND", Some(4)),
        ("VERSION", "CNI_PATH", None),
    ];
    for (cmd, var, want) in table {
        let fake = Fake::default();
        let mut env = env_for(cmd);
        env.remove(var);
        let stdin = if *cmd == "GC" {
            r#"{"cniVersion":"1.1.0","name":"n","cni.dev/valid-attachments":[]}"#.to_owned()
        } else {
            conf("1.1.0")
        };
        let r = run_with(&fake, &env, &stdin);
        match want {
            Some(code) => {
                assert_eq!(r.err_code(), *code, "{cmd} without {var}");
                assert!(r.json()["msg"].as_str().unwrap().contains(var), "{}", r.out);
                assert!(fake.calls.borrow().is_empty());
            }
            None => assert_eq!(r.code, 0, "{cmd} without {var}: {}", r.out),
        }
        // An empty value is the same as unset.
        env.insert(var, String::new());
        let r2 = run_with(&Fake::default(), &env, &stdin);
        assert_eq!(r2.code, r.code, "{cmd} with empty {var}");
    }
    // DEL without a netns hands the plugin None.
    let fake = Fake::default();
    let mut env = env_for("DEL");
    env.remove("CNI_NETNS");
    assert_eq!(run_with(&fake, &env, &conf("1.0.0")).code, 0);
    assert_eq!(fake.seen.borrow().as_ref().unwrap().netns, None);
}

#[test]
fn all_missing_vars_are_named() {
    let env = HashMap::from([("CNI_COMMAND", "ADD".to_owned())]);
    let r = run_with(&Fake::default(), &env, &conf("1.0.0"));
    assert_eq!(r.err_code(), 4);
    assert_eq!(
        r.json()["msg"],
        "required env variables [CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME] missing"
    );
}

#[test]
fn unknown_command() {
    let (fake, r) = run("FROB", &conf("1.0.0"));
    assert_eq!(r.err_code(), 4);
    assert!(fake.calls.borrow().is_empty());
}

#[test]
fn bad_container_ids_and_ifnames() {
    let table: &[(&str, &str)] = &[
        ("CNI_CONTAINERID", "-leading-dash"),
        ("CNI_CONTAINERID", "has space"),
        ("CNI_CONTAINERID", "slash/y"),
        ("CNI_CONTAINERID", "ünïcode"),
        ("CNI_IFNAME", "sixteen-chars-xx"),
        ("CNI_IFNAME", "."),
        ("CNI_IFNAME", ".."),
        ("CNI_IFNAME", "a/b"),
        ("CNI_IFNAME", "a:b"),
        ("CNI_IFNAME", "a b"),
    ];
    for cmd in ["ADD", "DEL", "CHECK"] {
        for (var, value) in table {
            let fake = Fake::default();
            let mut env = env_for(cmd);
            env.insert(var, (*value).into());
            let r = run_with(&fake, &env, &conf("1.0.0"));
            assert_eq!(r.err_code(), 4, "{cmd} {var}={value:?}");
            assert!(fake.calls.borrow().is_empty());
        }
    }
    // Fifteen characters is the longest valid name.
    let mut env = env_for("ADD");
    env.insert("CNI_IFNAME", "fifteen-chars-x".into());
    assert_eq!(run_with(&Fake::default(), &env, &conf("1.0.0")).code, 0);
}

#[test]
fn bad_cni_args() {
    for bad in ["noequals", "=value", "A=1;broken"] {
        let mut env = env_for("ADD");
        env.insert("CNI_ARGS", bad.into());
        let r = run_with(&Fake::default(), &env, &conf("1.0.0"));
        assert_eq!(r.err_code(), 4, "{bad}");
    }
}

#[test]
fn bad_stdin() {
    // (stdin, error code, cniVersion echoed in the error JSON)
    let table: &[(&str, u64, &str)] = &[
        ("", 6, "1.1.0"),
        ("{", 6, "1.1.0"),
        ("null", 6, "1.1.0"),
        (
            r#"{"cniVersion": "1.0.0", "name": "n", "type": "t", }"#,
            6,
            "1.1.0",
        ),
        (r#"{"cniVersion": "1.0.0", "type": "t"}"#, 7, "1.0.0"),
        (r#"{"cniVersion": "1.0.0", "name": "bad name"}"#, 7, "1.0.0"),
        (r#"{"name": "n"}"#, 1, "1.1.0"),
        (r#"{"cniVersion": "0.2.0", "name": "n"}"#, 1, "0.2.0"),
        (r#"{"cniVersion": "2.0.0", "name": "n"}"#, 1, "2.0.0"),
        (
            r#"{"cniVersion": "1.0.0", "name": "n", "prevResult": {"ips": 3}}"#,
            6,
            "1.0.0",
        ),
    ];
    for cmd in ["ADD", "DEL", "CHECK", "STATUS", "GC"] {
        for (stdin, code, echoed) in table {
            let (fake, r) = run(cmd, stdin);
            assert_eq!(r.err_code(), *code, "{cmd} {stdin}");
            assert_eq!(r.json()["cniVersion"], *echoed, "{cmd} {stdin}");
            assert!(fake.calls.borrow().is_empty());
        }
    }
}

#[test]
fn version_gates() {
    // (command, config version, allowed)
    let table: &[(&str, &str, bool)] = &[
        ("CHECK", "0.3.0", false),
        ("CHECK", "0.3.1", false),
        ("CHECK", "0.4.0", true),
        ("CHECK", "1.0.0", true),
        ("STATUS", "1.0.0", false),
        ("STATUS", "1.1.0", true),
        ("GC", "0.4.0", false),
        ("GC", "1.0.0", false),
        ("GC", "1.1.0", true),
        ("ADD", "0.3.0", true),
        ("DEL", "0.3.0", true),
    ];
    for (cmd, version, allowed) in table {
        let stdin = json!({"cniVersion": version, "name": "n", "cni.dev/valid-attachments": []});
        let (fake, r) = run(cmd, &stdin.to_string());
        if *allowed {
            assert_eq!(r.code, 0, "{cmd} {version}: {}", r.out);
        } else {
            assert_eq!(r.err_code(), 1, "{cmd} {version}");
            assert!(fake.calls.borrow().is_empty());
        }
    }
}

#[test]
fn gc_attachments() {
    let (fake, r) = run(
        "GC",
        r#"{"cniVersion":"1.1.0","name":"n","cni.dev/attachments":[{"containerID":"a","ifname":"eth0"}]}"#,
    );
    assert_eq!(r.code, 0);
    assert_eq!(fake.gc_seen.borrow()[0].container_id, "a");
    // Without the list, GC would treat everything as stale: refused.
    let (fake, r) = run("GC", &conf("1.1.0"));
    assert_eq!(r.err_code(), 7);
    assert!(fake.calls.borrow().is_empty());
}

#[test]
fn version_command() {
    let supported = json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]);
    let table: &[(&str, &str)] = &[
        (r#"{"cniVersion":"0.4.0"}"#, "0.4.0"),
        (r#"{"cniVersion":"0.2.0"}"#, "0.2.0"),
        ("", "1.1.0"),
        ("garbage", "1.1.0"),
    ];
    for (stdin, echoed) in table {
        let (_, r) = run("VERSION", stdin);
        assert_eq!(r.code, 0);
        assert_eq!(
            r.json(),
            json!({"cniVersion": echoed, "supportedVersions": supported})
        );
    }
    // VERSION needs nothing but CNI_COMMAND.
    let env = HashMap::from([("CNI_COMMAND", "VERSION".to_owned())]);
    assert_eq!(run_with(&Fake::default(), &env, "").code, 0);
}

#[test]
fn add_prints_result_in_config_version() {
    for v in Version::SUPPORTED {
        let stdin = json!({
            "cniVersion": v.as_str(), "name": "n",
            "prevResult": {
                "interfaces": [{"name": "eth0", "mtu": 1450, "sandbox": "/var/run/netns/p"}],
                "ips": [{"address": "10.1.0.5/16", "interface": 0}]
            }
        });
        let (_, r) = run("ADD", &stdin.to_string());
        assert_eq!(r.code, 0, "{v}: {}", r.out);
        let out = r.json();
        assert_eq!(out["cniVersion"], v.as_str());
        assert_eq!(
            out["ips"][0].get("version").is_some(),
            v.has_ip_version_field(),
            "{v}"
        );
        assert_eq!(
            out["interfaces"][0].get("mtu").is_some(),
            v.has_1_1_result_fields(),
            "{v}"
        );
    }
}

#[test]
fn plugin_errors_are_printed_with_config_version() {
    let fake = Fake {
        fail: Some(Error::try_again_later("ovsdb busy").with_details("retry")),
        ..Default::default()
    };
    for cmd in ["ADD", "DEL", "CHECK"] {
        let r = run_with(&fake, &env_for(cmd), &conf("0.4.0"));
        assert_eq!(r.code, 1);
        assert_eq!(
            r.json(),
            json!({"cniVersion": "0.4.0", "code": 11, "msg": "ovsdb busy", "details": "retry"})
        );
    }
}

#[test]
fn panics_become_internal_errors() {
    let fake = Fake {
        panic: true,
        ..Default::default()
    };
    for cmd in ["ADD", "DEL", "CHECK", "STATUS"] {
        let r = run_with(&fake, &env_for(cmd), &conf("1.1.0"));
        assert_eq!(r.err_code(), 999, "{cmd}");
        assert!(
            r.json()["details"].as_str().unwrap().contains("boom"),
            "{}",
            r.out
        );
    }
}

#[test]
fn about_without_command() {
    let fake = Fake::default();
    let env = |_: &str| None;
    let mut out = Vec::new();
    let code = dispatch(
        &fake,
        "CNI plugin linen v0.1.0",
        &env,
        &mut "".as_bytes(),
        &mut out,
    );
    assert_eq!(code, 0);
    assert!(out.is_empty(), "about goes to stderr");
}

#[test]
fn stdin_read_failure_is_io_error() {
    struct Broken;
    impl Read for Broken {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("gone"))
        }
    }
    let env = env_for("ADD");
    let getenv = |k: &str| env.get(k).cloned();
    let mut out = Vec::new();
    let code = dispatch(&Fake::default(), "", &getenv, &mut Broken, &mut out);
    assert_eq!(code, 1);
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["code"], 5);
}

#[test]
fn cni_args_parser() {
    type Pairs<'a> = Option<&'a [(&'a str, &'a str)]>;
    let table: &[(&str, Pairs)] = &[
        ("", Some(&[])),
        ("A=1", Some(&[("A", "1")])),
        ("A=1;B=", Some(&[("A", "1"), ("B", "")])),
        (";A=1;", Some(&[("A", "1")])),
        ("A", None),
        ("=1", None),
    ];
    for (input, want) in table {
        let got = parse_cni_args(input).ok();
        let want: Option<Vec<(String, String)>> = want.map(|w| {
            w.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        });
        assert_eq!(got, want, "{input:?}");
    }
}
