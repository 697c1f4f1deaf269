//! Flags, environment, config file and defaults merged into one validated `Config`.
//! Precedence: flag > environment > file > default. Clap already folds the environment
//! into the flags, so here a value is `cli.or(file).unwrap_or(default)`.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

mod file;

pub use file::FileConfig;

use crate::backoff::Backoff;
use crate::cli::RunArgs;
use crate::deployment::{
    EnvironmentError, LabelSelector, NameTemplate, PlatformError, SelectorError, TemplateError,
};
use crate::engine::credentials::{Credentials, CredentialsError};
use crate::reference::ReferenceError;

pub const DEFAULT_ENVIRONMENT: &str = "deployed";
pub const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";
const DEFAULT_STATE_DIR: &str = "/var/lib/deploytrack";

/// A setting the user got wrong; the process exits 64 (EX_USAGE) with this sentence.
#[derive(Debug, thiserror::Error)]
#[error("invalid {setting}: {reason}")]
pub struct ConfigError {
    /// Where the value came from: a flag, an environment variable, or `<file>: key <name>`.
    pub setting: String,
    pub reason: Reason,
}

/// What is wrong with a setting: the rule of a value that has one of its own, else the
/// sentence of the check that refused it (a range, a file that cannot be read, a missing
/// companion setting).
#[derive(Debug, thiserror::Error)]
pub enum Reason {
    #[error("{0}")]
    Said(String),
    #[error(transparent)]
    DockerHost(#[from] DockerHostError),
    #[error(transparent)]
    HostName(#[from] HostNameError),
    #[error(transparent)]
    Environment(#[from] EnvironmentError),
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error(transparent)]
    Selector(#[from] SelectorError),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Image(#[from] ReferenceError),
    #[error(transparent)]
    Platform(#[from] PlatformError),
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
}

impl From<String> for Reason {
    fn from(sentence: String) -> Self {
        Reason::Said(sentence)
    }
}

impl From<&str> for Reason {
    fn from(sentence: &str) -> Self {
        Reason::Said(sentence.to_string())
    }
}

impl ConfigError {
    /// The same error, naming `setting` as its source instead.
    pub fn from(self, setting: impl Into<String>) -> Self {
        Self {
            setting: setting.into(),
            ..self
        }
    }

    pub fn new(setting: impl Into<String>, reason: impl Into<Reason>) -> Self {
        Self {
            setting: setting.into(),
            reason: reason.into(),
        }
    }
}

/// The API token. Never printed: `Debug` is redacted and there is no `Display`.
#[derive(Clone)]
pub struct Token(String);

impl Token {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Everything the agent and its commands need, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub url: Option<reqwest::Url>,
    pub token: Option<Token>,
    /// Where the token came from, for `check`: `--token-file /etc/x`, `DEPLOYTRACK_TOKEN`, ...
    pub token_source: Option<String>,
    /// Where the token is read again after the endpoint rejected it (a rotated token); none
    /// for `DEPLOYTRACK_TOKEN`, which a running process cannot see change.
    pub token_reload: Option<TokenFile>,
    /// The config file's path, when one was given.
    pub config_file: Option<String>,
    pub environment: String,
    /// The state dir configured (or the default one); a dry run does not use it, see
    /// `queue_dir`.
    pub state_dir: Option<PathBuf>,
    pub docker_host: String,
    /// Where `docker_host` came from: a flag, `DOCKER_HOST`, the file, or the default.
    pub docker_host_source: String,
    pub dry_run: bool,
    /// A dry run the user asked for (`--dry-run`), not one implied by a missing URL.
    pub explicit_dry_run: bool,
    /// `None`: the built-in, Swarm-aware default (`deployment::default_name`).
    pub name_template: Option<NameTemplate>,
    /// Replaces the engine's host name in names.
    pub host_name: Option<String>,
    pub require_label: bool,
    pub label_selector: LabelSelector,
    pub report_stops: bool,
    pub report_unverified: bool,
    /// Registry credentials from the Docker CLI's config, and where they came from.
    pub registry_credentials: Option<Arc<Credentials>>,
    pub concurrency: usize,
    /// Delivery's backoff (`--retry-initial`, `--retry-max`), jittered.
    pub retry: Backoff,
    pub queue_max_entries: u64,
    pub shutdown_timeout: Duration,
    pub request_timeout: Duration,
    pub resync_interval: Duration,
    pub listen: Option<SocketAddr>,
    /// Certificates from `--ca-file`, trusted besides the system roots.
    pub ca_certificates: Vec<reqwest::Certificate>,
    /// Settings that work but deserve a look; logged once at start, WARN lines of `check`.
    pub warnings: Vec<Warning>,
}

/// The longest any duration setting may be: past it a value is a typo, not a choice (and
/// deadlines computed from it stay far from the clock's limits).
const DURATION_MAX: Duration = Duration::from_secs(24 * 3600);
/// The most pending reports a queue may be told to keep.
const QUEUE_MAX_ENTRIES_LIMIT: u64 = 100_000_000;

/// A duration setting, `default` when unset, at most `DURATION_MAX`; `setting` names where
/// the value came from.
pub fn duration(
    setting: impl Into<String>,
    value: Option<String>,
    default: &str,
) -> Result<Duration, ConfigError> {
    let setting = setting.into();
    let text = value.unwrap_or_else(|| default.to_string());
    let parsed = humantime::parse_duration(text.trim()).map_err(|e| {
        ConfigError::new(
            setting.clone(),
            format!("{text:?} is not a duration like 500ms, 10s or 5m ({e})"),
        )
    })?;
    if parsed > DURATION_MAX {
        return Err(ConfigError::new(
            setting,
            format!("{text:?} is longer than 24h"),
        ));
    }
    Ok(parsed)
}

/// A Docker host that is not a URL in a scheme the engine client can speak.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{host:?} is not unix:///path, tcp://host:port, http://host:port or https://host:port")]
pub struct DockerHostError {
    pub host: String,
}

/// A Docker host URL in a scheme the engine client can speak.
pub fn validate_host(host: &str) -> Result<(), DockerHostError> {
    let ok = ["unix://", "tcp://", "http://", "https://"]
        .iter()
        .any(|scheme| {
            host.strip_prefix(scheme)
                .is_some_and(|rest| !rest.is_empty())
        });
    if ok {
        Ok(())
    } else {
        Err(DockerHostError {
            host: host.to_string(),
        })
    }
}

/// Why a `--host-name` is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostNameError {
    #[error("the host name is empty")]
    Empty,
    #[error("{0:?} holds control characters")]
    ControlCharacters(String),
    #[error("{0:?} holds a /, which separates the host from the container in names")]
    Slash(String),
    #[error("{0:?} begins or ends with a space")]
    Spaces(String),
}

/// `--host-name`: a name others cannot mistake for a path or a log line.
pub fn validate_host_name(name: &str) -> Result<(), HostNameError> {
    if name.trim().is_empty() {
        Err(HostNameError::Empty)
    } else if name.chars().any(char::is_control) {
        Err(HostNameError::ControlCharacters(name.to_string()))
    } else if name.contains('/') {
        Err(HostNameError::Slash(name.to_string()))
    } else if name.trim() != name {
        Err(HostNameError::Spaces(name.to_string()))
    } else {
        Ok(())
    }
}

fn positive<T: std::str::FromStr + PartialOrd + Default + fmt::Display>(
    setting: &str,
    value: Option<String>,
    default: T,
) -> Result<T, ConfigError> {
    let Some(text) = value else {
        return Ok(default);
    };
    let trimmed = text.trim();
    match trimmed.parse::<T>() {
        Ok(n) if n > T::default() => Ok(n),
        _ if trimmed.strip_prefix('-').is_some_and(|digits| {
            !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
        }) =>
        {
            Err(ConfigError::new(
                setting,
                format!("{trimmed} is negative: give a whole number of 1 or more"),
            ))
        }
        _ => Err(ConfigError::new(
            setting,
            format!("{text:?} is not a positive whole number"),
        )),
    }
}

impl Config {
    /// Where the queue lives: the state dir, or memory for a dry run. A dry run never
    /// touches the state dir, so it cannot change what a later real run sends.
    pub fn queue_dir(&self) -> Option<&Path> {
        if self.dry_run {
            None
        } else {
            self.state_dir.as_deref()
        }
    }

    /// Merge `args` (flags and environment) over `file`, then validate everything. Errors
    /// name where the bad value came from: the flag, the environment variable, or the file.
    /// Settings are checked in the order of the table in the README, so the first bad one is
    /// the one named.
    pub fn build(args: &RunArgs, file: &FileConfig) -> Result<Self, ConfigError> {
        let (config, mut invalid) = Self::build_each(args, file);
        if invalid.is_empty() {
            Ok(config)
        } else {
            Err(invalid.remove(0).error)
        }
    }

    /// Every setting validated on its own, for `check`, which names every bad one and still
    /// checks the engine and the endpoint: the config with each invalid setting at its
    /// default, and the errors, by the key of the setting, in the README's order.
    pub fn build_each(args: &RunArgs, file: &FileConfig) -> (Self, Vec<Invalid>) {
        let s = Sources { args, file };
        let mut invalid = Vec::new();
        let url = keep(&mut invalid, "url", s.url()).flatten();
        let (dry_run, explicit_dry_run) = s.dry_run(url.is_some());
        let environment = keep(&mut invalid, "environment", s.environment())
            .unwrap_or_else(|| DEFAULT_ENVIRONMENT.to_string());
        let state_dir = keep(&mut invalid, "state_dir", s.state_dir(dry_run)).flatten();
        let (docker_host, docker_host_source) = keep(&mut invalid, "docker_host", s.docker_host())
            .unwrap_or_else(|| (DEFAULT_DOCKER_HOST.into(), "the default".into()));
        let name_template = keep(&mut invalid, "name_template", s.name_template()).flatten();
        let host_name = keep(&mut invalid, "host_name", s.host_name()).flatten();
        let label_selector =
            keep(&mut invalid, "label_selector", s.label_selector()).unwrap_or_default();
        let concurrency =
            keep(&mut invalid, "concurrency", s.concurrency()).unwrap_or(DEFAULT_CONCURRENCY);
        let retry = keep(&mut invalid, "retry", s.retry()).unwrap_or(DEFAULT_RETRY);
        let queue_max_entries = keep(&mut invalid, "queue_max_entries", s.queue_max_entries())
            .unwrap_or(DEFAULT_QUEUE_MAX);
        let (shutdown_timeout, request_timeout, resync_interval) =
            keep(&mut invalid, "timeouts", s.timeouts()).unwrap_or(DEFAULT_TIMEOUTS);
        let listen = keep(&mut invalid, "listen", s.listen()).flatten();
        let mut warnings: Vec<Warning> = url
            .as_ref()
            .and_then(plain_http_warning)
            .into_iter()
            .collect();
        let ca_certificates =
            keep(&mut invalid, "ca_file", s.ca_certificates()).unwrap_or_default();
        let registry_credentials = if args.skips_registries {
            None
        } else {
            keep(&mut invalid, "docker_config", s.registry_credentials()).flatten()
        };
        let (token, token_source) = s.checked_token(
            &mut invalid,
            &mut warnings,
            &docker_host,
            dry_run,
            url.as_ref(),
        );
        let config = Config {
            url,
            token,
            token_reload: s.token_reload(token_source.as_deref()),
            token_source,
            config_file: file.origin.clone(),
            environment,
            state_dir,
            docker_host,
            docker_host_source,
            dry_run,
            explicit_dry_run,
            name_template,
            host_name,
            require_label: args.require_label.or(file.require_label).unwrap_or(false),
            label_selector,
            report_stops: args.report_stops.or(file.report_stops).unwrap_or(false),
            report_unverified: args
                .report_unverified
                .or(file.report_unverified)
                .unwrap_or(false),
            registry_credentials,
            concurrency,
            retry,
            queue_max_entries,
            shutdown_timeout,
            request_timeout,
            resync_interval,
            listen,
            ca_certificates,
            warnings,
        };
        // The README's order: the URL's conflict with the token is the URL's error.
        let order = |key: &str| SETTING_ORDER.iter().position(|k| *k == key);
        invalid.sort_by_key(|i| order(i.key));
        (config, invalid)
    }
}

/// A setting `Config::build_each` found invalid: its key and the error.
#[derive(Debug)]
pub struct Invalid {
    /// `url`, `token`, `environment`, `state_dir`, `docker_host`, ... (`retry` and `timeouts`
    /// stand for their group of settings).
    pub key: &'static str,
    pub error: ConfigError,
}

/// The settings in the order of the README's table, which is the order errors come in.
const SETTING_ORDER: &[&str] = &[
    "url",
    "token",
    "environment",
    "state_dir",
    "docker_host",
    "name_template",
    "host_name",
    "label_selector",
    "docker_config",
    "concurrency",
    "retry",
    "queue_max_entries",
    "timeouts",
    "ca_file",
    "listen",
];

/// The value, or the error recorded under `key`.
fn keep<T>(
    invalid: &mut Vec<Invalid>,
    key: &'static str,
    result: Result<T, ConfigError>,
) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(error) => {
            invalid.push(Invalid { key, error });
            None
        }
    }
}

/// A setting that works but deserves a look: logged at start, a WARN line of `check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// What `check` files it under: `endpoint`, `token`.
    pub about: &'static str,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

const DEFAULT_CONCURRENCY: usize = 4;
const DEFAULT_QUEUE_MAX: u64 = 100_000;
const DEFAULT_RETRY: Backoff = Backoff::jittered(Duration::from_secs(1), Duration::from_secs(300));
/// Shutdown, request, resync.
const DEFAULT_TIMEOUTS: (Duration, Duration, Duration) = (
    Duration::from_secs(10),
    Duration::from_secs(15),
    Duration::from_secs(600),
);

/// `pick` for a setting whose flag field and file key share a name.
macro_rules! pick {
    ($sources:expr, $flag:literal, $field:ident) => {
        $sources.pick(
            $flag,
            $sources.args.$field.clone(),
            $sources.file.$field.clone(),
        )
    };
}

/// Where settings come from, flag and environment over file; one method per setting, each
/// merging and validating it.
struct Sources<'a> {
    args: &'a RunArgs,
    file: &'a FileConfig,
}

impl Sources<'_> {
    /// A setting's value, with where it came from: the flag, its environment variable, or the
    /// config file's key (flag and environment beat the file).
    fn pick<T>(
        &self,
        flag: &'static str,
        from_args: Option<T>,
        from_file: Option<T>,
    ) -> (Option<T>, String) {
        match (from_args, from_file) {
            (Some(v), _) => (
                Some(v),
                self.args.env_source(flag).unwrap_or(flag).to_string(),
            ),
            (None, Some(v)) => (
                Some(v),
                self.file
                    .key_source(&flag.trim_start_matches("--").replace('-', "_")),
            ),
            (None, None) => (None, flag.to_string()),
        }
    }

    fn url(&self) -> Result<Option<reqwest::Url>, ConfigError> {
        match pick!(self, "--url", url) {
            (None, _) => Ok(None),
            (Some(text), origin) => Ok(Some(parse_url(&text).map_err(|e| e.from(origin))?)),
        }
    }

    fn environment(&self) -> Result<String, ConfigError> {
        let (environment, origin) = pick!(self, "--environment", environment);
        let environment = environment.unwrap_or_else(|| DEFAULT_ENVIRONMENT.to_string());
        crate::deployment::validate_environment(&environment)
            .map_err(|reason| ConfigError::new(origin, reason))?;
        Ok(environment)
    }

    /// The flag, else `$STATE_DIRECTORY` (systemd's), else the default; none for a dry run
    /// that names none.
    fn state_dir(&self, dry_run: bool) -> Result<Option<PathBuf>, ConfigError> {
        let (state_dir, origin) = pick!(self, "--state-dir", state_dir);
        let explicit =
            state_dir.or_else(|| std::env::var_os("STATE_DIRECTORY").map(|s| first_path(&s)));
        match explicit {
            Some(dir) if dir.as_os_str().is_empty() => {
                Err(ConfigError::new(origin, "the path is empty"))
            }
            Some(dir) => Ok(Some(dir)),
            None if dry_run => Ok(None),
            None => Ok(Some(PathBuf::from(DEFAULT_STATE_DIR))),
        }
    }

    /// The host, and where it came from (for `check`).
    fn docker_host(&self) -> Result<(String, String), ConfigError> {
        let (host, source) = match pick!(self, "--docker-host", docker_host) {
            (Some(host), source) => (host, source),
            (None, _) => (DEFAULT_DOCKER_HOST.to_string(), "the default".to_string()),
        };
        validate_host(&host).map_err(|r| ConfigError::new(source.clone(), r))?;
        Ok((host, source))
    }

    /// Unset: the built-in, Swarm-aware default (`deployment::default_name`).
    fn name_template(&self) -> Result<Option<NameTemplate>, ConfigError> {
        match pick!(self, "--name-template", name_template) {
            (None, _) => Ok(None),
            (Some(text), origin) => Ok(Some(
                NameTemplate::parse(&text).map_err(|r| ConfigError::new(origin, r))?,
            )),
        }
    }

    fn host_name(&self) -> Result<Option<String>, ConfigError> {
        match pick!(self, "--host-name", host_name) {
            (None, _) => Ok(None),
            (Some(name), origin) => {
                validate_host_name(&name).map_err(|r| ConfigError::new(origin, r))?;
                Ok(Some(name))
            }
        }
    }

    fn label_selector(&self) -> Result<LabelSelector, ConfigError> {
        let (selectors, origin) = self.pick(
            "--label-selector",
            Some(self.args.label_selector.clone()).filter(|s| !s.is_empty()),
            self.file.label_selector.clone(),
        );
        LabelSelector::parse(&selectors.unwrap_or_default())
            .map_err(|r| ConfigError::new(origin, r))
    }

    fn concurrency(&self) -> Result<usize, ConfigError> {
        let (args, file) = (self.args.concurrency.clone(), self.file.concurrency);
        self.count("--concurrency", args, file, 4, 256)
    }

    /// Delivery's backoff: `--retry-initial` above zero, `--retry-max` not below it.
    fn retry(&self) -> Result<Backoff, ConfigError> {
        let (initial, initial_origin) = pick!(self, "--retry-initial", retry_initial);
        let (max, max_origin) = pick!(self, "--retry-max", retry_max);
        let retry = Backoff::jittered(
            duration(initial_origin.clone(), initial, "1s")?,
            duration(max_origin.clone(), max, "5m")?,
        );
        if retry.initial.is_zero() {
            return Err(ConfigError::new(initial_origin, "must be longer than zero"));
        }
        if retry.max < retry.initial {
            return Err(ConfigError::new(
                max_origin,
                format!("must not be shorter than {initial_origin}"),
            ));
        }
        Ok(retry)
    }

    fn queue_max_entries(&self) -> Result<u64, ConfigError> {
        let (args, file) = (
            self.args.queue_max_entries.clone(),
            self.file.queue_max_entries,
        );
        self.count(
            "--queue-max-entries",
            args,
            file,
            100_000,
            QUEUE_MAX_ENTRIES_LIMIT,
        )
    }

    /// A whole number from 1 to `max` (the file holds an integer), else `default`.
    fn count<T>(
        &self,
        flag: &'static str,
        from_args: Option<String>,
        from_file: Option<i64>,
        default: T,
        max: T,
    ) -> Result<T, ConfigError>
    where
        T: std::str::FromStr + PartialOrd + Default + fmt::Display,
    {
        let (value, origin) = self.pick(flag, from_args, from_file.map(|n| n.to_string()));
        let n = positive(&origin, value, default)?;
        if n > max {
            return Err(ConfigError::new(origin, format!("{n} is more than {max}")));
        }
        Ok(n)
    }

    /// Shutdown, request and resync: a request timeout above zero, a resync of 1s or more.
    fn timeouts(&self) -> Result<(Duration, Duration, Duration), ConfigError> {
        let (shutdown, origin) = pick!(self, "--shutdown-timeout", shutdown_timeout);
        let shutdown = duration(origin, shutdown, "10s")?;
        let (request, origin) = pick!(self, "--request-timeout", request_timeout);
        let request = duration(origin.clone(), request, "15s")?;
        if request.is_zero() {
            return Err(ConfigError::new(origin, "must be longer than zero"));
        }
        let (resync, origin) = pick!(self, "--resync-interval", resync_interval);
        let resync = duration(origin.clone(), resync, "10m")?;
        if resync < Duration::from_secs(1) {
            return Err(ConfigError::new(origin, "must be 1s or longer"));
        }
        Ok((shutdown, request, resync))
    }

    fn listen(&self) -> Result<Option<SocketAddr>, ConfigError> {
        let (listen, origin) = pick!(self, "--listen", listen);
        let Some(text) = listen else {
            return Ok(None);
        };
        let addr = text.trim().parse::<SocketAddr>().map_err(|_| {
            ConfigError::new(
                origin,
                format!("{text:?} is not an address like 127.0.0.1:9464"),
            )
        })?;
        Ok(Some(addr))
    }

    fn ca_certificates(&self) -> Result<Vec<reqwest::Certificate>, ConfigError> {
        match pick!(self, "--ca-file", ca_file) {
            (None, _) => Ok(Vec::new()),
            (Some(path), origin) => load_ca_file(&path, &origin),
        }
    }

    /// The Docker CLI's config: `--docker-config DIR` (or the file itself), else the systemd credential
    /// `docker-config` (a config.json), else `$DOCKER_CONFIG`, else `~/.docker`. A directory
    /// named explicitly must hold a readable config.json.
    fn registry_credentials(&self) -> Result<Option<Arc<Credentials>>, ConfigError> {
        let (dir, origin) = pick!(self, "--docker-config", docker_config);
        let loaded = match dir {
            // A directory as DOCKER_CONFIG is one, or the file itself (a secret, a credential).
            Some(dir) if dir.is_dir() => Credentials::load(&dir.join("config.json"), true),
            Some(file) => Credentials::load(&file, true),
            None => match std::env::var_os("CREDENTIALS_DIRECTORY")
                .map(|d| PathBuf::from(d).join("docker-config"))
                .filter(|p| p.exists())
            {
                Some(file) => Credentials::load(&file, true),
                // The implicit config belongs to whoever ran `docker login`: one this user
                // cannot read (a service user given root's HOME) is passed over.
                None => match Credentials::from_env(None) {
                    Err(e @ CredentialsError::Read { .. }) => {
                        tracing::debug!(error = %e, "registry credentials not used; --docker-config DIR names a config.json this user can read");
                        Ok(None)
                    }
                    other => other,
                },
            },
        };
        loaded
            .map(|c| c.map(Arc::new))
            .map_err(|e| ConfigError::new(origin, e))
    }

    /// The token and where it came from; a token file every user can read draws a warning.
    /// `docker_host` tells whether the agent runs in a container, for the fix of a file it
    /// cannot read.
    fn token(
        &self,
        warnings: &mut Vec<Warning>,
        docker_host: &str,
    ) -> Result<(Option<Token>, Option<String>), ConfigError> {
        let (token_file, origin) = pick!(self, "--token-file", token_file);
        if let Some(message) = token_file.as_deref().and_then(token_file_warning) {
            warnings.push(Warning {
                about: "token",
                message,
            });
        }
        let in_container = crate::engine::runs_in_container(docker_host);
        Ok(
            match load_token(token_file.as_deref(), &origin, in_container)? {
                Some((token, source)) => (Some(token), Some(source)),
                None => (None, None),
            },
        )
    }

    /// The file the token was read from (`source`), as `load_token` chose it: the token file,
    /// else none for `DEPLOYTRACK_TOKEN`, else the systemd credential.
    /// Whether this is a dry run, and whether it was asked for: without an endpoint it is
    /// one. An invalid URL is not a wish for a dry run: the token is still needed.
    fn dry_run(&self, valid_url: bool) -> (bool, bool) {
        let url_given = valid_url || self.args.url.is_some() || self.file.url.is_some();
        let explicit = self.args.dry_run.or(self.file.dry_run).unwrap_or(false);
        (explicit || !url_given, explicit)
    }

    /// The token and its source, where a token is needed (not a dry run) and there is one,
    /// and where the URL does not carry credentials of its own beside it; each fault is
    /// added to `invalid`.
    fn checked_token(
        &self,
        invalid: &mut Vec<Invalid>,
        warnings: &mut Vec<Warning>,
        docker_host: &str,
        dry_run: bool,
        url: Option<&reqwest::Url>,
    ) -> (Option<Token>, Option<String>) {
        let token = keep(invalid, "token", self.token(warnings, docker_host));
        let (token, token_source) = token.unwrap_or_default();
        if !dry_run && token.is_none() && !invalid.iter().any(|i| i.key == "token") {
            invalid.push(Invalid {
                key: "token",
                error: ConfigError::new(
                    "token",
                    "no API token: give --token-file, set DEPLOYTRACK_TOKEN, or load the systemd credential `token`",
                ),
            });
        }
        if let (Some(url), Some(source)) = (url, &token_source) {
            if let Err(error) = self.one_credential(url, source) {
                invalid.push(Invalid { key: "url", error });
            }
        }
        (token, token_source)
    }

    fn token_reload(&self, source: Option<&str>) -> Option<TokenFile> {
        let source = source?.to_string();
        let (token_file, _) = pick!(self, "--token-file", token_file);
        if let Some(path) = token_file {
            return Some(TokenFile {
                path,
                source,
                credential: false,
            });
        }
        if std::env::var_os("DEPLOYTRACK_TOKEN").is_some() {
            return None;
        }
        let dir = std::env::var_os("CREDENTIALS_DIRECTORY")?;
        Some(TokenFile {
            path: Path::new(&dir).join("token"),
            source,
            credential: true,
        })
    }

    /// One `Authorization` header: a URL with `user:password@` beside a token is refused,
    /// as the request would carry both (Basic and Bearer) and the API's credential is the
    /// token.
    fn one_credential(&self, url: &reqwest::Url, token_source: &str) -> Result<(), ConfigError> {
        if url.username().is_empty() && url.password().is_none() {
            return Ok(());
        }
        let (_, origin) = pick!(self, "--url", url);
        Err(ConfigError::new(
            origin,
            format!(
                "{} holds a user name and password (user:password@), and the token from {token_source} is set: a request would carry both in two Authorization headers; remove user:password@ from the URL (the endpoint's credential is the token)",
                redact_url(url.as_str())
            ),
        ))
    }
}

/// An endpoint reached over plain http:// beyond this host.
fn plain_http_warning(url: &reqwest::Url) -> Option<Warning> {
    (url.scheme() == "http" && !is_loopback(url)).then(|| Warning {
        about: "endpoint",
        message: format!(
            "the endpoint {} is plain http:// to a host that is not loopback: the token and the reports cross the network unencrypted",
            redact_url(url.as_str())
        ),
    })
}

fn is_loopback(url: &reqwest::Url) -> bool {
    let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host.ends_with(".localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `--ca-file`: one or more PEM certificates.
fn load_ca_file(path: &Path, setting: &str) -> Result<Vec<reqwest::Certificate>, ConfigError> {
    let pem = std::fs::read(path)
        .map_err(|e| ConfigError::new(setting, format!("cannot read {}: {e}", path.display())))?;
    let certificates = reqwest::Certificate::from_pem_bundle(&pem).map_err(|_| {
        ConfigError::new(
            setting,
            format!("{} is not a PEM certificate file", path.display()),
        )
    })?;
    if certificates.is_empty() {
        return Err(ConfigError::new(
            setting,
            format!("{} holds no PEM certificate", path.display()),
        ));
    }
    Ok(certificates)
}

/// A token file every user can read is a leaked token waiting to happen. Its group may
/// read it: 0440 with the group the agent runs in is how a Compose secret is given
/// (packaging/INSTALL.md), and 0600 for the agent's own user is as good.
pub fn token_file_warning(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o004 != 0).then(|| {
        format!(
            "the token file {} is readable by every user (mode {:o}): chmod o-r {} (0600 for the user the agent runs as, or 0440 with a group it runs in, as the Compose install does)",
            path.display(),
            mode & 0o7777,
            path.display(),
        )
    })
}

/// What to change when the agent, in a container, may not read its token file: the file's
/// group must be one the container's user has, which packaging/compose.yaml gives it with
/// `group_add: ["${DOCKER_GID}"]`.
fn token_fix_in_container(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(path)
        .map(|m| {
            format!(
                " (it is owned by {}:{} with mode {:o})",
                m.uid(),
                m.gid(),
                m.mode() & 0o7777
            )
        })
        .unwrap_or_default();
    format!(
        "{owner}; the agent runs in a container, whose user must be able to read the file: give it mode 0440 and the Docker socket's group (install -m 0440 -g \"$DOCKER_GID\" ...), and set DOCKER_GID to that group (stat -c %g /var/run/docker.sock) so that Compose adds it to the container with group_add (Swarm: user: \"65532:${{DOCKER_GID}}\")"
    )
}

/// The state dir alone, for `queue` commands (which need no token or endpoint).
pub fn state_dir(flag: Option<&Path>, file: &FileConfig) -> PathBuf {
    flag.map(Path::to_path_buf)
        .or_else(|| file.state_dir.clone())
        .or_else(|| std::env::var_os("STATE_DIRECTORY").map(|s| first_path(&s)))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR))
}

/// `$STATE_DIRECTORY` may list several directories separated by colons; the first is ours.
fn first_path(value: &std::ffi::OsStr) -> PathBuf {
    let text = value.to_string_lossy();
    PathBuf::from(text.split(':').next().unwrap_or_default())
}

pub fn parse_url(text: &str) -> Result<reqwest::Url, ConfigError> {
    let url = reqwest::Url::parse(text.trim()).map_err(|e| {
        let shown = redact_url(text);
        let hint = match e {
            // `example.com/hook`: the scheme is missing.
            _ if !text.contains("://") && !text.trim().is_empty() => {
                let example = if text.trim().contains(char::is_whitespace) {
                    String::new()
                } else {
                    format!(", as in https://{}", shown.trim())
                };
                format!(": it has no scheme; an endpoint's URL starts with https:// (or http://){example}")
            }
            _ => format!(" ({e})"),
        };
        ConfigError::new("--url", format!("{shown:?} is not a URL{hint}"))
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(ConfigError::new(
            "--url",
            format!("{:?} is not an http:// or https:// URL", redact_url(text)),
        ));
    }
    Ok(url)
}

/// A URL with any user:password part removed, for messages.
pub fn redact_url(text: &str) -> String {
    if let Some((scheme, rest)) = text.split_once("://") {
        let authority = rest.split('/').next().unwrap_or_default();
        if let Some((_, host)) = authority.rsplit_once('@') {
            return format!("{scheme}://<redacted>@{host}{}", &rest[authority.len()..]);
        }
    }
    text.to_string()
}

/// The token from `--token-file` (named by `setting`), else `DEPLOYTRACK_TOKEN`, else
/// `$CREDENTIALS_DIRECTORY/token`; with a description of where it came from. In a container
/// a token file the agent may not read names the fix of the Compose install.
fn load_token(
    file: Option<&Path>,
    setting: &str,
    in_container: bool,
) -> Result<Option<(Token, String)>, ConfigError> {
    let (source, text) = if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            let fix = match e.kind() {
                std::io::ErrorKind::PermissionDenied if in_container => {
                    token_fix_in_container(path)
                }
                _ => String::new(),
            };
            ConfigError::new(setting, format!("cannot read {}: {e}{fix}", path.display()))
        })?;
        (format!("{setting} {}", path.display()), text)
    } else if let Ok(text) = std::env::var("DEPLOYTRACK_TOKEN") {
        ("DEPLOYTRACK_TOKEN".to_string(), text)
    } else if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
        let path = Path::new(&dir).join("token");
        match std::fs::read_to_string(&path) {
            Ok(text) => (
                format!("the systemd credential token ({})", path.display()),
                text,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(ConfigError::new(
                    "token",
                    format!("cannot read the systemd credential {}: {e}", path.display()),
                ))
            }
        }
    } else {
        return Ok(None);
    };
    let setting = if file.is_some() { setting } else { "token" };
    let token = token_of(&text, &source).map_err(|reason| ConfigError::new(setting, reason))?;
    Ok(Some((token, source)))
}

/// Why a token is refused, named by where it came from (never by its value).
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the token from {from} is empty")]
    Empty { from: String },
    #[error("the token from {from} holds characters an HTTP header cannot carry")]
    NotHeaderSafe { from: String },
    /// The token's file, read again, cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A token file's text as the token: without the newline an editor leaves, not empty, and
/// fit for an HTTP header.
fn token_of(text: &str, source: &str) -> Result<Token, TokenError> {
    let token = text.trim();
    if token.is_empty() {
        return Err(TokenError::Empty {
            from: source.to_string(),
        });
    }
    if token.chars().any(|c| c.is_control() || !c.is_ascii()) {
        return Err(TokenError::NotHeaderSafe {
            from: source.to_string(),
        });
    }
    Ok(Token(token.to_string()))
}

/// The file a token came from, read again when the endpoint rejects the token, so that a
/// rotated token needs no restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenFile {
    pub path: PathBuf,
    /// As `Config::token_source` says it: `--token-file /etc/x`, `the systemd credential ...`.
    pub source: String,
    /// systemd's copy of a credential (`LoadCredential=`), made at start: a change to the
    /// file it copies reaches the agent only through a restart.
    pub credential: bool,
}

impl TokenFile {
    /// The token the file holds now, under the rules of the one read at start.
    pub fn read(&self) -> Result<Token, TokenError> {
        let text =
            std::fs::read_to_string(&self.path).map_err(|source| TokenError::Unreadable {
                path: self.path.clone(),
                source,
            })?;
        token_of(&text, &self.source)
    }
}

#[cfg(test)]
mod tests;
