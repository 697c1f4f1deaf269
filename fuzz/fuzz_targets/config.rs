//! `FileConfig::parse` on arbitrary text and, when it parses, `Config::build` with the
//! arguments of `deploytrack run --state-dir /nonexistent`.
//!
//! Never panics: a bad file is a `ConfigError` naming `--config` and the file, a bad value a
//! `ConfigError` naming its setting; a config that builds holds only validated values.

#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use clap::Parser;
use deploytrack::cli::{Cli, Command, RunArgs};
use deploytrack::config::{Config, FileConfig};
use libfuzzer_sys::fuzz_target;

fn run_args() -> &'static RunArgs {
    static ARGS: OnceLock<RunArgs> = OnceLock::new();
    ARGS.get_or_init(|| {
        let cli = Cli::try_parse_from(["deploytrack", "run", "--state-dir", "/nonexistent"])
            .expect("the run arguments parse");
        match &cli.command {
            Command::Run(_) => cli.settings().expect("run has settings"),
            other => panic!("`run` parsed as {other:?}"),
        }
    })
}

/// Build reads the files the config names (the token, certificates). A device, a FIFO or a
/// huge file would hang or exhaust the fuzzer without telling anything about the parser.
fn names_a_special_file(text: &str) -> bool {
    let Ok(table) = text.parse::<toml::Table>() else {
        return false;
    };
    table.values().filter_map(toml::Value::as_str).any(|s| {
        std::fs::metadata(Path::new(s))
            .is_ok_and(|m| !(m.is_dir() || (m.is_file() && m.len() < 1 << 20)))
    })
}

fuzz_target!(
    init: {
        // Only the file and the fixed arguments: no token or state dir from the environment.
        for name in [
            "DEPLOYTRACK_TOKEN",
            "CREDENTIALS_DIRECTORY",
            "STATE_DIRECTORY",
            "DEPLOYTRACK_CONFIG",
        ] {
            std::env::remove_var(name);
        }
        let vars: Vec<String> = std::env::vars()
            .map(|(k, _)| k)
            .filter(|k| k.starts_with("DEPLOYTRACK_") || k == "DOCKER_HOST")
            .collect();
        for name in vars {
            std::env::remove_var(name);
        }
        let _ = run_args();
    },
    |data: &[u8]| {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        let file = match FileConfig::parse(text, "fuzz") {
            Ok(file) => file,
            Err(e) => {
                assert_eq!(e.setting, "--config");
                assert!(e.reason.to_string().starts_with("fuzz"), "{e}");
                return;
            }
        };
        if names_a_special_file(text) {
            return;
        }
        match Config::build(run_args(), &file) {
            Err(e) => {
                assert!(!e.setting.is_empty() && !e.reason.to_string().is_empty(), "{e:?}");
            }
            Ok(config) => {
                assert_eq!(config.state_dir.as_deref(), Some(Path::new("/nonexistent")));
                assert!(config.dry_run || (config.url.is_some() && config.token.is_some()));
                if let Some(url) = &config.url {
                    assert!(matches!(url.scheme(), "http" | "https"), "{url}");
                }
                assert!(deploytrack::deployment::validate_environment(&config.environment).is_ok());
                assert!(deploytrack::config::validate_host(&config.docker_host).is_ok());
                assert!((1..=256).contains(&config.concurrency));
                assert!(config.queue_max_entries > 0);
                assert!(!config.retry.initial.is_zero() && config.retry.max >= config.retry.initial);
                assert!(!config.request_timeout.is_zero());
                if let Some(token) = &config.token {
                    let t = token.expose();
                    assert!(!t.is_empty() && t.is_ascii() && !t.chars().any(|c| c.is_control()));
                }
            }
        }
    }
);
