//! The YAML keys of `- type: chacha20poly1305`, and where the key comes from.

use std::fmt;
use std::path::PathBuf;

use lametun_core::{BuildContext, BuildError, StageConfig};
use serde::Deserialize;
use zeroize::Zeroize;

use crate::keys::{Cipher, KeyError, Psk};
use crate::stage::Chacha20Poly1305;

/// The keys of a `chacha20poly1305` pipeline entry. Exactly one of `key_file`,
/// `key_env` and `key` must be set.
///
/// ```yaml
/// pipeline:
///   - type: chacha20poly1305
///     key_file: /etc/lametun/psk   # 32 bytes in base64, from `lametun genkey`; chmod 600
///     # key_env: LAMETUN_PSK       # or: the key in this environment variable
///     # cipher: aes-256-gcm        # default chacha20poly1305; both ends must agree
/// ```
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chacha20Poly1305Config {
    /// The AEAD; `chacha20poly1305` unless set.
    #[serde(default)]
    pub cipher: Cipher,
    /// A file holding the base64 key, readable by its owner only. A relative path is
    /// taken relative to the config file's directory.
    pub key_file: Option<PathBuf>,
    /// The name of an environment variable holding the base64 key.
    pub key_env: Option<String>,
    /// The base64 key itself. Works, but anyone who can read the config (or a backup of
    /// it, or a paste of it in a bug report) has the key: a warning is logged.
    pub key: Option<InlineKey>,
}

/// A key written in the config file. Wiped from memory when dropped, never printed.
#[derive(Deserialize)]
#[serde(transparent)]
pub struct InlineKey(String);

impl InlineKey {
    /// Wraps base64 key text (tests, tools).
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }
}

impl fmt::Debug for InlineKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("InlineKey(<redacted>)")
    }
}

impl Drop for InlineKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// Where the key came from, for `describe()` and logs (never the key itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// `key_file`, resolved.
    File(PathBuf),
    /// `key_env`.
    Env(String),
    /// `key`, inline in the config.
    Inline,
    /// Given by the program through [`Chacha20Poly1305::new`].
    Program,
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "key from file {}", path.display()),
            Self::Env(var) => write!(f, "key from ${var}"),
            Self::Inline => f.write_str("key inline in the config"),
            Self::Program => f.write_str("key given by the program"),
        }
    }
}

impl StageConfig for Chacha20Poly1305Config {
    const TYPE: &'static str = "chacha20poly1305";
    const SUMMARY: &'static str = "encrypt and authenticate every datagram (ChaCha20-Poly1305 or AES-256-GCM, pre-shared key, replay window)";
    const EXAMPLE: &'static str = "\
- type: chacha20poly1305
  key_file: /etc/lametun/psk   # 32 bytes in base64 from `lametun genkey`; chmod 600
  # key_env: LAMETUN_PSK       # or: read the key from this environment variable
  # cipher: aes-256-gcm        # default chacha20poly1305; both ends must agree
";
    type Stage = Chacha20Poly1305;

    fn build(self, cx: &BuildContext) -> Result<Self::Stage, BuildError> {
        let mut errors = BuildError::default();
        let sources: Vec<&str> = [
            ("key_file", self.key_file.is_some()),
            ("key_env", self.key_env.is_some()),
            ("key", self.key.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect();
        match sources.len() {
            0 => errors.push(
                "",
                "no key: set one of `key_file`, `key_env` or `key` (make a key file with `lametun genkey psk`, which creates it with mode 0600)",
            ),
            1 => {}
            _ => errors.push(
                "",
                format!(
                    "{} are all set: set exactly one key source",
                    sources
                        .iter()
                        .map(|s| format!("`{s}`"))
                        .collect::<Vec<_>>()
                        .join(" and ")
                ),
            ),
        }
        // Check every source that is set, so that all problems show up at once.
        let mut loaded = None;
        let pasted_key = |p: &PathBuf| p.to_str().is_some_and(Psk::is_a_key);
        if self.key_file.as_ref().is_some_and(pasted_key) {
            // Never repeated in the message: it is the key.
            errors.push(
                "key_file",
                "this is a key, not the path of a file: put the key in a file (`lametun genkey FILE` makes one) and name the file here. The key is now in this config: make a new one",
            );
        } else if let Some(path) = &self.key_file {
            let path = cx.resolve_path(path);
            match Psk::from_file(&path) {
                Ok(psk) => loaded = Some((psk, KeySource::File(path))),
                Err(e) => errors.push("key_file", explain(&e, Some(&path.display().to_string()))),
            }
        }
        if let Some(var) = &self.key_env {
            if Psk::is_a_key(var) {
                errors.push(
                    "key_env",
                    "this is a key, not the name of an environment variable: put the key in the variable and name the variable here. The key is now in this config: make a new one",
                );
            } else if var.is_empty() || var.contains(['=', '\0']) {
                errors.push(
                    "key_env",
                    format!("{var:?} is not an environment variable name"),
                );
            } else {
                match Psk::from_env(var) {
                    Ok(psk) => loaded = Some((psk, KeySource::Env(var.clone()))),
                    Err(e) => errors.push("key_env", explain(&e, Some(&format!("${var}")))),
                }
            }
        }
        if let Some(key) = &self.key {
            match Psk::from_base64(&key.0) {
                Ok(psk) => loaded = Some((psk, KeySource::Inline)),
                Err(e) => errors.push("key", explain(&e, None)),
            }
        }
        let (psk, source) = match loaded {
            Some(found) if errors.is_empty() => found,
            _ => return Err(errors),
        };
        if source == KeySource::Inline {
            tracing::warn!(
                "pipeline[{}] (chacha20poly1305): the key is written in the config file; anyone who can read the file has it. Prefer `key_file` (chmod 600) or `key_env`",
                cx.stage_index()
            );
        }
        Chacha20Poly1305::with_source(self.cipher, &psk, source)
            .map_err(|e| BuildError::new(e.to_string()))
    }
}

/// A key error as a config message: problems with the text say whose text it is.
fn explain(e: &KeyError, source: Option<&str>) -> String {
    match (e, source) {
        (KeyError::NotBase64 | KeyError::WrongLength { .. } | KeyError::Empty, Some(source)) => {
            format!("the key in {source} {e}")
        }
        (KeyError::NotBase64 | KeyError::WrongLength { .. } | KeyError::Empty, None) => {
            format!("the key {e}")
        }
        _ => e.to_string(),
    }
}

lametun_core::register_stage!(Chacha20Poly1305Config);
