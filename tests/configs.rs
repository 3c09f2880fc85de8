//! Config files: the shipped ones load, and bad ones are refused with the file, the line
//! and the field named.

use std::path::{Path, PathBuf};

use lametun_core::{BuildContext, TunnelConfig};

fn configs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("configs")
}

#[test]
fn every_file_in_configs_loads_and_builds() {
    let mut seen = 0;
    for entry in std::fs::read_dir(configs_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let config = TunnelConfig::from_yaml(&text, Some(&path))
            .unwrap_or_else(|e| panic!("{} does not parse:\n{e}", path.display()));
        assert!(
            config.peer.role.is_some(),
            "{}: says neither listen nor server",
            path.display()
        );
        // A dry run, as `lametun check-config` does: every stage validates its keys but
        // binds no socket and creates no file. The encrypted configs read the key from
        // /etc/lametun/psk, which a test machine lacks: that is the one error allowed.
        let dir = path.parent().map(Path::to_path_buf);
        if let Err(e) =
            config.build_pipeline(&BuildContext::new(dir, Default::default()).into_dry_run())
        {
            let only_missing_key = e.0.iter().all(|e| {
                e.path == "key_file"
                    && e.message
                        .contains("cannot read the key file /etc/lametun/psk")
            });
            assert!(only_missing_key, "{} does not build:\n{e}", path.display());
        }
        seen += 1;
    }
    assert!(
        seen >= 2,
        "configs/ should hold at least the two plaintext files"
    );
}

/// (file content, the message it must give, line by line)
const BAD: &[(&str, &[&str])] = &[
    (
        "device:\n  name: tun0\n  mtu: 20\n",
        &["bad.yaml:3: device.mtu: expected \"auto\" or a number from 68 to 65535, found 20"],
    ),
    (
        "device:\n  nmae: tun0\n",
        &[
            "bad.yaml:2: device.nmae: unknown field `nmae`, expected one of `name`, `address`, `mtu`, `packet_info`, `routes`",
        ],
    ),
    (
        "peer:\n  listen: true\n  server: 192.0.2.1\n",
        &["bad.yaml:2: peer: `listen: true` and `server` exclude each other"],
    ),
    (
        "device:\n  address: 10.0.0.1/33\n  routes: [10.0.0.0/8, bogus]\n",
        &[
            "bad.yaml:2: device.address: invalid CIDR \"10.0.0.1/33\"",
            "bad.yaml:3: device.routes[1]: invalid CIDR \"bogus\"",
        ],
    ),
    (
        "peer: {listen: true}\npipeline:\n  - type: passthrough\n    foo: 1\n  - type: nope\n",
        &[
            "bad.yaml:4: pipeline[0] (passthrough): foo: unknown field `foo`",
            // (the list of known types is checked by `the_bundled_stages_are_all_registered`)
            "bad.yaml:5: pipeline[1].type: unknown stage type \"nope\"; this binary knows: ",
        ],
    ),
    ("device: [\n", &["bad.yaml:2: not valid YAML"]),
    (
        "lisen: true\n",
        &[
            "bad.yaml:1: lisen: unknown key `lisen`, expected one of `device`, `peer`, `pipeline`, `io`",
        ],
    ),
    (
        "peer:\n  port: 70000\n",
        &["bad.yaml:2: peer.port: invalid value: integer `70000`, expected u16"],
    ),
    (
        "pipeline:\n  - {}\n",
        &["bad.yaml:2: pipeline[0]: missing `type`"],
    ),
    (
        "peer:\n  keepalive: soon\n",
        &["bad.yaml:2: peer.keepalive: expected a duration"],
    ),
    (
        "io:\n  workers: 0\n",
        &["bad.yaml:2: io.workers: expected \"auto\" or a number from 1 to 64, found 0"],
    ),
    (
        "device:\n  name: this-name-is-far-too-long\n",
        &[
            "bad.yaml:2: device.name: \"this-name-is-far-too-long\": an interface name has 1 to 15 bytes",
        ],
    ),
    (
        "pipeline: stats\n",
        &["bad.yaml:1: pipeline: expected a list of stages, found \"stats\""],
    ),
];

#[test]
fn bad_files_name_the_file_the_line_and_the_field() {
    for (text, expected) in BAD {
        let result = TunnelConfig::from_yaml(text, Some(Path::new("bad.yaml")))
            .and_then(|c| c.build_pipeline(&BuildContext::default()).map(|_| c));
        let err = match result {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e.to_string(),
        };
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), expected.len(), "for\n{text}\ngot:\n{err}");
        for (line, want) in lines.iter().zip(expected.iter()) {
            assert!(
                line.starts_with(want),
                "for\n{text}\nwant: {want}\ngot:  {line}"
            );
        }
    }
}
