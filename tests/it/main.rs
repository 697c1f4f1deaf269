//! Integration tests: the real agent binary against a real Docker Engine and a real HTTP
//! receiver. `scripts/test-env.sh` (run by the harness) installs and starts what they need.
//!
//! Each engine-facing test is written once, as `async fn name(engine: Engine)`, and
//! `engine_test!(name)` runs it on both engines that test-env.sh starts: `name::classic` on
//! Docker 20.10 with the classic image store, `name::containerd` on Docker 28.5 with the
//! containerd image store. The few tests that never reach an engine run once. Shared support
//! is the library at tests/support; the tests that run once on the host (packaging, ARM,
//! Podman, configuration) are in tests/host.

mod agent;
mod durability;
mod endpoint;
mod engines;
mod faults;
mod hostile;
mod registries;
mod service;
mod soak;
mod swarm;
