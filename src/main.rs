#![forbid(unsafe_code)]
//! deploytrack: reports which container images run where.

use std::process::ExitCode;
use std::time::Duration;

use clap::CommandFactory;

use deploytrack::cli::{Cli, Command};
use deploytrack::config::{self, Config, ConfigError, FileConfig};
use deploytrack::{agent, commands, telemetry};

/// EX_USAGE: a setting is wrong.
const EXIT_USAGE: u8 = 64;

fn main() -> ExitCode {
    let cli = match Cli::parse_noting_sources() {
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
            return match man_page(&mut std::io::stdout().lock()) {
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
        Command::Run(args) => match build_config(args, &file) {
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
            match build_config(run, &file) {
                Ok(config) => {
                    runtime.block_on(agent::sync_once(config, *force, Duration::from_secs(120)))
                }
                Err(e) => return usage(&e),
            }
        }
        Command::Report(args) => {
            let request = build_config(&args.run, &file).and_then(|config| {
                commands::report_request(args, &config).map(|request| (request, config))
            });
            match request {
                Ok(((deployment, timeout), config)) => {
                    runtime.block_on(commands::report(deployment, timeout, config))
                }
                Err(e) => return usage(&e),
            }
        }
        Command::Check(args) => runtime.block_on(commands::check(build_config(args, &file))),
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

/// deploytrack(1): the command, each subcommand's options, exit status and files.
fn man_page(out: &mut dyn std::io::Write) -> std::io::Result<()> {
    let mut cli = Cli::command();
    cli.build();
    clap_mangen::Man::new(cli.clone()).render(out)?;
    for sub in cli
        .get_subcommands()
        .filter(|s| !matches!(s.get_name(), "help" | "man" | "completions"))
    {
        writeln!(out, ".SH \"DEPLOYTRACK {}\"", sub.get_name().to_uppercase())?;
        if let Some(about) = sub.get_about() {
            writeln!(out, "{about}")?;
        }
        let mut options = Vec::new();
        clap_mangen::Man::new(sub.clone()).render_options_section(&mut options)?;
        let options = String::from_utf8_lossy(&options).replacen(".SH OPTIONS", ".SS Options", 1);
        out.write_all(options.as_bytes())?;
    }
    out.write_all(
        br#".SH "EXIT STATUS"
0 on success, 1 when the work failed (the engine unreachable past a short retry, a queue that cannot be written, a report not delivered), 64 when a setting is invalid.
.SH FILES
.TP
/etc/deploytrack/config.toml
The config file given with \fB--config\fR (its keys are the long flag names in snake_case).
.TP
/etc/deploytrack/token
The API token, loaded by systemd as the credential \fBtoken\fR.
.TP
/var/lib/deploytrack/deploytrack.db
The persistent queue (SQLite), readable with \fBsqlite3\fR(1) and \fBdeploytrack queue\fR.
.SH "SEE ALSO"
\fBsystemd.exec\fR(5), \fBdocker\fR(1)
"#,
    )
}

/// The validated config; what works but deserves a look is logged once here.
fn build_config(
    args: &deploytrack::cli::RunArgs,
    file: &FileConfig,
) -> Result<Config, ConfigError> {
    let config = Config::build(args, file)?;
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    Ok(config)
}

fn usage(e: &ConfigError) -> ExitCode {
    fail(&e.to_string(), EXIT_USAGE)
}

fn fail(message: &str, code: u8) -> ExitCode {
    eprintln!("deploytrack: {message}");
    ExitCode::from(code)
}
