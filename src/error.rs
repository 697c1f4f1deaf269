//! Why a command ends without success: one variant per layer, each with its one-line
//! message and its exit code, so that `main` prints and exits by the type alone.

use crate::admin::ListenError;
use crate::commands::{QueueCommandError, ReportError};
use crate::config::ConfigError;
use crate::deliver;
use crate::engine::EngineError;
use crate::key_settings::{self, Change};
use crate::outbox;

/// EX_USAGE: a setting is wrong, or the command line is.
pub const EXIT_USAGE: u8 = 64;
/// The work failed.
pub const EXIT_FAILURE: u8 = 1;

/// A failure that ends the command: exit code 64 for what the user must change in the
/// command line or the settings, 1 when the work itself failed.
#[derive(Debug, thiserror::Error)]
pub enum Fatal {
    /// A setting is wrong: a flag, an environment variable, a key of the config file.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The command line does not parse; the sentence is built from clap's error kind and
    /// context (`crate::cli::command_line_error`).
    #[error("{message}")]
    CommandLine {
        kind: clap::error::ErrorKind,
        message: String,
    },
    /// `sync --once` under settings that shape keys otherwise than those its state dir last
    /// delivered with (see `crate::key_settings`).
    #[error("sync refused: {}", key_settings::refusal(state_dir, changes))]
    SettingsChanged {
        state_dir: String,
        changes: Vec<Change>,
    },
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot write the man page: {0}")]
    ManPage(std::io::Error),
    /// The queue cannot be opened, or failed a command.
    #[error(transparent)]
    Queue(#[from] outbox::Error),
    /// The observer could not queue what it saw: the agent exits, to restart from the
    /// engine's truth.
    #[error("cannot write to the queue: {0}")]
    QueueWrite(outbox::Error),
    #[error("cannot remember the settings in the queue: {0}")]
    SettingsNotRemembered(outbox::Error),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// Delivery failed: its client cannot be set up (the token, the HTTP client), or the
    /// queue under `sync --once`'s dispatcher failed.
    #[error(transparent)]
    Delivery(#[from] deliver::Error),
    /// The dispatcher of the agent stopped on a failure of the queue.
    #[error("delivery stopped: {0}")]
    DeliveryStopped(deliver::Error),
    /// `sync --once` ran out of time: what it did, and what stays queued.
    #[error(
        "sync gave up after {after}: {summary}; they stay queued for the agent or the next sync"
    )]
    SyncGaveUp { after: String, summary: String },
    #[error(transparent)]
    Report(#[from] ReportError),
    #[error("{}", crate::commands::checks_failed(*failed))]
    ChecksFailed { failed: usize },
    #[error(transparent)]
    QueueCommand(#[from] QueueCommandError),
}

impl Fatal {
    /// The process's exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            Fatal::Config(_)
            | Fatal::CommandLine { .. }
            | Fatal::SettingsChanged { .. }
            | Fatal::QueueCommand(QueueCommandError::PurgeUnconfirmed) => EXIT_USAGE,
            Fatal::Runtime(_)
            | Fatal::ManPage(_)
            | Fatal::Queue(_)
            | Fatal::QueueWrite(_)
            | Fatal::SettingsNotRemembered(_)
            | Fatal::Engine(_)
            | Fatal::Listen(_)
            | Fatal::Delivery(_)
            | Fatal::DeliveryStopped(_)
            | Fatal::SyncGaveUp { .. }
            | Fatal::Report(_)
            | Fatal::ChecksFailed { .. }
            | Fatal::QueueCommand(_) => EXIT_FAILURE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn what_the_user_must_change_exits_64_and_failed_work_exits_1() {
        let usage = [
            Fatal::from(ConfigError::new(
                "--concurrency",
                "\"0\" is not a positive whole number",
            )),
            Fatal::CommandLine {
                kind: clap::error::ErrorKind::UnknownArgument,
                message: "unexpected argument '--nope' found (see deploytrack --help)".into(),
            },
            Fatal::SettingsChanged {
                state_dir: "/var/lib/deploytrack".into(),
                changes: vec![Change {
                    setting: "--environment",
                    before: "prod".into(),
                    now: "staging".into(),
                }],
            },
            Fatal::from(QueueCommandError::PurgeUnconfirmed),
        ];
        for fatal in &usage {
            assert_eq!(fatal.exit_code(), EXIT_USAGE, "{fatal}");
        }
        let failures = [
            Fatal::from(outbox::Error::Closed),
            Fatal::QueueWrite(outbox::Error::RolledBack),
            Fatal::from(QueueCommandError::NoQueue(PathBuf::from(
                "/x/deploytrack.db",
            ))),
            Fatal::ChecksFailed { failed: 2 },
            Fatal::from(ReportError::Unauthorized {
                status: 401,
                endpoint: None,
            }),
            Fatal::Runtime(std::io::Error::other("no threads")),
        ];
        for fatal in &failures {
            assert_eq!(fatal.exit_code(), EXIT_FAILURE, "{fatal}");
        }
    }

    #[test]
    fn each_failure_says_its_sentence() {
        let cases = [
            (
                Fatal::from(ConfigError::new("--timeout", "must be longer than zero")),
                "invalid --timeout: must be longer than zero",
            ),
            (
                Fatal::QueueWrite(outbox::Error::RolledBack),
                "cannot write to the queue: the queue database rolled the write back",
            ),
            (
                Fatal::SettingsNotRemembered(outbox::Error::Closed),
                "cannot remember the settings in the queue: the queue is closed",
            ),
            (
                Fatal::DeliveryStopped(deliver::Error::Queue(outbox::Error::Closed)),
                "delivery stopped: the queue is closed",
            ),
            (Fatal::ChecksFailed { failed: 1 }, "1 check failed"),
            (Fatal::ChecksFailed { failed: 3 }, "3 checks failed"),
            (
                Fatal::SyncGaveUp {
                    after: "2m".into(),
                    summary: "0 delivered".into(),
                },
                "sync gave up after 2m: 0 delivered; they stay queued for the agent or the next sync",
            ),
            (
                Fatal::from(QueueCommandError::PurgeUnconfirmed),
                "queue purge deletes every pending report and dead letter: confirm with --yes",
            ),
        ];
        for (fatal, want) in cases {
            assert_eq!(fatal.to_string(), want);
        }
        let refused = Fatal::SettingsChanged {
            state_dir: "/var/lib/deploytrack".into(),
            changes: vec![Change {
                setting: "--environment",
                before: "prod".into(),
                now: "staging".into(),
            }],
        }
        .to_string();
        assert!(
            refused.starts_with(
                "sync refused: the state dir /var/lib/deploytrack last delivered with"
            ),
            "{refused}"
        );
    }
}
