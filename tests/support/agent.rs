//! The agent binary as a child process starts from a clean environment: nothing the
//! developer's shell or a CI runner set may change what a test or a benchmark runs.

use std::process::Command;

/// Whether an inherited variable would change the agent: its own settings (`DEPLOYTRACK_*`,
/// `RUST_LOG`), the engine's (`DOCKER_*`), systemd's (state dir, credentials, readiness
/// and watchdog), and proxies (the endpoints and engines here are on loopback).
pub fn inherited_setting(name: &str) -> bool {
    name.starts_with("DEPLOYTRACK_")
        || name.starts_with("DOCKER_")
        || matches!(
            name,
            "STATE_DIRECTORY"
                | "CREDENTIALS_DIRECTORY"
                | "RUST_LOG"
                | "NOTIFY_SOCKET"
                | "WATCHDOG_USEC"
        )
        || name.to_ascii_lowercase().ends_with("_proxy")
}

/// Remove every inherited setting from `cmd`'s environment; what the caller sets after
/// this (`cmd.env`) is what the agent sees.
pub fn scrub_environment(cmd: &mut Command) -> &mut Command {
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(inherited_setting) {
            cmd.env_remove(name);
        }
    }
    cmd
}
