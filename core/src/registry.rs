//! Stage types registered by name, so that a YAML file can say `- type: stats`.
//!
//! A stage crate defines a config struct, implements [`StageConfig`] for it and writes
//! one line, `lametun_core::register_stage!(MyConfig);`. That line is an
//! [`inventory::submit!`]: the registration is placed in the binary by the linker and
//! collected before `main` runs, so no central list has to know the stage.
//!
//! # The linker pitfall
//!
//! rustc links a dependency only if some code refers to it. A stage crate that appears
//! in `Cargo.toml` but that nothing `use`s is left out, and its registration silently
//! vanishes with it. Every binary therefore names its stage crates once:
//!
//! ```ignore
//! use my_stage as _; // links the crate, and with it its register_stage!
//! ```
//!
//! The `lametun` package does this for the bundled stages, and a test compares
//! [`names`] with the expected list, so a missing link fails loudly. The
//! [guide](crate::guide#7-registration-and-the-linker-pitfall) says more.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::Stage;
use crate::telemetry::TelemetryHandle;

/// A stage's configuration: the YAML keys of one `pipeline` entry, minus `type`.
///
/// Derive `Deserialize` with `#[serde(deny_unknown_fields)]`, so that a misspelt key is
/// an error that names the key instead of a setting silently ignored.
pub trait StageConfig: DeserializeOwned + 'static {
    /// The `type:` name in YAML: lowercase, digits and `-`/`_` (e.g. `chacha20poly1305`).
    const TYPE: &'static str;
    /// One line for `lametun stages`.
    const SUMMARY: &'static str;
    /// A YAML example of the entry, shown by `lametun stages` and built by tests.
    const EXAMPLE: &'static str = "";
    /// The stage this config builds.
    type Stage: Stage;

    /// Validates the config and builds the stage. Runs once at start-up, and may read
    /// files (keys) and bind sockets (endpoints); it must not start any traffic.
    /// Report every problem found, not only the first (see [`BuildError::push`]).
    ///
    /// `lametun check-config` builds the stages too, as a dry run
    /// ([`BuildContext::dry_run`]): then validate, but create no file, bind no socket
    /// and start no thread.
    fn build(self, cx: &BuildContext) -> Result<Self::Stage, BuildError>;
}

type BuildFn = fn(&yaml_serde::Value, &BuildContext) -> Result<Box<dyn Stage>, BuildError>;
type ParseFn = fn(&yaml_serde::Value) -> Result<(), BuildError>;

/// A registered stage type. Create one with [`register_stage!`](crate::register_stage).
pub struct StageRegistration {
    /// The `type:` name.
    pub type_name: &'static str,
    /// One line for `lametun stages`.
    pub summary: &'static str,
    /// A YAML example.
    pub example: &'static str,
    build: BuildFn,
    parse: ParseFn,
}

impl fmt::Debug for StageRegistration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StageRegistration")
            .field("type_name", &self.type_name)
            .finish_non_exhaustive()
    }
}

inventory::collect!(StageRegistration);

fn deserialize<C: StageConfig>(value: &yaml_serde::Value) -> Result<C, BuildError> {
    // An entry with only `type:` arrives as an empty mapping, so that configs whose
    // fields all have defaults need no keys.
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        BuildError::field(path, e.into_inner().to_string())
    })
}

fn build_erased<C: StageConfig>(
    value: &yaml_serde::Value,
    cx: &BuildContext,
) -> Result<Box<dyn Stage>, BuildError> {
    Ok(Box::new(deserialize::<C>(value)?.build(cx)?))
}

fn parse_erased<C: StageConfig>(value: &yaml_serde::Value) -> Result<(), BuildError> {
    deserialize::<C>(value).map(drop)
}

/// The keys of a YAML stage entry as a mapping without `type` (null becomes empty).
fn stage_keys(yaml: &str) -> Result<yaml_serde::Value, BuildError> {
    let mut value: yaml_serde::Value =
        yaml_serde::from_str(yaml).map_err(|e| BuildError::new(e.to_string()))?;
    if value.is_null() {
        value = yaml_serde::Value::Mapping(Default::default());
    }
    if let Some(map) = value.as_mapping_mut() {
        map.remove("type");
    }
    Ok(value)
}

impl StageRegistration {
    /// The registration of config type `C` (what `register_stage!` submits).
    pub const fn of<C: StageConfig>() -> Self {
        Self {
            type_name: C::TYPE,
            summary: C::SUMMARY,
            example: C::EXAMPLE,
            build: build_erased::<C>,
            parse: parse_erased::<C>,
        }
    }

    /// Builds a stage from the keys of a pipeline entry (without `type`).
    pub(crate) fn build_value(
        &self,
        value: &yaml_serde::Value,
        cx: &BuildContext,
    ) -> Result<Box<dyn Stage>, BuildError> {
        (self.build)(value, cx)
    }

    /// Builds a stage from a YAML mapping of its keys (tests, tools). `type` may be
    /// present; it is ignored.
    pub fn build_yaml(&self, yaml: &str, cx: &BuildContext) -> Result<Box<dyn Stage>, BuildError> {
        self.build_value(&stage_keys(yaml)?, cx)
    }

    /// Deserializes a YAML mapping of the stage's keys into its config *without*
    /// building the stage: finds unknown keys and wrong types, not what only
    /// [`StageConfig::build`] checks (ranges, files). `type` may be present; it is
    /// ignored. The conformance kit checks [`StageConfig::EXAMPLE`] with it.
    pub fn parse_yaml(&self, yaml: &str) -> Result<(), BuildError> {
        (self.parse)(&stage_keys(yaml)?)
    }
}

/// Registers a [`StageConfig`] under its `TYPE` name. Use once per stage type, at module
/// level of the stage crate. The crate needs no `inventory` dependency of its own.
#[macro_export]
macro_rules! register_stage {
    ($config:ty) => {
        $crate::__private::inventory::submit! {
            $crate::StageRegistration::of::<$config>()
        }
    };
}

/// All registrations linked into this binary, sorted by name.
pub fn registrations() -> Vec<&'static StageRegistration> {
    let mut all: Vec<_> = inventory::iter::<StageRegistration>.into_iter().collect();
    all.sort_by_key(|r| r.type_name);
    all
}

/// The registered stage type names, sorted.
pub fn names() -> Vec<&'static str> {
    registrations().iter().map(|r| r.type_name).collect()
}

/// The registration for `type_name`, if a linked crate registered it.
pub fn find(type_name: &str) -> Option<&'static StageRegistration> {
    inventory::iter::<StageRegistration>
        .into_iter()
        .find(|r| r.type_name == type_name)
}

/// Type names registered more than once (a start-up error: which one would win?).
pub fn duplicates() -> Vec<&'static str> {
    let names = names();
    let mut dups: Vec<_> = names
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| w[0])
        .collect();
    dups.dedup();
    dups
}

/// What a stage may know while it is built.
#[derive(Clone, Debug, Default)]
pub struct BuildContext {
    config_dir: Option<PathBuf>,
    stage_index: usize,
    telemetry: TelemetryHandle,
    dry_run: bool,
}

impl BuildContext {
    /// A context for stages of a config file in `config_dir` (relative paths in stage
    /// configs are resolved against it).
    pub fn new(config_dir: Option<PathBuf>, telemetry: TelemetryHandle) -> Self {
        Self {
            config_dir,
            stage_index: 0,
            telemetry,
            dry_run: false,
        }
    }

    /// The same context for a *dry run*: the stages are built only to be checked
    /// (`lametun check-config`) and never see a packet. See [`dry_run`](Self::dry_run).
    pub fn into_dry_run(self) -> Self {
        Self {
            dry_run: true,
            ..self
        }
    }

    /// True when the stage is built only to validate the config (`lametun
    /// check-config`), possibly while the real tunnel runs with the same file.
    ///
    /// A stage should then check everything it can (that a key file is readable, that
    /// the directory of an output file exists) but change nothing: create or truncate
    /// no file, bind no socket, start no thread.
    pub fn dry_run(&self) -> bool {
        self.dry_run
    }

    /// The same context for the stage at `index`.
    pub fn for_stage(&self, index: usize) -> Self {
        Self {
            stage_index: index,
            ..self.clone()
        }
    }

    /// Position of the stage being built in the chain.
    pub fn stage_index(&self) -> usize {
        self.stage_index
    }

    /// Resolves a path from a stage config: absolute paths stay, relative ones are taken
    /// relative to the directory of the config file (or the working directory).
    pub fn resolve_path(&self, path: &Path) -> PathBuf {
        match &self.config_dir {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path.to_path_buf(),
        }
    }

    /// A handle on the tunnel's counters, usable once the tunnel is running (the stats
    /// stage reads everything through it).
    pub fn telemetry(&self) -> &TelemetryHandle {
        &self.telemetry
    }
}

/// One problem in a stage config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the offending key inside the stage entry, such as `rules[3].dst`; empty
    /// when the problem is the entry as a whole.
    pub path: String,
    /// What is wrong, and where it helps, how to fix it.
    pub message: String,
}

/// Everything wrong with a stage config (a stage should report all problems at once).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct BuildError {
    /// The problems, in the order found.
    pub errors: Vec<FieldError>,
}

impl BuildError {
    /// A problem with the entry as a whole.
    pub fn new(message: impl Into<String>) -> Self {
        Self::field("", message)
    }

    /// A problem with the key at `path` (e.g. `key_file`, `rules[3].dst`).
    pub fn field(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            errors: vec![FieldError {
                path: path.into(),
                message: message.into(),
            }],
        }
    }

    /// Adds a problem with the key at `path`.
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }

    /// True when no problem was recorded: `if errors.is_empty() { Ok(stage) }`.
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// `Ok(value)` when no problem was recorded, else `Err(self)`.
    pub fn or_ok<T>(self, value: T) -> Result<T, Self> {
        if self.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            if e.path.is_empty() {
                write!(f, "{}", e.message)?;
            } else {
                write!(f, "{}: {}", e.path, e.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for BuildError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dry_run_context_keeps_everything_else() {
        let cx = BuildContext::new(Some("/etc/lametun".into()), TelemetryHandle::default());
        assert!(!cx.dry_run());
        let dry = cx.into_dry_run().for_stage(3);
        assert!(dry.dry_run());
        assert_eq!(dry.stage_index(), 3);
        assert_eq!(
            dry.resolve_path(Path::new("key")),
            Path::new("/etc/lametun/key")
        );
    }
}
