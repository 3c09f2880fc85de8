//! Stages that live in the core.

pub mod passthrough;
