#![forbid(unsafe_code)]
//! deploytrack: reports which container images run where.

use std::process::ExitCode;
use std::time::Duration;

use clap::CommandFactory;

use deploytrack::cli::{Cli, Command};
use deploytrack::config::{self, Config, ConfigError, FileConfig};
use deploytrack::error::Fatal;
use deploytrack::{agent, commands, telemetry};

fn main() -> ExitCode {
    match run_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("deploytrack: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn run_main() -> Result<(), Fatal> {
    let Some(cli) = parse_command_line()? else {
        return Ok(());
    };
    if print_generated(&cli.command)? {
        return Ok(());
    }
    // `check` names every bad key of the file and still checks the rest; the other
    // commands stop at the first.
    let (file, mut file_errors) = FileConfig::load_each(cli.config.as_deref());
    if !matches!(cli.command, Command::Check(_)) && !file_errors.is_empty() {
        return Err(file_errors.swap_remove(0).into());
    }
    init_logging(&cli, &file)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Fatal::Runtime)?;
    let result = run_command(&cli, &file, file_errors, &runtime);
    // Don't wait for blocking tasks (a stuck engine call) at exit.
    runtime.shutdown_timeout(Duration::from_millis(100));
    result
}

/// The command line; none after help or the version (exit 0).
fn parse_command_line() -> Result<Option<Cli>, Fatal> {
    use clap::error::ErrorKind;
    match Cli::parse_with_sources() {
        Ok(cli) => Ok(Some(cli)),
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) =>
        {
            let _ = e.print();
            Ok(None)
        }
        Err(e) => {
            let args: Vec<String> = std::env::args_os()
                .skip(1)
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            Err(Fatal::CommandLine {
                kind: e.kind(),
                message: deploytrack::cli::command_line_error(&e, &args),
            })
        }
    }
}

/// `completions` and `man` print what is generated from the command line and need nothing
/// else: no config file, no logging. True when it printed.
fn print_generated(command: &Command) -> Result<bool, Fatal> {
    match command {
        Command::Completions { shell } => {
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "deploytrack",
                &mut std::io::stdout(),
            );
            Ok(true)
        }
        Command::Man => {
            man_page(&mut std::io::stdout().lock()).map_err(Fatal::ManPage)?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Flag, then DEPLOYTRACK_LOG_LEVEL, then RUST_LOG, then the file: the environment beats
/// the file, and our own variable beats the generic one.
fn init_logging(cli: &Cli, file: &FileConfig) -> Result<(), ConfigError> {
    let level = match (&cli.log_level, std::env::var("RUST_LOG")) {
        (Some(level), _) => Some((level.clone(), cli.source_of("--log-level"))),
        (None, Ok(level)) => Some((level, "RUST_LOG".to_string())),
        (None, Err(_)) => file
            .log_level
            .clone()
            .map(|level| (level, file.key_source("log_level"))),
    };
    let format = match &cli.log_format {
        Some(format) => Some((format.clone(), cli.source_of("--log-format"))),
        None => file
            .log_format
            .clone()
            .map(|format| (format, file.key_source("log_format"))),
    };
    telemetry::init_logging(level, format)
}

/// Run the command; a bad setting ends it at once with exit code 64.
fn run_command(
    cli: &Cli,
    file: &FileConfig,
    file_errors: Vec<ConfigError>,
    runtime: &tokio::runtime::Runtime,
) -> Result<(), Fatal> {
    // The settings of the command's own flags (and their variables).
    let settings = cli.settings().unwrap_or_default();
    match &cli.command {
        Command::Run(_) => {
            let config = build_config(&settings, file)?;
            runtime.block_on(agent::run(config))
        }
        Command::Sync {
            run: _,
            once,
            force,
            timeout,
            accept_settings,
        } => {
            let timeout = sync_timeout(*once, timeout)?;
            let config = build_config(&settings, file)?;
            runtime.block_on(agent::sync_once(config, *force, *accept_settings, timeout))
        }
        Command::Report(args) => {
            let config = build_config(&settings, file)?;
            let (deployment, timeout) = commands::report_request(args, &config)?;
            runtime.block_on(commands::report(deployment, timeout, config))
        }
        Command::Check(_) => {
            let (config, invalid) = Config::build_each(&settings, file);
            let file_invalid = file_errors.into_iter().map(|error| config::Invalid {
                key: "config",
                error,
            });
            runtime.block_on(commands::check(
                config,
                file_invalid.chain(invalid).collect(),
            ))
        }
        Command::Queue { state_dir, action } => Ok(commands::queue(
            action,
            &config::state_dir(state_dir.as_deref(), file),
        )?),
        Command::Completions { .. } | Command::Man => Ok(()),
    }
}

/// `sync` needs `--once`, and a `--timeout` above zero.
fn sync_timeout(once: bool, timeout: &Option<String>) -> Result<Duration, ConfigError> {
    if !once {
        return Err(ConfigError::new(
            "sync",
            "pass --once (the continuous form is `deploytrack run`)",
        ));
    }
    let timeout = config::duration("--timeout", timeout.clone(), "2m")?;
    if timeout.is_zero() {
        return Err(ConfigError::new("--timeout", "must be longer than zero"));
    }
    Ok(timeout)
}

/// deploytrack(1): the command, each subcommand's options, exit status and files.
fn man_page(out: &mut dyn std::io::Write) -> std::io::Result<()> {
    let mut cli = Cli::command();
    cli.build();
    let man = clap_mangen::Man::new(cli.clone());
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    // clap_mangen's own list points to a page per subcommand (deploytrack-run(1)); this page
    // describes them all, in the sections that follow.
    writeln!(out, ".SH SUBCOMMANDS")?;
    for sub in cli.get_subcommands().filter(|s| s.get_name() != "help") {
        writeln!(out, ".TP\n\\fB{}\\fR", sub.get_name())?;
        if let Some(about) = sub.get_about() {
            writeln!(out, "{about}")?;
        }
    }
    writeln!(
        out,
        ".PP\nThe options of each subcommand are listed in its section below."
    )?;
    man.render_version_section(out)?;
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
0 on success, 1 when the work failed (the engine unreachable past a short retry, a queue that cannot be written, a report not delivered), 64 when a setting is invalid, or when \fBsync --once\fR would deliver under an environment, host name, name template or selection other than those its state dir last delivered with (\fB--accept-settings\fR goes on).
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
