//! The binary's command line, run for real but without a device.

use std::process::{Command, Output};

use crate::lametun_bin;

fn lametun(args: &[&str]) -> Output {
    Command::new(lametun_bin())
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn neither_listen_nor_server_is_the_articles_error() {
    let o = lametun(&[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("You must specify the server or mark this host to listen"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn listen_and_server_together_is_the_articles_error() {
    let o = lametun(&["-listen", "-server", "192.0.2.1"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("Cannot listen and set server flag"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn unknown_flags_and_bad_values_exit_2() {
    for args in [
        &["-bogus"][..],
        &["-port", "x"],
        &["-listen", "--address", "1.2.3.4/40"],
        &["-server"],
    ] {
        let o = lametun(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    }
}

#[test]
fn an_unresolvable_host_is_one_clear_message() {
    let o = lametun(&["-server", "no-such-host.invalid", "-device", "ltnohost0"]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(e.contains("cannot resolve \"no-such-host.invalid\""), "{e}");
    assert!(!e.contains("panicked"), "{e}");
}

#[test]
fn a_missing_or_malformed_config_names_the_file() {
    let o = lametun(&["--config", "/nonexistent/lametun.yaml", "-listen"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("/nonexistent/lametun.yaml: cannot read the config file"),
        "{}",
        stderr(&o)
    );

    let dir = std::env::temp_dir().join(format!("lametun-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "peer:\n  listen: true\npipeline:\n  - type: nosuchstage\n",
    )
    .unwrap();
    for args in [
        vec!["--config", bad.to_str().unwrap()],
        vec!["check-config", bad.to_str().unwrap()],
    ] {
        let o = lametun(&args);
        assert_eq!(o.status.code(), Some(2));
        let e = stderr(&o);
        assert!(
            e.contains(&format!(
                "{}:4: pipeline[0].type: unknown stage type \"nosuchstage\"",
                bad.display()
            )),
            "{e}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn check_config_prints_the_chain_and_the_mtu() {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/plain-client.yaml");
    let o = lametun(&["check-config", file]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{}{}", out, stderr(&o));
    assert!(out.contains("pipeline: passthrough"), "{out}");
    assert!(
        out.contains("mtu: auto: 1500 - 20 (IPv4) - 8 (UDP) - 4 (packet info) = 1468"),
        "{out}"
    );
    assert!(out.ends_with("ok\n"), "{out}");

    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/plain-server.yaml");
    let o = lametun(&["check-config", file]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("= 1468 (lowered by 20 while the peer is an IPv6 address)"),
        "{out}"
    );
    assert!(out.contains("routes: 172.16.0.0/12"), "{out}");
}

#[test]
fn stages_lists_the_registered_types() {
    let o = lametun(&["stages"]);
    assert_eq!(o.status.code(), Some(0));
    let out = String::from_utf8_lossy(&o.stdout);
    for name in crate::BUNDLED_STAGES {
        assert!(
            out.lines().any(|l| l.starts_with(name)),
            "{name} missing from:\n{out}"
        );
    }
}

#[test]
fn genkey_prints_or_writes_a_private_32_byte_key() {
    let o = lametun(&["genkey"]);
    assert_eq!(o.status.code(), Some(0));
    let key = String::from_utf8_lossy(&o.stdout).trim().to_owned();
    assert_eq!(key.len(), 44, "base64 of 32 bytes: {key}");
    assert_ne!(
        key,
        String::from_utf8_lossy(&lametun(&["genkey"]).stdout).trim(),
        "two keys were equal"
    );

    let dir = std::env::temp_dir().join(format!("lametun-genkey-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("psk");
    let o = lametun(&["genkey", file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim().len(), 44);
    let again = lametun(&["genkey", file.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(2), "must not overwrite a key");
    std::fs::remove_dir_all(&dir).unwrap();
}
