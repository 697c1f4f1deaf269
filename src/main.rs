#![forbid(unsafe_code)]
//! deploytrack: reports which container images run where.

mod admin;
mod agent;
mod cli;
mod commands;
mod config;
mod deliver;
mod deployment;
mod engine;
mod observe;
mod outbox;
mod reference;
mod telemetry;

use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser};

use cli::{Cli, Command};
use config::{Config, ConfigError, FileConfig};

/// EX_USAGE: a setting is wrong.
const EXIT_USAGE: u8 = 64;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            // Clap's message spans several lines; keep the sentence.
            let text = e.render().to_string();
            let first = text
                .lines()
                .next()
                .unwrap_or_default()
                .trim_start_matches("error: ");
            return fail(&format!("{first} (see deploytrack --help)"), EXIT_USAGE);
        }
    };
    match &cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "deploytrack",
                &mut std::io::stdout(),
            );
            return ExitCode::SUCCESS;
        }
        Command::Man => {
            return match clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&format!("cannot write the man page: {e}"), 1),
            };
        }
        _ => {}
    }
    let file = match FileConfig::load(cli.config.as_deref()) {
        Ok(f) => f,
        Err(e) => return usage(&e),
    };
    let level = cli.log_level.clone().or(file.log_level.clone());
    let format = cli.log_format.clone().or(file.log_format.clone());
    if let Err(e) = telemetry::init_logging(level.as_deref(), format.as_deref()) {
        return usage(&e);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the runtime: {e}"), 1),
    };
    let result = match &cli.command {
        Command::Run(args) => match Config::build(args, &file) {
            Ok(config) => runtime.block_on(agent::run(config)),
            Err(e) => return usage(&e),
        },
        Command::Sync { run, once, force } => {
            if !once {
                return usage(&ConfigError::new(
                    "sync",
                    "pass --once (the continuous form is `deploytrack run`)",
                ));
            }
            match Config::build(run, &file) {
                Ok(config) => {
                    runtime.block_on(agent::sync_once(config, *force, Duration::from_secs(120)))
                }
                Err(e) => return usage(&e),
            }
        }
        Command::Report(args) => match Config::build(&args.run, &file) {
            Ok(config) => runtime.block_on(commands::report(args, config)),
            Err(e) => return usage(&e),
        },
        Command::Check(args) => runtime.block_on(commands::check(Config::build(args, &file))),
        Command::Queue { state_dir, action } => {
            commands::queue(action, &config::state_dir(state_dir.as_deref(), &file))
        }
        Command::Completions { .. } | Command::Man => Ok(()),
    };
    // Don't wait for blocking tasks (a stuck engine call) at exit.
    runtime.shutdown_timeout(Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e.0, 1),
    }
}

fn usage(e: &ConfigError) -> ExitCode {
    fail(&e.to_string(), EXIT_USAGE)
}

fn fail(message: &str, code: u8) -> ExitCode {
    eprintln!("deploytrack: {message}");
    ExitCode::from(code)
}
