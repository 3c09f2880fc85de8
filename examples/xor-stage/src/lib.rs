//! `xor`: flips the bits of every packet with a one-byte key, so that the tunnel's
//! datagrams do not look like IP packets to a casual observer. Obfuscation, NOT
//! encryption: anyone who guesses the byte reads everything.

#![forbid(unsafe_code)]

use lametun_core::{BuildContext, BuildError, PacketBuf, PacketMeta, Stage, StageConfig, Verdict};
use serde::Deserialize;

/// `- type: xor` with `key: 90` (1 to 255).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)] // a misspelt key is an error, not silently ignored
pub struct XorConfig {
    key: u8,
}

/// The stage. `&self` methods: one instance serves every worker thread.
pub struct Xor {
    key: u8,
}

impl StageConfig for XorConfig {
    const TYPE: &'static str = "xor";
    const SUMMARY: &'static str =
        "flip the bits of every packet with a one-byte key (not encryption)";
    const EXAMPLE: &'static str = "- type: xor\n  key: 90\n";
    type Stage = Xor;

    fn build(self, _cx: &BuildContext) -> Result<Xor, BuildError> {
        // Check what types cannot, and report every problem (push them all).
        let mut errors = BuildError::default();
        if self.key == 0 {
            errors.push("key", "0 changes nothing; use 1 to 255");
        }
        errors.or_ok(Xor { key: self.key })
    }
}

impl Stage for Xor {
    // No `overhead()`: packets keep their size, so the default (none) is right.

    /// Packets keep their size on the way in too (see `Stage::grows_inbound`).
    fn grows_inbound(&self) -> bool {
        false
    }

    fn outbound(&self, pkt: &mut PacketBuf<'_>, _meta: &PacketMeta) -> Verdict {
        pkt.as_mut_slice().iter_mut().for_each(|b| *b ^= self.key);
        Verdict::Pass
    }

    fn inbound(&self, pkt: &mut PacketBuf<'_>, _meta: &PacketMeta) -> Verdict {
        pkt.as_mut_slice().iter_mut().for_each(|b| *b ^= self.key);
        Verdict::Pass
    }
}

lametun_core::register_stage!(XorConfig);

#[cfg(test)]
mod tests {
    use lametun_core::testing::Conformance;

    #[test]
    fn conforms() {
        Conformance::from_yaml("xor", "key: 90").run_all();
    }

    #[test]
    fn key_zero_is_refused() {
        let reg = lametun_core::registry::find("xor").unwrap();
        let err = reg.build_yaml("key: 0", &Default::default()).err().unwrap();
        assert_eq!(err.to_string(), "key: 0 changes nothing; use 1 to 255");
    }
}
