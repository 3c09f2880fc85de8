//! Keys: the pre-shared key, where it comes from, and the per-session keys derived from it.
//!
//! The user handles one secret, the 32-byte pre-shared key (PSK), written as base64
//! (`lametun genkey` prints one). The PSK itself never encrypts a packet. At start-up it
//! goes through HKDF-Extract once (RFC 5869), and every session key is then
//!
//! ```text
//! session key = HKDF-Expand(PRK, "lametun v1 session key" | cipher name | 0x00 | session id, 32)
//! PRK         = HKDF-Extract(salt = "lametun psk v1", PSK)
//! ```
//!
//! so that each random session id names a different key, and the two ciphers never use
//! the same key (key separation: one key, one algorithm).

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use ring::aead::{self, LessSafeKey, UnboundKey};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use serde::Deserialize;
use zeroize::{Zeroize, Zeroizing};

use crate::wire::SessionId;

/// Length of the pre-shared key in bytes.
pub const KEY_LEN: usize = 32;

const EXTRACT_SALT: &[u8] = b"lametun psk v1";
const EXPAND_LABEL: &[u8] = b"lametun v1 session key";

/// Base64 with the standard alphabet; the `=` padding may be left out.
const BASE64: base64::engine::GeneralPurpose =
    base64::engine::general_purpose::STANDARD_PAD_INDIFFERENT;

/// The AEAD that seals packets. Both ends must use the same.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
pub enum Cipher {
    /// ChaCha20-Poly1305 (RFC 8439), the default: fast everywhere, constant time without
    /// special CPU instructions.
    #[default]
    #[serde(rename = "chacha20poly1305")]
    ChaCha20Poly1305,
    /// AES-256-GCM: faster still on CPUs with AES and carry-less multiply instructions
    /// (most x86-64 and recent ARM), slow and harder to make constant-time without.
    #[serde(rename = "aes-256-gcm")]
    Aes256Gcm,
}

impl Cipher {
    /// The name used in YAML and logs.
    pub const fn name(self) -> &'static str {
        match self {
            Self::ChaCha20Poly1305 => "chacha20poly1305",
            Self::Aes256Gcm => "aes-256-gcm",
        }
    }

    /// The `kind` byte of datagrams sealed with this cipher (see [`crate::wire`]).
    pub const fn kind(self) -> u8 {
        match self {
            Self::ChaCha20Poly1305 => 0x01,
            Self::Aes256Gcm => 0x02,
        }
    }

    /// The cipher a `kind` byte names, if any.
    pub const fn from_kind(kind: u8) -> Option<Self> {
        match kind {
            0x01 => Some(Self::ChaCha20Poly1305),
            0x02 => Some(Self::Aes256Gcm),
            _ => None,
        }
    }

    pub(crate) fn algorithm(self) -> &'static aead::Algorithm {
        match self {
            Self::ChaCha20Poly1305 => &aead::CHACHA20_POLY1305,
            Self::Aes256Gcm => &aead::AES_256_GCM,
        }
    }
}

impl fmt::Display for Cipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a key could not be loaded. The messages never contain key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Not base64 at all: a truncated copy, a stray character, or the wrong file.
    #[error("is not valid base64 (a key is the 44 characters that `lametun genkey` prints)")]
    NotBase64,
    /// Base64 of the wrong number of bytes: a key from another tool, or cut short.
    #[error("decodes to {len} bytes, but a key has {KEY_LEN} (make one with `lametun genkey`)")]
    WrongLength {
        /// How many bytes it decoded to.
        len: usize,
    },
    /// Empty (a file created but never written).
    #[error("is empty (write a key into it with `lametun genkey`)")]
    Empty,
    /// The key file can be read (or written) by other users, who could then read the
    /// tunnel's traffic or impersonate either end.
    #[error(
        "{} is accessible by group or others (mode {mode:04o}); a key file must be private: run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    Accessible {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key file could not be read: missing, a directory, or no permission.
    #[error("cannot read the key file {}: {source}{}", path.display(), missing_hint(source))]
    Read {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The environment variable named by `key_env` is not set (is it exported to the
    /// service, e.g. with systemd's `Environment=` or `LoadCredential=`?).
    #[error("the environment variable {var} is not set")]
    EnvMissing {
        /// The variable's name.
        var: String,
    },
    /// The environment variable holds bytes that are not UTF-8 (so not base64).
    #[error("the environment variable {var} is not valid UTF-8")]
    EnvNotUnicode {
        /// The variable's name.
        var: String,
    },
    /// The operating system's random number generator failed (practically never on
    /// Linux; it would mean `getrandom(2)` is unavailable).
    #[error("the operating system's random number generator failed")]
    Rng,
}

/// How to make the key file that is not there.
fn missing_hint(e: &std::io::Error) -> &'static str {
    if e.kind() == std::io::ErrorKind::NotFound {
        " (make one with `lametun genkey FILE`, which creates it with mode 0600; the same key on both ends)"
    } else {
        ""
    }
}

/// A 32-byte pre-shared key. Its bytes are wiped from memory when it is dropped, and
/// its `Debug` output shows nothing of it.
#[derive(Clone)]
pub struct Psk(Zeroizing<[u8; KEY_LEN]>);

impl fmt::Debug for Psk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Psk(<redacted>)")
    }
}

impl Psk {
    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// A fresh key from the operating system's random number generator.
    pub fn generate() -> Result<Self, KeyError> {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        SystemRandom::new()
            .fill(&mut bytes[..])
            .map_err(|_| KeyError::Rng)?;
        Ok(Self(bytes))
    }

    /// Parses base64 text (surrounding whitespace, such as a final newline, is ignored).
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(KeyError::Empty);
        }
        let mut decoded = Zeroizing::new(Vec::with_capacity(KEY_LEN + 3));
        BASE64
            .decode_vec(text, &mut decoded)
            .map_err(|_| KeyError::NotBase64)?;
        let bytes: [u8; KEY_LEN] = decoded[..]
            .try_into()
            .map_err(|_| KeyError::WrongLength { len: decoded.len() })?;
        Ok(Self::from_bytes(bytes))
    }

    /// Whether `text` is a key itself (base64 of 32 bytes), e.g. pasted into `key_file`
    /// or `key_env` by mistake: errors about it must then not repeat it.
    pub fn is_a_key(text: &str) -> bool {
        Self::from_base64(text).is_ok()
    }

    /// Reads a key file, refusing one that other users can access (Unix permissions).
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let read_error = |source| KeyError::Read {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(read_error)?;
        if meta.is_dir() {
            // Checked before the mode: a directory's usual 0755 would otherwise earn
            // advice to `chmod 600` it, which locks everyone out of what is inside.
            return Err(read_error(std::io::Error::new(
                std::io::ErrorKind::IsADirectory,
                "it is a directory; name the key file inside it",
            )));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = meta.permissions().mode() & 0o7777;
            if mode & 0o077 != 0 {
                return Err(KeyError::Accessible {
                    path: path.to_path_buf(),
                    mode,
                });
            }
        }
        #[cfg(not(unix))]
        let _ = meta;
        let mut text = std::fs::read_to_string(path).map_err(read_error)?;
        let key = Self::from_base64(&text);
        text.zeroize();
        key
    }

    /// Reads a key from the environment variable `var`.
    pub fn from_env(var: &str) -> Result<Self, KeyError> {
        match std::env::var(var) {
            Ok(mut text) => {
                let key = Self::from_base64(&text);
                text.zeroize();
                key
            }
            Err(std::env::VarError::NotPresent) => Err(KeyError::EnvMissing {
                var: var.to_owned(),
            }),
            Err(std::env::VarError::NotUnicode(_)) => Err(KeyError::EnvNotUnicode {
                var: var.to_owned(),
            }),
        }
    }

    /// The key as base64 (44 characters), the form `lametun genkey` prints.
    pub fn to_base64(&self) -> String {
        BASE64.encode(&self.0[..])
    }

    pub(crate) fn bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

/// A fresh pre-shared key as base64, from the operating system's random number
/// generator: what `lametun genkey` prints.
///
/// # Panics
///
/// If the operating system's random number generator fails (see [`KeyError::Rng`]);
/// there is nothing sensible to print then. Use [`Psk::generate`] to handle it.
pub fn generate_key() -> String {
    Psk::generate()
        .expect("the operating system's random number generator failed")
        .to_base64()
}

/// The PSK after HKDF-Extract: the root of every session key. See the [module docs](self).
pub(crate) struct MasterKey {
    prk: hkdf::Prk,
}

/// `ring` wants the output length as a type.
struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

impl MasterKey {
    pub(crate) fn new(psk: &Psk) -> Self {
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, EXTRACT_SALT);
        Self {
            prk: salt.extract(psk.bytes()),
        }
    }

    /// The raw bytes of the key of `session` (tests compare them; the stage uses
    /// [`session_key`](Self::session_key)).
    pub(crate) fn session_key_bytes(
        &self,
        cipher: Cipher,
        session: SessionId,
    ) -> Zeroizing<[u8; KEY_LEN]> {
        let id = session.0.to_be_bytes();
        let info: [&[u8]; 4] = [EXPAND_LABEL, cipher.name().as_bytes(), &[0], &id];
        let mut out = Zeroizing::new([0u8; KEY_LEN]);
        self.prk
            .expand(&info, Len(KEY_LEN))
            .and_then(|okm| okm.fill(&mut out[..]))
            .expect("32 bytes is far below HKDF-SHA256's limit of 8160");
        out
    }

    /// The AEAD key of `session`.
    pub(crate) fn session_key(&self, cipher: Cipher, session: SessionId) -> LessSafeKey {
        let bytes = self.session_key_bytes(cipher, session);
        let key = UnboundKey::new(cipher.algorithm(), &bytes[..])
            .expect("both ciphers take 32-byte keys");
        LessSafeKey::new(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_32_random_bytes_in_base64() {
        let a = generate_key();
        let b = generate_key();
        assert_eq!(a.len(), 44);
        assert_ne!(a, b);
        assert_eq!(Psk::from_base64(&a).unwrap().to_base64(), a);
    }

    #[test]
    fn base64_padding_and_whitespace_are_forgiven() {
        let k = generate_key();
        let trimmed = k.trim_end_matches('=');
        assert_eq!(Psk::from_base64(trimmed).unwrap().to_base64(), k);
        assert_eq!(
            Psk::from_base64(&format!("  {k}\n")).unwrap().to_base64(),
            k
        );
    }

    #[test]
    fn bad_keys_say_what_is_wrong_without_echoing_the_input() {
        let secretish = "c2VjcmV0c2VjcmV0c2VjcmV0!!";
        let e = Psk::from_base64(secretish).unwrap_err();
        assert!(matches!(e, KeyError::NotBase64));
        assert!(!e.to_string().contains(secretish));
        let e = Psk::from_base64("c2hvcnQ=").unwrap_err();
        assert!(matches!(e, KeyError::WrongLength { len: 5 }), "{e:?}");
        assert!(e.to_string().contains("decodes to 5 bytes"));
        assert!(matches!(
            Psk::from_base64(" \n").unwrap_err(),
            KeyError::Empty
        ));
        let key = generate_key();
        let debug = format!("{:?}", Psk::from_base64(&key).unwrap());
        assert!(debug.contains("redacted") && !debug.contains(&key));
    }

    #[test]
    fn session_keys_differ_by_session_and_cipher_and_are_deterministic() {
        let m = MasterKey::new(&Psk::from_bytes([7; KEY_LEN]));
        let a = m.session_key_bytes(Cipher::ChaCha20Poly1305, SessionId(1));
        assert_eq!(
            *a,
            *m.session_key_bytes(Cipher::ChaCha20Poly1305, SessionId(1))
        );
        assert_ne!(
            *a,
            *m.session_key_bytes(Cipher::ChaCha20Poly1305, SessionId(2))
        );
        assert_ne!(*a, *m.session_key_bytes(Cipher::Aes256Gcm, SessionId(1)));
        let other = MasterKey::new(&Psk::from_bytes([8; KEY_LEN]));
        assert_ne!(
            *a,
            *other.session_key_bytes(Cipher::ChaCha20Poly1305, SessionId(1))
        );
        // Never the PSK itself.
        assert_ne!(*a, [7; KEY_LEN]);
    }
}
