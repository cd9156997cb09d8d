//! The `linen` binary as a runtime sees it, without any network: stdout carries only the
//! protocol (even with debug logging on), VERSION answers, bad input is the CNI error JSON
//! with a non-zero exit, and no CNI_COMMAND means "say what you are" on stderr.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

fn linen(env: &[(&str, &str)], stdin: &str) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_linen"));
    cmd.env_clear().env("LINEN_LOG", "trace");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn linen");
    // A plugin that refuses its environment may exit before reading stdin.
    match child.stdin.take().unwrap().write_all(stdin.as_bytes()) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        Err(e) => panic!("write stdin: {e}"),
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn version_answers_with_every_supported_version() {
    for (stdin, want) in [("{\"cniVersion\":\"0.4.0\"}", "0.4.0"), ("", "1.1.0")] {
        let (code, out, _) = linen(&[("CNI_COMMAND", "VERSION")], stdin);
        assert_eq!(code, 0);
        let v: Value = serde_json::from_str(&out).expect("VERSION prints JSON only");
        assert_eq!(v["cniVersion"], want);
        assert_eq!(
            v["supportedVersions"],
            serde_json::json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
        );
    }
}

#[test]
fn errors_are_json_on_stdout_and_logs_stay_on_stderr() {
    let env = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/var/run/netns/linen-test-none"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/usr/lib/cni"),
    ];
    let cases = [
        ("{not json", 6),
        (
            "{\"cniVersion\":\"0.2.0\",\"name\":\"n\",\"type\":\"linen\"}",
            1,
        ),
        (
            "{\"cniVersion\":\"1.0.0\",\"name\":\"n\",\"type\":\"linen\"}",
            7,
        ),
        (
            "{\"cniVersion\":\"1.0.0\",\"name\":\"n\",\"type\":\"linen\",\"vtepIPs\":[\"x\"]}",
            7,
        ),
    ];
    for (stdin, want) in cases {
        let (code, out, _) = linen(&env, stdin);
        assert_ne!(code, 0, "{stdin}");
        let v: Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("{stdin}: stdout not JSON ({e}): {out:?}"));
        assert_eq!(v["code"], want, "{stdin}: {v}");
        assert!(v["msg"].as_str().is_some_and(|m| !m.is_empty()));
    }
}

#[test]
fn without_a_command_it_says_what_it_is() {
    let (code, out, err) = linen(&[], "");
    assert_eq!((code, out.as_str()), (0, ""));
    assert!(err.contains("linen v"), "{err}");
}

/// `scripts/install-cni.sh`, the way Linen's docs install the plugin: replacing the binary
/// 40 times while a runtime keeps calling it never fails a call (no ETXTBSY, no ENOEXEC from
/// a half-written file) and never leaves a temporary file behind.
#[test]
fn an_atomic_install_never_fails_a_call_in_flight() {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/install-cni.sh");
    let dir = tempfile::tempdir().unwrap();
    let install = || {
        let out = Command::new(&script)
            .arg(dir.path())
            .arg(env!("CARGO_BIN_EXE_linen"))
            .output()
            .expect("run install-cni.sh");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    install();
    let installed = dir.path().join("linen");
    let done = std::sync::atomic::AtomicBool::new(false);
    let (calls, failures) = std::thread::scope(|s| {
        let caller = s.spawn(|| {
            let (mut calls, mut failures) = (0u32, Vec::new());
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                calls += 1;
                let out = Command::new(&installed)
                    .env_clear()
                    .env("CNI_COMMAND", "VERSION")
                    .stdin(Stdio::null())
                    .output();
                match out {
                    Ok(o) if o.status.success() && o.stdout.starts_with(b"{") => {}
                    other => failures.push(format!("{other:?}")),
                }
            }
            (calls, failures)
        });
        for _ in 0..40 {
            install();
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        caller.join().unwrap()
    });
    eprintln!(
        "{calls} calls during 40 installs, {} failed",
        failures.len()
    );
    assert!(calls > 40, "the calls overlapped the installs: {calls}");
    assert_eq!(failures, Vec::<String>::new());
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["linen"], "no temporary file left");
}
