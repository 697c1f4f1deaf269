//! Support shared by the integration tests (tests/it) and the benchmarks (benches/suite.rs),
//! each of which includes this folder as a `#[path]` module: the report receiver, the simulated
//! engine, the agent's clean environment, and the source revision the binary was built from.
#![allow(dead_code)] // each target uses its own part of it

pub mod agent;
pub mod git;
pub mod receiver;
pub mod sim;

use std::time::Duration;

/// One patience setting for every "eventually" of the tests.
pub const PATIENCE: Duration = Duration::from_secs(45);
