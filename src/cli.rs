//! The command line. Every run setting is optional here: `config` merges it with the
//! environment (clap reads `DEPLOYTRACK_*`), the config file and the defaults.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "deploytrack",
    version,
    about = "Reports which container images run where: from the Docker Engine to a deployment-tracking endpoint",
    propagate_version = true
)]
pub struct Cli {
    /// TOML config file; its keys are the long flag names in snake_case.
    #[arg(long, global = true, env = "DEPLOYTRACK_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Log level or filter directive (error, warn, info, debug, trace); RUST_LOG also works.
    #[arg(
        long,
        global = true,
        env = "DEPLOYTRACK_LOG_LEVEL",
        value_name = "LEVEL"
    )]
    pub log_level: Option<String>,

    /// Log format: text (for terminals and journald) or json (for log shippers).
    #[arg(
        long,
        global = true,
        env = "DEPLOYTRACK_LOG_FORMAT",
        value_name = "FORMAT"
    )]
    pub log_format: Option<String>,

    #[command(subcommand)]
    pub command: Command,

    /// Settings whose value came from their environment variable: (flag, variable).
    #[arg(skip)]
    pub from_env: Vec<(String, String)>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Watch the engine and report every container that runs (the agent).
    Run(RunArgs),
    /// Reconcile the running containers once, deliver everything queued, and exit.
    Sync {
        #[command(flatten)]
        run: RunArgs,
        /// Required: sync runs once and exits (continuous syncing is `run`).
        #[arg(long)]
        once: bool,
        /// Re-send deployments the endpoint already has.
        #[arg(long)]
        force: bool,
        /// Give up after this long; what is not delivered stays queued [default: 2m].
        #[arg(long, value_name = "DURATION")]
        timeout: Option<String>,
    },
    /// Report one deployment from a CD pipeline and wait until it is delivered.
    Report(ReportArgs),
    /// Check config, token, engine, state dir and endpoint; one line per check.
    Check(RunArgs),
    /// Inspect and repair the persistent queue in --state-dir.
    Queue {
        /// Directory of the persistent queue [default: $STATE_DIRECTORY, else /var/lib/deploytrack].
        #[arg(long, global = true, env = "DEPLOYTRACK_STATE_DIR", value_name = "DIR")]
        state_dir: Option<PathBuf>,
        #[command(subcommand)]
        action: QueueAction,
    },
    /// Print shell completions for SHELL (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff) generated from this command line.
    Man,
}

#[derive(Debug, Subcommand)]
pub enum QueueAction {
    /// Pending reports with their attempts, next try and last error.
    List,
    /// Dead letters: reports the endpoint refused permanently.
    Dead,
    /// The last report delivered for each key, with its time and the endpoint's status.
    Sent,
    /// Move every dead letter back into the queue.
    Retry,
    /// Delete every pending report and dead letter.
    Purge {
        /// Confirm the purge.
        #[arg(long)]
        yes: bool,
    },
}

/// Settings shared by every command that talks to the engine, the queue or the endpoint.
#[derive(Debug, Args, Default, Clone)]
pub struct RunArgs {
    /// Endpoint URL that receives the deployment reports. Without it, reports are printed (dry run).
    #[arg(long, env = "DEPLOYTRACK_URL", value_name = "URL")]
    pub url: Option<String>,

    /// File holding the API token (else DEPLOYTRACK_TOKEN, else the systemd credential `token`).
    #[arg(long, env = "DEPLOYTRACK_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<PathBuf>,

    /// Environment reported for containers without a `deploytrack.environment` label [default: deployed].
    #[arg(long, env = "DEPLOYTRACK_ENVIRONMENT", value_name = "NAME")]
    pub environment: Option<String>,

    /// Directory of the persistent queue [default: $STATE_DIRECTORY, else /var/lib/deploytrack].
    #[arg(long, env = "DEPLOYTRACK_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Docker Engine address (unix://, tcp://, https://) [default: DOCKER_HOST, else unix:///var/run/docker.sock].
    #[arg(long, env = "DOCKER_HOST", value_name = "URL")]
    pub docker_host: Option<String>,

    /// Print each report as a JSON line on stdout instead of sending it.
    #[arg(long, env = "DEPLOYTRACK_DRY_RUN", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub dry_run: Option<bool>,

    /// Template of image.name, e.g. '{host}/{label:app|container}'. Placeholders: {host} {container} {id} {compose_project} {compose_service} {compose_number} {swarm_service} {swarm_slot} {swarm_node} {swarm_stack} {label:KEY}; {a|b|"text"} takes the first that has a value. A placeholder without a value and without a fallback gives the default name [default: {swarm_service}.{swarm_slot} for a replicated Swarm task, {host}/{swarm_service} for a global one, else {host}/{container}].
    #[arg(long, env = "DEPLOYTRACK_NAME_TEMPLATE", value_name = "TEMPLATE")]
    pub name_template: Option<String>,

    /// The host's name in image.name ({host}), in place of the engine's (for hosts cloned from one image that share a name such as raspberrypi) [default: the engine's host name].
    #[arg(long, env = "DEPLOYTRACK_HOST_NAME", value_name = "NAME")]
    pub host_name: Option<String>,

    /// Report only containers labelled deploytrack.enable=true.
    #[arg(long, env = "DEPLOYTRACK_REQUIRE_LABEL", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub require_label: Option<bool>,

    /// Only watch containers with this label (key=value or key); repeatable.
    #[arg(
        long,
        env = "DEPLOYTRACK_LABEL_SELECTOR",
        value_name = "KEY=VALUE",
        value_delimiter = ','
    )]
    pub label_selector: Vec<String>,

    /// Also report container stops (and the old name of a renamed container), with an extra top-level "container" object in every report: id, state, and since (when it entered that state, to order reports from several hosts).
    #[arg(long, env = "DEPLOYTRACK_REPORT_STOPS", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub report_stops: Option<bool>,

    /// Also report images whose repository cannot be shown to hold the digest (on the
    /// containerd image store, where every local name gets a repo digest): the repository the
    /// container was started as is named without evidence.
    #[arg(long, env = "DEPLOYTRACK_REPORT_UNVERIFIED", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub report_unverified: Option<bool>,

    /// Directory of the Docker CLI's config.json (or that file itself), whose registry
    /// credentials (auths, credsStore, credHelpers) the agent passes to the engine's registry
    /// lookups [default: the systemd credential `docker-config`, else $DOCKER_CONFIG, else
    /// ~/.docker].
    #[arg(long, env = "DEPLOYTRACK_DOCKER_CONFIG", value_name = "DIR")]
    pub docker_config: Option<PathBuf>,

    /// Reports in flight at once [default: 4].
    #[arg(
        long,
        env = "DEPLOYTRACK_CONCURRENCY",
        value_name = "N",
        allow_negative_numbers = true
    )]
    pub concurrency: Option<String>,

    /// First retry delay [default: 1s].
    #[arg(long, env = "DEPLOYTRACK_RETRY_INITIAL", value_name = "DURATION")]
    pub retry_initial: Option<String>,

    /// Longest retry delay [default: 5m].
    #[arg(long, env = "DEPLOYTRACK_RETRY_MAX", value_name = "DURATION")]
    pub retry_max: Option<String>,

    /// Most pending reports kept; the oldest are dropped past it [default: 100000].
    #[arg(
        long,
        env = "DEPLOYTRACK_QUEUE_MAX_ENTRIES",
        value_name = "N",
        allow_negative_numbers = true
    )]
    pub queue_max_entries: Option<String>,

    /// Time in-flight requests get to finish on SIGTERM [default: 10s].
    #[arg(long, env = "DEPLOYTRACK_SHUTDOWN_TIMEOUT", value_name = "DURATION")]
    pub shutdown_timeout: Option<String>,

    /// Timeout of one request to the endpoint [default: 15s].
    #[arg(long, env = "DEPLOYTRACK_REQUEST_TIMEOUT", value_name = "DURATION")]
    pub request_timeout: Option<String>,

    /// How often the running containers are listed again on a healthy event stream [default: 10m].
    #[arg(long, env = "DEPLOYTRACK_RESYNC_INTERVAL", value_name = "DURATION")]
    pub resync_interval: Option<String>,

    /// PEM file of CA certificates trusted for the endpoint besides the system's (a private CA).
    #[arg(long, env = "DEPLOYTRACK_CA_FILE", value_name = "PATH")]
    pub ca_file: Option<PathBuf>,

    /// Address of the admin listener (/healthz /readyz /metrics /deployments); off by default.
    #[arg(long, env = "DEPLOYTRACK_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,

    /// The settings above whose value came from their environment variable: (flag, variable).
    #[arg(skip)]
    pub from_env: Vec<(String, String)>,
}

impl RunArgs {
    /// The environment variable `flag` was read from, if it was not given on the command line.
    pub fn env_source(&self, flag: &str) -> Option<&str> {
        self.from_env
            .iter()
            .find(|(f, _)| f == flag)
            .map(|(_, var)| var.as_str())
    }
}

impl Cli {
    /// Parse the command line, remembering which settings came from the environment, so
    /// that an error names the variable the user set rather than a flag they never typed.
    pub fn parse_with_sources() -> Result<Self, clap::Error> {
        use clap::{CommandFactory, FromArgMatches};
        let command = Self::command();
        let matches = command.clone().try_get_matches()?;
        let mut cli = Self::from_arg_matches(&matches)?;
        let mut levels = vec![(&command, &matches)];
        if let Some((name, sub)) = matches.subcommand() {
            levels.extend(command.find_subcommand(name).map(|c| (c, sub)));
        }
        for (command, matches) in levels {
            for arg in command.get_arguments() {
                let from_env = matches.value_source(arg.get_id().as_str())
                    == Some(clap::parser::ValueSource::EnvVariable);
                if let (true, Some(long), Some(env)) = (from_env, arg.get_long(), arg.get_env()) {
                    let entry = (format!("--{long}"), env.to_string_lossy().into_owned());
                    if !cli.from_env.contains(&entry) {
                        cli.from_env.push(entry);
                    }
                }
            }
        }
        let from_env = cli.from_env.clone();
        match &mut cli.command {
            Command::Run(run) | Command::Check(run) | Command::Sync { run, .. } => {
                run.from_env = from_env
            }
            Command::Report(report) => report.run.from_env = from_env,
            _ => {}
        }
        Ok(cli)
    }

    /// How the user spelled `flag`: the flag itself, or the environment variable it came from.
    pub fn source_of(&self, flag: &'static str) -> String {
        self.from_env
            .iter()
            .find(|(f, _)| f == flag)
            .map_or_else(|| flag.to_string(), |(_, var)| var.clone())
    }
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Image reference pinned by digest: REPOSITORY[:TAG]@sha256:HEX.
    #[arg(long, value_name = "REF")]
    pub image: String,
    /// image.name of the deployment [default: the image repository].
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Platform as os/arch[/variant] [default: linux/amd64].
    #[arg(long, value_name = "PLATFORM")]
    pub platform: Option<String>,
    /// Give up after this long [default: 2m].
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<String>,
}
