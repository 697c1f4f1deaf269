//! The integration suite of tests/it, built again to run against Docker 28.5 with the
//! containerd image store (the harness knows this build by its crate name,
//! `it_containerd`; `DEPLOYTRACK_TEST_ENGINE` overrides it). scripts/test-env.sh starts
//! that engine in a network namespace of its own.

include!("../it/suite.rs");
