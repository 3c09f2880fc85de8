//! `passthrough`: the stage that does nothing, so the default chain can be written out.
//!
//! ```yaml
//! pipeline:
//!   - type: passthrough
//! ```
//!
//! A pipeline with only this stage behaves exactly like the empty pipeline: the article's
//! lametun. It is also the smallest complete stage, a template for new ones.

use serde::Deserialize;

use crate::{BuildContext, BuildError, Stage, StageConfig};

/// Config of `type: passthrough` (it has no keys).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassthroughConfig {}

/// Passes every packet unchanged, both ways.
#[derive(Debug, Default)]
pub struct Passthrough;

impl Stage for Passthrough {
    fn grows_inbound(&self) -> bool {
        false
    }
}

impl StageConfig for PassthroughConfig {
    const TYPE: &'static str = "passthrough";
    const SUMMARY: &'static str =
        "forward packets unchanged (the default when the pipeline is empty)";
    const EXAMPLE: &'static str = "- type: passthrough\n";
    type Stage = Passthrough;

    fn build(self, _cx: &BuildContext) -> Result<Passthrough, BuildError> {
        Ok(Passthrough)
    }
}

crate::register_stage!(PassthroughConfig);
