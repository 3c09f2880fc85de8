//! The stage the way a user meets it: through the registry and YAML, as the binary
//! builds it from a config file.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Once;
use std::sync::atomic::{AtomicUsize, Ordering};

use lametun_core::mtu::OuterIp;
use lametun_core::registry;
use lametun_core::testing::Conformance;
use lametun_core::{BuildContext, BuildError, TunnelConfig};
use lametun_stage_chacha20poly1305::{self as crypto, Chacha20Poly1305Config, generate_key};

/// A private directory for this test process, removed on drop (also when a test fails).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "lametun-crypto-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// Writes `text` to `name` with permission bits `mode`.
    fn file(&self, name: &str, text: &str, mode: u32) -> PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn build(yaml: &str) -> Result<Box<dyn lametun_core::Stage>, BuildError> {
    build_in(yaml, None)
}

fn build_in(yaml: &str, dir: Option<&Path>) -> Result<Box<dyn lametun_core::Stage>, BuildError> {
    let reg = registry::find("chacha20poly1305").expect("registered");
    reg.build_yaml(
        yaml,
        &BuildContext::new(dir.map(Path::to_path_buf), Default::default()),
    )
}

fn error(yaml: &str) -> String {
    match build(yaml) {
        Ok(_) => panic!("{yaml} built"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn is_registered_under_its_type_name() {
    let _ = crypto::Cipher::default(); // links the crate (see the registry docs)
    assert!(registry::names().contains(&"chacha20poly1305"));
    let reg = registry::find("chacha20poly1305").unwrap();
    assert!(reg.example.contains("key_file"));
}

#[test]
fn passes_the_conformance_kit_with_both_ciphers() {
    let key = generate_key();
    Conformance::from_yaml("chacha20poly1305", &format!("key: {key}")).run_all();
    Conformance::from_yaml(
        "chacha20poly1305",
        &format!("key: {key}\ncipher: aes-256-gcm"),
    )
    .seed(7)
    .run_all();
}

#[test]
fn ends_with_different_keys_deliver_nothing() {
    let c = Conformance::from_yaml_pair(
        "chacha20poly1305",
        &format!("key: {}", generate_key()),
        &format!("key: {}", generate_key()),
    );
    for i in 0..20 {
        assert_eq!(c.transfer(b"", i), None);
        assert_eq!(c.transfer(&[0x45; 100], i), None);
    }
}

#[test]
fn a_key_file_readable_by_others_is_refused_with_the_fix() {
    let dir = TempDir::new();
    for mode in [0o644, 0o640, 0o604, 0o620] {
        let path = dir.file(&format!("psk-{mode:o}"), &generate_key(), mode);
        let e = error(&format!("key_file: {}", path.display()));
        assert!(e.starts_with("key_file: "), "{e}");
        assert!(e.contains(&format!("chmod 600 {}", path.display())), "{e}");
        assert!(e.contains(&format!("mode 0{mode:o}")), "{e}");
    }
    for mode in [0o600, 0o400] {
        let path = dir.file(&format!("ok-{mode:o}"), &generate_key(), mode);
        assert!(build(&format!("key_file: {}", path.display())).is_ok());
    }
}

#[test]
fn a_relative_key_file_is_found_next_to_the_config() {
    let dir = TempDir::new();
    dir.file("psk", &format!("{}\n", generate_key()), 0o600);
    let stage = build_in("key_file: psk", Some(&dir.0)).unwrap();
    let describe = stage.describe();
    assert!(
        describe.contains(&format!("key from file {}", dir.0.join("psk").display())),
        "{describe}"
    );
    let e = error("key_file: no/such/psk");
    assert!(
        e.contains("cannot read the key file no/such/psk: No such file"),
        "{e}"
    );
    assert!(e.contains("lametun genkey FILE"), "{e}");
}

#[test]
fn a_directory_as_key_file_is_named_as_such_not_given_a_chmod() {
    let dir = TempDir::new(); // created 0755 under the usual umask
    let e = error(&format!("key_file: {}", dir.0.display()));
    assert!(e.starts_with("key_file: "), "{e}");
    assert!(e.contains("is a directory"), "{e}");
    assert!(!e.contains("chmod"), "{e}");
}

#[test]
fn a_key_pasted_where_a_path_or_a_variable_name_goes_is_not_repeated() {
    let key = generate_key();
    for field in ["key_file", "key_env"] {
        let e = error(&format!("{field}: {key}"));
        assert!(e.starts_with(&format!("{field}: this is a key")), "{e}");
        assert!(e.contains("make a new one"), "{e}");
        assert!(
            !e.contains(key.trim_end_matches('=')),
            "the key leaked: {e}"
        );
    }
    // A real path and a real variable name are still named in their errors.
    let e = error("key_env: LAMETUN_TEST_UNSET_VARIABLE");
    assert!(e.contains("LAMETUN_TEST_UNSET_VARIABLE is not set"), "{e}");
}

#[test]
fn exactly_one_key_source_is_required() {
    let e = error("{}");
    assert!(e.contains("no key"), "{e}");
    assert!(e.contains("lametun genkey"), "{e}");
    let e = error("cipher: aes-256-gcm");
    assert!(e.contains("no key"), "{e}");

    let key = generate_key();
    let e = error(&format!(
        "key: {key}\nkey_env: SOME_VAR_THAT_IS_NOT_SET_7b1c"
    ));
    assert!(e.contains("`key_env` and `key` are all set"), "{e}");
    // Every problem at once: the conflict and the missing variable.
    assert!(
        e.contains("environment variable SOME_VAR_THAT_IS_NOT_SET_7b1c is not set"),
        "{e}"
    );
    assert!(!e.contains(&key), "the key leaked into: {e}");

    let dir = TempDir::new();
    let path = dir.file("psk", &generate_key(), 0o600);
    let e = error(&format!(
        "key_file: {}\nkey_env: X\nkey: {key}",
        path.display()
    ));
    assert!(
        e.contains("`key_file` and `key_env` and `key` are all set"),
        "{e}"
    );
}

#[test]
fn bad_keys_are_named_without_being_shown() {
    let e = error("key: not-base64-at-all!!");
    assert!(e.starts_with("key: the key is not valid base64"), "{e}");
    assert!(!e.contains("not-base64-at-all"), "{e}");

    let short = "c2hvcnQga2V5"; // "short key"
    let e = error(&format!("key: {short}"));
    assert!(e.contains("decodes to 9 bytes, but a key has 32"), "{e}");
    assert!(!e.contains(short), "{e}");

    let dir = TempDir::new();
    let path = dir.file("psk", "\n", 0o600);
    let e = error(&format!("key_file: {}", path.display()));
    assert!(e.contains("is empty"), "{e}");
    let path = dir.file("psk2", "c2hvcnQga2V5", 0o600);
    let e = error(&format!("key_file: {}", path.display()));
    assert!(
        e.contains(&format!("the key in {} decodes to 9 bytes", path.display())),
        "{e}"
    );
}

#[test]
fn unknown_keys_and_ciphers_are_errors() {
    let key = generate_key();
    let e = error(&format!("key: {key}\nkey_fiel: /etc/lametun/psk"));
    assert!(e.contains("key_fiel"), "{e}");
    let e = error(&format!("key: {key}\ncipher: rot13"));
    assert!(e.starts_with("cipher: "), "{e}");
    assert!(
        e.contains("chacha20poly1305") && e.contains("aes-256-gcm"),
        "{e}"
    );
    assert!(!e.contains(&key), "{e}");
}

#[test]
fn key_env_reads_the_variable() {
    const VAR: &str = "LAMETUN_CRYPTO_TEST_PSK";
    if std::env::var_os(VAR).is_some() {
        // The child: the variable was set for us by the parent below.
        let stage = build(&format!("key_env: {VAR}")).unwrap();
        assert!(stage.describe().contains(&format!("key from ${VAR}")));
        return;
    }
    // The environment of a running test process is not ours to change (set_var is
    // unsafe with threads), so run this test again in a child with the variable set.
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "key_env_reads_the_variable", "--test-threads=1"])
        .env(VAR, generate_key())
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("1 passed"),
        "child failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Collects what `tracing` prints while `f` runs.
fn logs_of(f: impl FnOnce()) -> String {
    // One global subscriber for the whole test binary, writing into a buffer of the
    // thread that logs. (A scoped `with_default` subscriber is not enough: a callsite
    // that another test's thread hits first, with no subscriber, can stay disabled for
    // everyone, and this test then misses the warning now and then.)
    thread_local! {
        static CAPTURED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }
    struct ThreadBuf;
    impl std::io::Write for ThreadBuf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            CAPTURED.with(|c| c.borrow_mut().extend_from_slice(b));
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(|| ThreadBuf)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only global subscriber");
    });
    CAPTURED.with(|c| c.borrow_mut().clear());
    f();
    CAPTURED.with(|c| String::from_utf8(std::mem::take(&mut *c.borrow_mut())).unwrap())
}

#[test]
fn an_inline_key_works_but_warns_and_is_never_logged() {
    let key = generate_key();
    let logs = logs_of(|| {
        let c = Conformance::from_yaml("chacha20poly1305", &format!("key: {key}"));
        c.check_round_trip();
        // Forged datagrams: logged (debug, rate-limited), never with the key.
        c.check_hostile_input(300);
        let described = c.a.describe();
        assert!(
            described.contains("key inline in the config"),
            "{described}"
        );
        assert!(!described.contains(&key));
    });
    assert!(logs.contains("WARN"), "{logs}");
    assert!(
        logs.contains("the key is written in the config file"),
        "{logs}"
    );
    assert!(logs.contains("dropped a datagram"), "{logs}");
    assert!(!logs.contains(&key), "the key is in the logs");
    assert!(!logs.contains(&key[..16]), "part of the key is in the logs");
    // Rate-limited: 300+ forged datagrams, a handful of lines.
    let drop_lines = logs.matches("dropped a datagram").count();
    assert!(drop_lines <= 10, "{drop_lines} drop lines");
}

#[test]
fn the_config_struct_debug_hides_the_key() {
    let key = generate_key();
    let config: Chacha20Poly1305Config = yaml_serde::from_str(&format!("key: {key}")).unwrap();
    let debug = format!("{config:?}");
    assert!(!debug.contains(&key), "{debug}");
    assert!(debug.contains("redacted"));
}

/// The ready files in `configs/` parse, build with a real key file, and get the MTU that
/// leaves room for the header and tag.
#[test]
fn the_encrypted_configs_build() {
    let dir = TempDir::new();
    let key = dir.file("psk", &generate_key(), 0o600);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    for (name, listens) in [
        ("encrypted-server.yaml", true),
        ("encrypted-client.yaml", false),
    ] {
        let path = root.join(name);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("key_file: /etc/lametun/psk"));
        let text = text.replace("/etc/lametun/psk", &key.display().to_string());
        let config =
            TunnelConfig::from_yaml(&text, Some(&path)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            matches!(config.peer.role, Some(lametun_core::config::Role::Listen)),
            listens
        );
        let pipeline = config
            .build_pipeline(&BuildContext::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(pipeline.overhead().total(), 32);
        let budget = config.mtu_budget(OuterIp::V4, pipeline.overhead());
        assert_eq!(config.tun_mtu(&budget).unwrap(), 1440, "{name}");
        let budget = config.mtu_budget(OuterIp::V6, pipeline.overhead());
        assert_eq!(config.tun_mtu(&budget).unwrap(), 1420, "{name}");
    }
}

#[test]
fn a_wrong_cipher_found_right_after_a_wrong_key_is_still_reported() {
    use lametun_core::{PacketBuf, PacketMeta, Stage as _, Verdict};
    use std::time::{Duration, Instant};

    let psk = |b: u8| crypto::Psk::from_bytes([b; crypto::KEY_LEN]);
    let stage = |cipher, b| crypto::Chacha20Poly1305::new(cipher, &psk(b)).unwrap();
    let receiver = stage(crypto::Cipher::ChaCha20Poly1305, 1);
    let wrong_key = stage(crypto::Cipher::ChaCha20Poly1305, 2);
    let wrong_cipher = stage(crypto::Cipher::Aes256Gcm, 1);
    let t0 = Instant::now();
    let peer = Some("192.0.2.7:40000".parse().unwrap());
    let deliver = |from: &crypto::Chacha20Poly1305, at: Instant| {
        let oh = from.overhead();
        let mut out = vec![0u8; oh.head + oh.tail];
        let mut pkt = PacketBuf::with_data(&mut out, oh.head, &[]);
        assert_eq!(
            from.outbound(&mut pkt, &PacketMeta::new(at, peer)),
            Verdict::Pass
        );
        let mut wire = pkt.as_slice().to_vec();
        let len = wire.len();
        let mut pkt = PacketBuf::new(&mut wire, 0, len);
        assert!(matches!(
            receiver.inbound(&mut pkt, &PacketMeta::new(at, peer)),
            Verdict::Drop(_)
        ));
    };
    // The client had the wrong key; the admin fixes it and restarts the client, which
    // then turns out to use the other cipher: that must be said at once, not a minute
    // later.
    let logs = logs_of(|| {
        deliver(&wrong_key, t0);
        deliver(&wrong_key, t0 + Duration::from_secs(1));
        deliver(&wrong_cipher, t0 + Duration::from_secs(5));
        deliver(&wrong_cipher, t0 + Duration::from_secs(6));
    });
    let warnings: Vec<&str> = logs.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warnings.len(), 2, "{logs}");
    assert!(warnings[0].contains("different keys"), "{logs}");
    assert!(
        warnings[1].contains("the sender uses cipher aes-256-gcm"),
        "{logs}"
    );
}
