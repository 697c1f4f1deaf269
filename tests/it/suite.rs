// The modules of the integration suite, shared by tests/it/main.rs and
// tests/it_containerd/main.rs (each `include!`s this file). The paths name tests/it from
// either directory.

#[path = "../support/mod.rs"]
mod support;

#[path = "../it/common/mod.rs"]
mod common;

#[path = "../it/agent.rs"]
mod agent;
#[path = "../it/durability.rs"]
mod durability;
#[path = "../it/endpoint.rs"]
mod endpoint;
#[path = "../it/engines.rs"]
mod engines;
#[path = "../it/faults.rs"]
mod faults;
#[path = "../it/hostile.rs"]
mod hostile;
#[path = "../it/service.rs"]
mod service;
#[path = "../it/soak/mod.rs"]
mod soak;
#[path = "../it/registries.rs"]
mod registries;
#[path = "../it/swarm.rs"]
mod swarm;
