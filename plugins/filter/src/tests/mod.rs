//! The filter's tests: crafted packets against rule sets, config errors, counters, the
//! core's conformance kit, and properties over random input.

mod config_errors;
mod configs;
mod counters;
mod craft;
mod properties;
mod table;

use lametun_core::{BuildContext, BuildError, StageConfig};

use crate::{Filter, FilterConfig};

/// Builds a filter from the YAML keys of a stage entry.
pub(crate) fn filter(yaml: &str) -> Filter {
    let config: FilterConfig = yaml_serde::from_str(yaml).expect("the YAML parses");
    config
        .build(&BuildContext::default())
        .unwrap_or_else(|e| panic!("does not build: {e}"))
}

/// The errors of a config that must not build.
pub(crate) fn errors(yaml: &str) -> BuildError {
    let config: FilterConfig = yaml_serde::from_str(yaml).expect("the YAML parses");
    match config.build(&BuildContext::default()) {
        Ok(f) => panic!("built, but should not have: {f:?}"),
        Err(e) => e,
    }
}
