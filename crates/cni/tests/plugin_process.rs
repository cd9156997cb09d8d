//! Both halves end to end, as processes: this test binary is also a plugin.
//! Started with CNI_COMMAND set it runs `cni::plugin::run`; otherwise it
//! copies itself into a plugin directory and drives itself through
//! `cni::runtime::Exec`. Checks exit codes, stdout JSON and panic handling of
//! the real `run`, which unit tests of `dispatch` cannot reach.

use std::path::PathBuf;

use cni::plugin::{Attachment, CmdArgs, Plugin};
use cni::runtime::{Error, Exec, NetworkConfigList, RuntimeConf};
use cni::{NetConf, types};
use serde_json::json;

struct Echo;

impl Plugin for Echo {
    fn add(&self, args: &CmdArgs) -> Result<types::Result, cni::Error> {
        #[derive(serde::Deserialize)]
        struct Conf {
            address: types::IpNet,
            #[serde(default)]
            fail: bool,
            #[serde(default)]
            panic: bool,
        }
        let conf: Conf = args.conf.plugin_config()?;
        if conf.panic {
            panic!("asked to panic");
        }
        if conf.fail {
            return Err(cni::Error::try_again_later("asked to fail")
                .with_details(args.container_id.clone()));
        }
        let mut result = args.conf.prev_result.clone().unwrap_or_default();
        result.interfaces.push(types::Interface {
            name: args.ifname.clone(),
            mtu: Some(1450),
            sandbox: args.netns.as_ref().map(|p| p.display().to_string()),
            ..Default::default()
        });
        let mut ip = types::IpConfig::new(conf.address);
        ip.interface = Some(result.interfaces.len() as u32 - 1);
        result.ips.push(ip);
        Ok(result)
    }
    fn del(&self, _: &CmdArgs) -> Result<(), cni::Error> {
        Ok(())
    }
    fn check(&self, args: &CmdArgs) -> Result<(), cni::Error> {
        match &args.conf.prev_result {
            Some(r) if r.interfaces.iter().any(|i| i.name == args.ifname) => Ok(()),
            _ => Err(cni::Error::new(
                100,
                "interface missing from prevResult",
                "",
            )),
        }
    }
    fn status(&self, _: &NetConf) -> Result<(), cni::Error> {
        Err(cni::Error::plugin_not_available("daemon down"))
    }
    fn gc(&self, _: &NetConf, _: &[Attachment]) -> Result<(), cni::Error> {
        Ok(())
    }
}

fn main() {
    if std::env::var_os("CNI_COMMAND").is_some() {
        cni::plugin::run(&Echo, "echo test plugin");
    }
    // A custom harness (the binary must also be the plugin), speaking libtest's command
    // line through libtest-mimic so that `cargo test` and `cargo nextest` list, filter and
    // run these tests like any other.
    let args = libtest_mimic::Arguments::from_args();
    type Test = (&'static str, fn(&Exec));
    let tests: &[Test] = &[
        ("chain_in_every_version", chain_in_every_version),
        ("errors_and_panics", errors_and_panics),
        ("status_and_version", status_and_version),
    ];
    // One copy of this binary serves every test: copying it while another test thread
    // forks would leak the copy's write descriptor into that child and make the exec
    // fail with ETXTBSY ("text file busy").
    let dir = testkit::tempdir().expect("temp dir");
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).expect("plugin dir");
    std::fs::copy(
        std::env::current_exe().expect("current exe"),
        bin.join("echo"),
    )
    .expect("copy plugin");
    let trials = tests
        .iter()
        .enumerate()
        .map(|(i, &(name, test))| {
            let (bin, cache) = (bin.clone(), dir.path().join(format!("cache{i}")));
            libtest_mimic::Trial::test(name, move || {
                test(&Exec::new(vec![bin], cache));
                Ok(())
            })
        })
        .collect();
    let outcome = libtest_mimic::run(&args, trials);
    drop(dir);
    outcome.exit();
}

fn list(version: &str, plugins: serde_json::Value) -> NetworkConfigList {
    let v = json!({"cniVersion": version, "name": "echonet", "plugins": plugins});
    NetworkConfigList::from_slice(v.to_string().as_bytes()).unwrap()
}

fn rt() -> RuntimeConf {
    RuntimeConf {
        container_id: "c1".into(),
        netns: PathBuf::from("/run/netns/echo"),
        ifname: "eth0".into(),
        ..Default::default()
    }
}

fn chain_in_every_version(exec: &Exec) {
    for v in cni::Version::SUPPORTED {
        let l = list(
            v.as_str(),
            json!([{"type": "echo", "address": "10.5.0.2/24"}, {"type": "echo", "address": "fd05::2/64"}]),
        );
        let r = exec.add_network_list(&l, &rt()).unwrap();
        assert_eq!(
            r.ips.len(),
            2,
            "{v}: the second plugin got the first's result"
        );
        assert_eq!(r.ips[1].address.to_string(), "fd05::2/64");
        // The 1.1-only mtu survives the chain only in 1.1.0.
        assert_eq!(
            r.interfaces[0].mtu.is_some(),
            v.has_1_1_result_fields(),
            "{v}"
        );
        if v.supports_check() {
            exec.check_network_list(&l, &rt()).unwrap();
        }
        exec.del_network_list(&l, &rt()).unwrap();
    }
}

fn errors_and_panics(exec: &Exec) {
    let add = |extra: serde_json::Value| {
        let mut p = json!({"type": "echo", "address": "10.5.0.2/24"});
        p.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        exec.add_network_list(&list("1.0.0", json!([p])), &rt())
            .unwrap_err()
    };
    let e = add(json!({"fail": true}));
    assert_eq!(
        e.cni_error(),
        Some(&cni::Error::new(11, "asked to fail", "c1")),
        "{e}"
    );
    let e = add(json!({"panic": true}));
    match &e {
        Error::Plugin { error, stderr, .. } => {
            assert_eq!(error.code, cni::Error::INTERNAL);
            assert!(error.details.contains("asked to panic"));
            assert!(
                stderr.contains("asked to panic"),
                "the panic message goes to stderr"
            );
        }
        e => panic!("{e}"),
    }
    let e = add(json!({"address": "not-an-address"}));
    assert_eq!(e.cni_error().map(|e| e.code), Some(7), "{e}");
    let at_eth0 = RuntimeConf {
        ifname: "eth0".into(),
        ..rt()
    };
    let l = list("1.0.0", json!([{"type": "echo", "address": "10.5.0.2/24"}]));
    // CHECK with a cached result lacking the interface: plugin error 100.
    exec.add_network_list(&l, &at_eth0).unwrap();
    let other = RuntimeConf {
        ifname: "eth1".into(),
        ..rt()
    };
    std::fs::copy(
        exec.cache_path("echonet", &at_eth0),
        exec.cache_path("echonet", &other),
    )
    .unwrap();
    let e = exec.check_network_list(&l, &other).unwrap_err();
    assert_eq!(e.cni_error().map(|e| e.code), Some(100), "{e}");
}

fn status_and_version(exec: &Exec) {
    let e = exec
        .status_network_list(&list("1.1.0", json!([{"type": "echo"}])))
        .unwrap_err();
    assert_eq!(e.cni_error().map(|e| e.code), Some(50), "{e}");
    let info = exec.version_info("echo").unwrap();
    assert_eq!(info.cni_version, "1.1.0");
    assert_eq!(
        info.supported_versions,
        ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
    );
}
