//! The command line. Every run setting is optional here: `config` merges it with the
//! environment (clap reads `DEPLOYTRACK_*`), the config file and the defaults.
//!
//! Each command takes only the flags it uses: the settings come in groups (the endpoint,
//! retries, the engine and naming, the queue, the agent), each command flattens the groups
//! it uses, and `Cli::settings` gathers them into one `RunArgs` for `config`. A flag of
//! another command is clap's usage error, which `flag_of_another_command` puts in words.

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
    Run(RunFlags),
    /// Reconcile the running containers once, deliver everything queued, and exit.
    Sync {
        #[command(flatten)]
        run: SyncFlags,
        /// Required: sync runs once and exits (continuous syncing is `run`).
        #[arg(long)]
        once: bool,
        /// Re-send deployments the endpoint already has.
        #[arg(long)]
        force: bool,
        /// Give up after this long; what is not delivered stays queued [default: 2m].
        #[arg(long, value_name = "DURATION")]
        timeout: Option<String>,
        /// Deliver even though the environment, host name, name template or selection differ
        /// from those the state dir last delivered with (new streams at the endpoint), and
        /// remember these.
        #[arg(long)]
        accept_settings: bool,
    },
    /// Report one deployment from a CD pipeline and wait until it is delivered.
    Report(ReportArgs),
    /// Check config, token, engine, state dir and endpoint; one line per check.
    Check(CheckFlags),
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

/// `run`: every setting.
#[derive(Debug, Args, Clone)]
pub struct RunFlags {
    #[command(flatten)]
    pub endpoint: EndpointArgs,
    #[command(flatten)]
    pub retry: RetryArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
    #[command(flatten)]
    pub queue: QueueArgs,
    #[command(flatten)]
    pub agent: AgentArgs,
}

/// `sync --once`: the agent's settings but those of a long run (the admin listener, the
/// resync interval, the shutdown grace).
#[derive(Debug, Args, Clone)]
pub struct SyncFlags {
    #[command(flatten)]
    pub endpoint: EndpointArgs,
    #[command(flatten)]
    pub retry: RetryArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
    #[command(flatten)]
    pub queue: QueueArgs,
}

/// `check`: what it checks (the endpoint, the engine, the state dir), nothing of delivery.
#[derive(Debug, Args, Clone)]
pub struct CheckFlags {
    #[command(flatten)]
    pub endpoint: EndpointArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// `true/false/1/0/yes/no` (any case), as every yes-or-no setting takes them
/// (`deployment::parse_bool`).
fn boolean() -> impl clap::builder::TypedValueParser<Value = bool> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(crate::deployment::BOOL_WORDS)
        .map(|word| crate::deployment::parse_bool(&word).unwrap_or(false))
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

/// The settings of a command, from its flags and their environment variables, as `config`
/// merges them with the file and the defaults. Each command fills in the flags it has (see
/// `Cli::settings`); the others stay unset.
#[derive(Debug, Default, Clone)]
pub struct RunArgs {
    pub url: Option<String>,
    pub token_file: Option<PathBuf>,
    pub environment: Option<String>,
    pub dry_run: Option<bool>,
    pub request_timeout: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub retry_initial: Option<String>,
    pub retry_max: Option<String>,
    pub docker_host: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub name_template: Option<String>,
    pub host_name: Option<String>,
    pub require_label: Option<bool>,
    pub label_selector: Vec<String>,
    pub report_unverified: Option<bool>,
    pub docker_config: Option<PathBuf>,
    pub report_stops: Option<bool>,
    pub concurrency: Option<String>,
    pub queue_max_entries: Option<String>,
    pub shutdown_timeout: Option<String>,
    pub resync_interval: Option<String>,
    pub listen: Option<String>,
    /// The command asks no registry about images (`report`): the Docker CLI's registry
    /// credentials are not read, so that it does not depend on them.
    pub skips_registries: bool,
    /// The settings above whose value came from their environment variable: (flag, variable).
    pub from_env: Vec<(String, String)>,
}

/// The endpoint and what is sent to it: `run`, `sync`, `check` and `report`.
#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "Endpoint")]
pub struct EndpointArgs {
    /// Endpoint URL that receives the deployment reports. Without it, reports are printed (dry run).
    #[arg(long, env = "DEPLOYTRACK_URL", value_name = "URL")]
    pub url: Option<String>,

    /// File holding the API token (else DEPLOYTRACK_TOKEN, else the systemd credential `token`).
    #[arg(long, env = "DEPLOYTRACK_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<PathBuf>,

    /// Environment reported for containers without a `deploytrack.environment` label [default: deployed].
    #[arg(long, env = "DEPLOYTRACK_ENVIRONMENT", value_name = "NAME")]
    pub environment: Option<String>,

    /// Print each report as a JSON line on stdout instead of sending it.
    #[arg(long, env = "DEPLOYTRACK_DRY_RUN", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL", value_parser = boolean(), ignore_case = true, hide_possible_values = true)]
    pub dry_run: Option<bool>,

    /// Timeout of one request to the endpoint [default: 15s].
    #[arg(long, env = "DEPLOYTRACK_REQUEST_TIMEOUT", value_name = "DURATION")]
    pub request_timeout: Option<String>,

    /// PEM file of CA certificates trusted for the endpoint besides the system's (a private CA).
    #[arg(long, env = "DEPLOYTRACK_CA_FILE", value_name = "PATH")]
    pub ca_file: Option<PathBuf>,
}

impl EndpointArgs {
    fn fill(&self, s: &mut RunArgs) {
        s.url = self.url.clone();
        s.token_file = self.token_file.clone();
        s.environment = self.environment.clone();
        s.dry_run = self.dry_run;
        s.request_timeout = self.request_timeout.clone();
        s.ca_file = self.ca_file.clone();
    }
}

/// How delivery retries: `run`, `sync` and `report`.
#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "Retries")]
pub struct RetryArgs {
    /// First retry delay [default: 1s].
    #[arg(long, env = "DEPLOYTRACK_RETRY_INITIAL", value_name = "DURATION")]
    pub retry_initial: Option<String>,

    /// Longest retry delay [default: 5m].
    #[arg(long, env = "DEPLOYTRACK_RETRY_MAX", value_name = "DURATION")]
    pub retry_max: Option<String>,
}

impl RetryArgs {
    fn fill(&self, s: &mut RunArgs) {
        s.retry_initial = self.retry_initial.clone();
        s.retry_max = self.retry_max.clone();
    }
}

/// The engine, the queue, and which containers are reported as what: `run`, `sync` and `check`.
#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "Engine, naming and selection")]
pub struct EngineArgs {
    /// Docker Engine address (unix://, tcp://, https://) [default: DOCKER_HOST, else unix:///var/run/docker.sock].
    #[arg(long, env = "DOCKER_HOST", value_name = "URL")]
    pub docker_host: Option<String>,

    /// Directory of the persistent queue [default: $STATE_DIRECTORY, else /var/lib/deploytrack].
    #[arg(long, env = "DEPLOYTRACK_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Template of image.name, e.g. '{host}/{label:app|container}'. Placeholders: {host} {container} {id} {compose_project} {compose_service} {compose_number} {swarm_service} {swarm_slot} {swarm_node} {swarm_stack} {label:KEY}; {a|b|"text"} takes the first that has a value. A placeholder without a value and without a fallback gives the default name [default: {swarm_service}.{swarm_slot} for a replicated Swarm task, {host}/{swarm_service} for a global one, else {host}/{container}].
    #[arg(long, env = "DEPLOYTRACK_NAME_TEMPLATE", value_name = "TEMPLATE")]
    pub name_template: Option<String>,

    /// The host's name in image.name ({host}), in place of the engine's (for hosts cloned from one image that share a name such as raspberrypi) [default: the engine's host name].
    #[arg(long, env = "DEPLOYTRACK_HOST_NAME", value_name = "NAME")]
    pub host_name: Option<String>,

    /// Report only containers labelled deploytrack.enable=true.
    #[arg(long, env = "DEPLOYTRACK_REQUIRE_LABEL", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL", value_parser = boolean(), ignore_case = true, hide_possible_values = true)]
    pub require_label: Option<bool>,

    /// Only watch containers with this label (key=value or key); repeatable.
    #[arg(
        long,
        env = "DEPLOYTRACK_LABEL_SELECTOR",
        value_name = "KEY=VALUE",
        value_delimiter = ','
    )]
    pub label_selector: Vec<String>,

    /// Also report images whose repository cannot be shown to hold the digest (on the
    /// containerd image store, where every local name gets a repo digest): the repository the
    /// container was started as is named without evidence.
    #[arg(long, env = "DEPLOYTRACK_REPORT_UNVERIFIED", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL", value_parser = boolean(), ignore_case = true, hide_possible_values = true)]
    pub report_unverified: Option<bool>,

    /// Directory of the Docker CLI's config.json (or that file itself), whose registry
    /// credentials (auths, credsStore, credHelpers) the agent passes to the engine's registry
    /// lookups [default: the systemd credential `docker-config`, else $DOCKER_CONFIG, else
    /// ~/.docker].
    #[arg(long, env = "DEPLOYTRACK_DOCKER_CONFIG", value_name = "DIR")]
    pub docker_config: Option<PathBuf>,
}

impl EngineArgs {
    fn fill(&self, s: &mut RunArgs) {
        s.docker_host = self.docker_host.clone();
        s.state_dir = self.state_dir.clone();
        s.name_template = self.name_template.clone();
        s.host_name = self.host_name.clone();
        s.require_label = self.require_label;
        s.label_selector = self.label_selector.clone();
        s.report_unverified = self.report_unverified;
        s.docker_config = self.docker_config.clone();
    }
}

/// What is queued and how fast it drains: `run` and `sync`.
#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "Queue and delivery")]
pub struct QueueArgs {
    /// Also report container stops (and the old name of a renamed container), with an extra top-level "container" object in every report: id, state, and since (when it entered that state, to order reports from several hosts).
    #[arg(long, env = "DEPLOYTRACK_REPORT_STOPS", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL", value_parser = boolean(), ignore_case = true, hide_possible_values = true)]
    pub report_stops: Option<bool>,

    /// Reports in flight at once [default: 4].
    #[arg(
        long,
        env = "DEPLOYTRACK_CONCURRENCY",
        value_name = "N",
        allow_negative_numbers = true
    )]
    pub concurrency: Option<String>,

    /// Most pending reports kept; the oldest are dropped past it [default: 100000].
    #[arg(
        long,
        env = "DEPLOYTRACK_QUEUE_MAX_ENTRIES",
        value_name = "N",
        allow_negative_numbers = true
    )]
    pub queue_max_entries: Option<String>,
}

impl QueueArgs {
    fn fill(&self, s: &mut RunArgs) {
        s.report_stops = self.report_stops;
        s.concurrency = self.concurrency.clone();
        s.queue_max_entries = self.queue_max_entries.clone();
    }
}

/// The long-running agent only: `run`.
#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "Agent")]
pub struct AgentArgs {
    /// Time in-flight requests get to finish on SIGTERM [default: 10s].
    #[arg(long, env = "DEPLOYTRACK_SHUTDOWN_TIMEOUT", value_name = "DURATION")]
    pub shutdown_timeout: Option<String>,

    /// How often the running containers are listed again on a healthy event stream [default: 10m].
    #[arg(long, env = "DEPLOYTRACK_RESYNC_INTERVAL", value_name = "DURATION")]
    pub resync_interval: Option<String>,

    /// Address of the admin listener (/healthz /readyz /metrics /deployments); off by default.
    #[arg(long, env = "DEPLOYTRACK_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
}

impl AgentArgs {
    fn fill(&self, s: &mut RunArgs) {
        s.shutdown_timeout = self.shutdown_timeout.clone();
        s.resync_interval = self.resync_interval.clone();
        s.listen = self.listen.clone();
    }
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
        Self::parse_from_with_sources(std::env::args_os())
    }

    /// `parse_with_sources` of the given arguments (the first is the program's name).
    pub fn parse_from_with_sources<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::{CommandFactory, FromArgMatches};
        let command = Self::command();
        let matches = command.clone().try_get_matches_from(args)?;
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
        Ok(cli)
    }

    /// The settings of `run`, `sync`, `check` or `report`: the flags that command has, with
    /// where each came from; none for the other commands.
    pub fn settings(&self) -> Option<RunArgs> {
        let mut s = RunArgs::default();
        match &self.command {
            Command::Run(f) => {
                f.endpoint.fill(&mut s);
                f.retry.fill(&mut s);
                f.engine.fill(&mut s);
                f.queue.fill(&mut s);
                f.agent.fill(&mut s);
            }
            Command::Sync { run: f, .. } => {
                f.endpoint.fill(&mut s);
                f.retry.fill(&mut s);
                f.engine.fill(&mut s);
                f.queue.fill(&mut s);
            }
            Command::Check(f) => {
                f.endpoint.fill(&mut s);
                f.engine.fill(&mut s);
            }
            Command::Report(f) => {
                f.endpoint.fill(&mut s);
                f.retry.fill(&mut s);
            }
            _ => return None,
        }
        s.skips_registries = matches!(self.command, Command::Report(_));
        s.from_env = self.from_env.clone();
        Some(s)
    }

    /// How the user spelled `flag`: the flag itself, or the environment variable it came from.
    pub fn source_of(&self, flag: &'static str) -> String {
        self.from_env
            .iter()
            .find(|(f, _)| f == flag)
            .map_or_else(|| flag.to_string(), |(_, var)| var.clone())
    }
}

/// The sentence for a flag given to a command that does not take it while other commands
/// do (`report --listen`): which command it belongs to. From clap's error kind and context;
/// none for any other error.
pub fn flag_of_another_command(e: &clap::Error, command: &str) -> Option<String> {
    use clap::error::ErrorKind;
    use clap::CommandFactory;
    if e.kind() != ErrorKind::UnknownArgument {
        return None;
    }
    let flag = flag_named(e);
    let long = flag.strip_prefix("--")?;
    let cli = Cli::command();
    if takes(cli.find_subcommand(command)?, long) {
        return None;
    }
    let owners = commands_taking(&cli, long);
    let (last, others) = owners.split_last()?;
    let owners = match others {
        [] => format!("`{last}` only"),
        _ => format!("`{}` and `{last}`", others.join("`, `")),
    };
    Some(format!(
        "{command} does not take {flag}: it is a setting of {owners} (deploytrack {command} --help lists what {command} takes)"
    ))
}

/// The flag clap's error names, alone: `--dry-run` of `--dry-run [<BOOL>]` or `--url=x`;
/// empty when it names none.
fn flag_named(e: &clap::Error) -> &str {
    use clap::error::{ContextKind, ContextValue};
    match e.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(argument)) => {
            argument.split([' ', '=']).next().unwrap_or_default()
        }
        _ => "",
    }
}

/// Whether `command` takes the flag `--long`.
fn takes(command: &clap::Command, long: &str) -> bool {
    command.get_arguments().any(|a| a.get_long() == Some(long))
}

/// The subcommands that take the flag `--long`, in the order of `--help`.
fn commands_taking<'a>(cli: &'a clap::Command, long: &str) -> Vec<&'a str> {
    cli.get_subcommands()
        .filter(|c| takes(c, long))
        .map(|c| c.get_name())
        .collect()
}

/// A command-line error in one line, from clap's error kind and context (never its
/// rendered text): the sentence, the accepted values and clap's tips; plus where a flag
/// belongs and which environment variable an invalid value came from. `args`: the command
/// line, without the program's name.
pub fn command_line_error(e: &clap::Error, args: &[String]) -> String {
    use clap::error::ErrorKind;
    use clap::CommandFactory;
    let command = Cli::command();
    let given = args
        .iter()
        .find(|a| command.find_subcommand(a.as_str()).is_some());
    if let Some(sentence) = given.and_then(|c| flag_of_another_command(e, c)) {
        return sentence;
    }
    let mut parts = one_line_parts(e);
    let flag = flag_named(e);
    match e.kind() {
        ErrorKind::UnknownArgument if flag.starts_with("--") => {
            let owners = commands_taking(&command, flag.trim_start_matches("--"));
            let misplaced = given.is_none_or(|c| owners.contains(&c.as_str()));
            if let (Some(first), true) = (owners.first(), misplaced) {
                let example = given.map_or(*first, String::as_str);
                // In place of clap's tip, which names the pair but not the rule.
                parts.truncate(1);
                parts.push(format!(
                    "options of a command go after it, as in `deploytrack {example} {flag} ...`"
                ));
            }
        }
        ErrorKind::InvalidValue | ErrorKind::ValueValidation => {
            let env = command
                .get_subcommands()
                .chain([&command])
                .flat_map(|c| c.get_arguments())
                .find(|a| a.get_long().is_some_and(|l| format!("--{l}") == flag))
                .and_then(|a| a.get_env())
                .map(|v| v.to_string_lossy().into_owned());
            let typed = args
                .iter()
                .any(|a| a == flag || a.starts_with(&format!("{flag}=")));
            if let (Some(var), false, Some(first)) = (env, typed, parts.first_mut()) {
                if std::env::var_os(&var).is_some() {
                    first.push_str(&format!(" (from the environment variable {var})"));
                }
            }
        }
        _ => {}
    }
    format!("{} (see deploytrack --help)", parts.join("; "))
}

/// What clap's error says, from its kind and context: the sentence (a list it introduces
/// with a colon continues it), the accepted values, then each tip.
fn one_line_parts(e: &clap::Error) -> Vec<String> {
    let (sentence, items) = sentence_of(e);
    let sentence = sentence.unwrap_or_else(|| match e.kind().as_str() {
        Some(words) => words.to_string(),
        None => {
            std::error::Error::source(e).map_or_else(|| "unknown cause".into(), |s| s.to_string())
        }
    });
    let mut parts = Vec::new();
    let mut items = items.into_iter();
    match items.next() {
        Some(first) => {
            parts.push(format!("{sentence} {first}"));
            parts.extend(items);
        }
        None => parts.push(sentence),
    }
    parts.extend(accepted_values(e));
    parts.extend(tips(e));
    parts
}

/// clap's error context, read by kind.
struct Context<'a>(&'a clap::Error);

impl<'a> Context<'a> {
    fn text(&self, kind: clap::error::ContextKind) -> Option<&'a str> {
        match self.0.get(kind) {
            Some(clap::error::ContextValue::String(s)) => Some(s.as_str()),
            _ => None,
        }
    }

    fn list(&self, kind: clap::error::ContextKind) -> &'a [String] {
        match self.0.get(kind) {
            Some(clap::error::ContextValue::Strings(v)) => v.as_slice(),
            _ => &[],
        }
    }

    fn number(&self, kind: clap::error::ContextKind) -> Option<isize> {
        match self.0.get(kind) {
            Some(clap::error::ContextValue::Number(n)) => Some(*n),
            _ => None,
        }
    }
}

/// The sentence of clap's error, and the items of a list it ends with a colon.
fn sentence_of(e: &clap::Error) -> (Option<String>, Vec<String>) {
    use clap::error::{ContextKind, ErrorKind};
    let c = Context(e);
    let arg = c.text(ContextKind::InvalidArg);
    let value = c.text(ContextKind::InvalidValue);
    let sentence = match (e.kind(), arg, value) {
        (ErrorKind::ArgumentConflict, _, _) => return conflict_sentence(e, arg),
        (ErrorKind::MissingRequiredArgument, _, _) => {
            let missing = c.list(ContextKind::InvalidArg);
            if missing.is_empty() {
                return (None, Vec::new());
            }
            let head = "the following required arguments were not provided:";
            return (Some(head.to_string()), missing.to_vec());
        }
        (ErrorKind::NoEquals, Some(a), _) => {
            format!("equal sign is needed when assigning values to '{a}'")
        }
        (ErrorKind::InvalidValue, Some(a), Some("")) => {
            format!("a value is required for '{a}' but none was supplied")
        }
        (ErrorKind::InvalidValue, Some(a), Some(v)) => format!("invalid value '{v}' for '{a}'"),
        (ErrorKind::InvalidSubcommand, _, _) => match c.text(ContextKind::InvalidSubcommand) {
            Some(s) => format!("unrecognized subcommand '{s}'"),
            None => return (None, Vec::new()),
        },
        (ErrorKind::MissingSubcommand, _, _) => match c.text(ContextKind::InvalidSubcommand) {
            Some(s) => format!("'{s}' requires a subcommand but one was not provided"),
            None => return (None, Vec::new()),
        },
        (ErrorKind::TooManyValues, Some(a), Some(v)) => {
            format!("unexpected value '{v}' for '{a}' found; no more were expected")
        }
        (ErrorKind::TooFewValues | ErrorKind::WrongNumberOfValues, Some(a), _) => {
            return (value_count_sentence(&c, e.kind(), a), Vec::new())
        }
        (ErrorKind::ValueValidation, Some(a), Some(v)) => {
            let why = std::error::Error::source(e).map_or_else(String::new, |s| format!(": {s}"));
            format!("invalid value '{v}' for '{a}'{why}")
        }
        (ErrorKind::UnknownArgument, Some(a), _) => format!("unexpected argument '{a}' found"),
        _ => return (None, Vec::new()),
    };
    (Some(sentence), Vec::new())
}

/// An argument given twice, or with others it excludes.
fn conflict_sentence(e: &clap::Error, arg: Option<&str>) -> (Option<String>, Vec<String>) {
    use clap::error::{ContextKind, ContextValue};
    let prior = e.get(ContextKind::PriorArg);
    let repeated =
        arg.is_some() && matches!(prior, Some(ContextValue::String(p)) if Some(p.as_str()) == arg);
    let head = match (arg, Context(e).text(ContextKind::InvalidSubcommand)) {
        (Some(a), _) if repeated => format!("the argument '{a}' cannot be used multiple times"),
        (Some(a), _) => format!("the argument '{a}' cannot be used with"),
        (None, Some(sub)) => format!("the subcommand '{sub}' cannot be used with"),
        (None, None) => e.kind().as_str().unwrap_or_default().to_string(),
    };
    match prior {
        _ if repeated => (Some(head), Vec::new()),
        Some(ContextValue::Strings(others)) => (Some(format!("{head}:")), others.clone()),
        Some(ContextValue::String(other)) => (Some(format!("{head} '{other}'")), Vec::new()),
        Some(_) => (
            Some(format!(
                "{head} one or more of the other specified arguments"
            )),
            Vec::new(),
        ),
        None => (Some(head), Vec::new()),
    }
}

/// Too few values, or not the number expected.
fn value_count_sentence(c: &Context, kind: clap::error::ErrorKind, arg: &str) -> Option<String> {
    use clap::error::{ContextKind, ErrorKind};
    let were = |n: isize| if n > 1 { "were" } else { "was" };
    let actual = c.number(ContextKind::ActualNumValues)?;
    Some(match kind {
        ErrorKind::TooFewValues => {
            let min = c.number(ContextKind::MinValues)?;
            format!(
                "{min} values required by '{arg}'; only {actual} {} provided",
                were(actual)
            )
        }
        _ => {
            let expected = c.number(ContextKind::ExpectedNumValues)?;
            format!(
                "{expected} values required for '{arg}' but {actual} {} provided",
                were(actual)
            )
        }
    })
}

/// The values clap accepts, where it lists them: `[possible values: a, b]`.
fn accepted_values(e: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ErrorKind};
    let (name, kind) = match e.kind() {
        ErrorKind::InvalidValue => ("possible values", ContextKind::ValidValue),
        ErrorKind::MissingSubcommand => ("subcommands", ContextKind::ValidSubcommand),
        _ => return None,
    };
    let values = Context(e).list(kind);
    // A value with a space (or none) is quoted, as clap lists it.
    let shown: Vec<String> = values
        .iter()
        .map(|v| {
            if v.is_empty() || v.contains(char::is_whitespace) {
                format!("{v:?}")
            } else {
                v.clone()
            }
        })
        .collect();
    (!shown.is_empty()).then(|| format!("[{name}: {}]", shown.join(", ")))
}

/// clap's tips: similar subcommands, arguments and values, and its suggestions.
fn tips(e: &clap::Error) -> Vec<String> {
    use clap::error::{ContextKind, ContextValue};
    let mut tips = Vec::new();
    for (what, kind) in [
        ("subcommand", ContextKind::SuggestedSubcommand),
        ("argument", ContextKind::SuggestedArg),
        ("value", ContextKind::SuggestedValue),
    ] {
        let similar: Vec<String> = match e.get(kind) {
            Some(ContextValue::String(s)) => vec![s.clone()],
            Some(ContextValue::Strings(v)) => v.clone(),
            _ => continue,
        };
        let quoted: Vec<String> = similar.iter().map(|s| format!("'{s}'")).collect();
        tips.push(match quoted.as_slice() {
            [] => format!("tip: some similar {what}s exist: "),
            [one] => format!("tip: a similar {what} exists: {one}"),
            _ => format!("tip: some similar {what}s exist: {}", quoted.join(", ")),
        });
    }
    if let Some(ContextValue::StyledStrs(suggested)) = e.get(ContextKind::Suggested) {
        tips.extend(suggested.iter().map(|tip| format!("tip: {tip}")));
    }
    tips
}

/// `report`: the endpoint and the retries, and the deployment.
#[derive(Debug, Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub endpoint: EndpointArgs,
    #[command(flatten)]
    pub retry: RetryArgs,
    /// Image reference pinned by digest: REPOSITORY[:TAG]@sha256:HEX.
    #[arg(long, value_name = "REF", help_heading = "Deployment")]
    pub image: String,
    /// image.name of the deployment [default: the image repository].
    #[arg(long, value_name = "NAME", help_heading = "Deployment")]
    pub name: Option<String>,
    /// Platform as os/arch[/variant], or an architecture alone (linux): Docker's names and
    /// their aliases, x86_64 (amd64), aarch64 (arm64), armhf (arm/v7) [default: linux/amd64].
    #[arg(long, value_name = "PLATFORM", help_heading = "Deployment")]
    pub platform: Option<String>,
    /// Give up after this long [default: 2m].
    #[arg(long, value_name = "DURATION", help_heading = "Deployment")]
    pub timeout: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    use clap::CommandFactory;

    const PINNED: &str =
        "app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::parse_from_with_sources(std::iter::once("deploytrack").chain(args.iter().copied()))
    }

    /// The flag clap refused, from its context.
    fn refused(e: &clap::Error) -> Option<String> {
        match e.get(ContextKind::InvalidArg) {
            Some(ContextValue::String(arg)) => Some(arg.clone()),
            _ => None,
        }
    }

    #[test]
    fn agent_only_flags_are_usage_errors_of_the_one_shot_commands() {
        let report = ["report", "--image", PINNED];
        let cases: &[(&[&str], &str)] = &[
            (&["--report-stops"], "--report-stops"),
            (&["--listen", "127.0.0.1:9464"], "--listen"),
            (&["--label-selector", "a=b"], "--label-selector"),
            (&["--name-template", "{host}"], "--name-template"),
            (&["--state-dir", "/tmp/x"], "--state-dir"),
            (&["--concurrency", "2"], "--concurrency"),
        ];
        for (extra, flag) in cases {
            let args: Vec<&str> = report.iter().chain(extra.iter()).copied().collect();
            let e = parse(&args).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::UnknownArgument, "{args:?}");
            assert_eq!(refused(&e).as_deref(), Some(*flag), "{args:?}");
            let sentence = flag_of_another_command(&e, "report").unwrap();
            assert!(
                sentence.starts_with(&format!("report does not take {flag}: it is a setting of")),
                "{sentence}"
            );
        }
        let e = parse(&["report", "--image", PINNED, "--listen", "x"]).unwrap_err();
        assert_eq!(
            flag_of_another_command(&e, "report").unwrap(),
            "report does not take --listen: it is a setting of `run` only (deploytrack report --help lists what report takes)"
        );
        for (command, flag) in [
            ("check", "--listen"),
            ("check", "--report-stops"),
            ("check", "--retry-max"),
            ("check", "--concurrency"),
            ("sync", "--listen"),
            ("sync", "--resync-interval"),
            ("sync", "--shutdown-timeout"),
        ] {
            let e = parse(&[command, flag, "1"]).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::UnknownArgument, "{command} {flag}");
            assert_eq!(refused(&e).as_deref(), Some(flag));
        }
        // `run` takes them all.
        let cli = parse(&["run", "--report-stops", "--listen", "127.0.0.1:1"]).unwrap();
        let settings = cli.settings().unwrap();
        assert_eq!(settings.report_stops, Some(true));
        assert_eq!(settings.listen.as_deref(), Some("127.0.0.1:1"));
        // A flag no command has is clap's own error.
        let e = parse(&["report", "--image", PINNED, "--frobnicate"]).unwrap_err();
        assert_eq!(flag_of_another_command(&e, "report"), None);
    }

    /// The one line of a command-line error, and clap's kind of it.
    fn one_line(args: &[&str]) -> (ErrorKind, String) {
        let e = parse(args).unwrap_err();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        (e.kind(), command_line_error(&e, &args))
    }

    #[test]
    fn command_line_errors_are_said_from_their_kind_and_context() {
        let cases: &[(&[&str], ErrorKind, &str)] = &[
            (
                &["report"],
                ErrorKind::MissingRequiredArgument,
                "the following required arguments were not provided: --image <REF>",
            ),
            (
                &["completions", "bas"],
                ErrorKind::InvalidValue,
                "invalid value 'bas' for '<SHELL>'; [possible values: bash, elvish, fish, powershell, zsh]; tip: a similar value exists: 'bash'",
            ),
            (
                &["--url", "https://example.com/x", "run"],
                ErrorKind::UnknownArgument,
                "unexpected argument '--url' found; options of a command go after it, as in `deploytrack run --url ...`",
            ),
            (
                &["runn"],
                ErrorKind::InvalidSubcommand,
                "unrecognized subcommand 'runn'; tip: a similar subcommand exists: 'run'",
            ),
            (
                &["run", "--urll", "x"],
                ErrorKind::UnknownArgument,
                "unexpected argument '--urll' found; tip: a similar argument exists: '--url'",
            ),
            (
                &["run", "--url"],
                ErrorKind::InvalidValue,
                "a value is required for '--url <URL>' but none was supplied",
            ),
            (
                &["run", "--dry-run=maybe"],
                ErrorKind::InvalidValue,
                "invalid value 'maybe' for '--dry-run [<BOOL>]'; [possible values: true, false, 1, 0, yes, no]",
            ),
            (
                &["run", "--url", "a", "--url", "b"],
                ErrorKind::ArgumentConflict,
                "the argument '--url <URL>' cannot be used multiple times",
            ),
            (
                &["queue", "purge", "--yes=x"],
                ErrorKind::TooManyValues,
                "unexpected value 'x' for '--yes' found; no more were expected",
            ),
            (
                &["--", "run"],
                ErrorKind::UnknownArgument,
                "unexpected argument 'run' found; tip: subcommand 'run' exists; to use it, remove the '--' before it",
            ),
            (
                &["check", "--image", PINNED],
                ErrorKind::UnknownArgument,
                "check does not take --image: it is a setting of `report` only (deploytrack check --help lists what check takes)",
            ),
        ];
        for (args, kind, want) in cases {
            let (got_kind, line) = one_line(args);
            assert_eq!(got_kind, *kind, "{args:?}");
            let want = if want.contains("--help lists") {
                want.to_string()
            } else {
                format!("{want} (see deploytrack --help)")
            };
            assert_eq!(line, want, "{args:?}");
        }
    }

    /// The long flags of a subcommand's help (`--help` and `--version` aside).
    fn flags(command: &str) -> Vec<String> {
        let mut cli = Cli::command();
        cli.build();
        let sub = cli.find_subcommand(command).unwrap();
        sub.get_arguments()
            .filter(|a| !a.is_hide_set())
            .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
            .filter(|l| l != "--help" && l != "--version")
            .collect()
    }

    #[test]
    fn each_command_lists_only_the_flags_it_uses() {
        let global = ["--config", "--log-level", "--log-format"];
        let own = |command: &str| -> Vec<String> {
            flags(command)
                .into_iter()
                .filter(|f| !global.contains(&f.as_str()))
                .collect()
        };
        let endpoint = [
            "--url",
            "--token-file",
            "--environment",
            "--dry-run",
            "--request-timeout",
            "--ca-file",
        ];
        let retry = ["--retry-initial", "--retry-max"];
        let engine = [
            "--docker-host",
            "--state-dir",
            "--name-template",
            "--host-name",
            "--require-label",
            "--label-selector",
            "--report-unverified",
            "--docker-config",
        ];
        let queue = ["--report-stops", "--concurrency", "--queue-max-entries"];
        let agent = ["--shutdown-timeout", "--resync-interval", "--listen"];
        let set = |groups: &[&[&str]], extra: &[&str]| -> Vec<String> {
            let mut all: Vec<String> = groups
                .iter()
                .flat_map(|g| g.iter())
                .chain(extra)
                .map(|s| s.to_string())
                .collect();
            all.sort();
            all
        };
        let sorted = |mut v: Vec<String>| {
            v.sort();
            v
        };
        assert_eq!(
            sorted(own("report")),
            set(
                &[&endpoint, &retry],
                &["--image", "--name", "--platform", "--timeout"]
            )
        );
        assert_eq!(sorted(own("check")), set(&[&endpoint, &engine], &[]));
        let sync = sorted(own("sync"));
        assert!(
            agent.iter().all(|f| !sync.contains(&f.to_string())),
            "{sync:?}"
        );
        assert!(
            set(
                &[&endpoint, &retry, &engine, &queue],
                &["--once", "--force", "--timeout"]
            )
            .iter()
            .all(|f| sync.contains(f)),
            "{sync:?}"
        );
        assert_eq!(
            sorted(own("run")),
            set(&[&endpoint, &retry, &engine, &queue, &agent], &[])
        );
    }

    #[test]
    fn yes_or_no_flags_take_the_words_every_source_takes() {
        for (word, want) in [
            ("1", true),
            ("yes", true),
            ("YES", true),
            ("true", true),
            ("0", false),
            ("no", false),
            ("False", false),
        ] {
            let cli = parse(&["run", "--dry-run", word, "--report-stops", word]).unwrap();
            let settings = cli.settings().unwrap();
            assert_eq!(settings.dry_run, Some(want), "{word}");
            assert_eq!(settings.report_stops, Some(want), "{word}");
        }
        let cli = parse(&["run", "--require-label"]).unwrap();
        assert_eq!(cli.settings().unwrap().require_label, Some(true));
        let e = parse(&["run", "--dry-run", "maybe"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidValue);
        assert_eq!(
            e.get(ContextKind::ValidValue),
            Some(&ContextValue::Strings(
                ["true", "false", "1", "0", "yes", "no"]
                    .map(String::from)
                    .to_vec()
            ))
        );
    }
}
