//! Integration tests: the real agent binary against a real Docker Engine and a real HTTP
//! receiver. `scripts/test-env.sh` (run by the harness) installs and starts what they need.
//!
//! This build, `it`, runs against Docker 20.10 with the classic image store; the same suite
//! is built again as `it_containerd` (tests/it_containerd) for Docker 28.5 with the
//! containerd image store, and `cargo test` runs the two one after the other. The tests
//! that run once are in tests/host.

include!("suite.rs");
