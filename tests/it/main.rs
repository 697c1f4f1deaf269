//! Integration tests: the real agent binary against a real Docker Engine and a real HTTP
//! receiver. `scripts/test-env.sh` (run by the harness) installs and starts what they need.

#[path = "../support/mod.rs"]
mod support;

mod common;

mod agent;
mod config;
mod durability;
mod endpoint;
mod engines;
mod faults;
mod hostile;
mod packaging;
mod podman;
mod service;
mod soak;
mod swarm;
