//! Flags, environment, config file and defaults merged into one validated `Config`.
//! Precedence: flag > environment > file > default. Clap already folds the environment
//! into the flags, so here a value is `cli.or(file).unwrap_or(default)`.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::cli::RunArgs;
use crate::deployment::{LabelSelector, NameTemplate};

pub const DEFAULT_ENVIRONMENT: &str = "deployed";
pub const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";
const DEFAULT_STATE_DIR: &str = "/var/lib/deploytrack";

/// A setting the user got wrong; the process exits 64 (EX_USAGE) with this sentence.
#[derive(Debug, thiserror::Error)]
#[error("invalid {setting}: {reason}")]
pub struct ConfigError {
    pub setting: &'static str,
    pub reason: String,
}

impl ConfigError {
    pub fn new(setting: &'static str, reason: impl Into<String>) -> Self {
        Self {
            setting,
            reason: reason.into(),
        }
    }
}

/// The config file: the long flag names in snake_case. A typo is an error, not a silent default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub url: Option<String>,
    pub token_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub environment: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub docker_host: Option<String>,
    pub dry_run: Option<bool>,
    pub name_template: Option<String>,
    pub host_name: Option<String>,
    pub require_label: Option<bool>,
    pub label_selector: Option<Vec<String>>,
    pub report_stops: Option<bool>,
    pub concurrency: Option<usize>,
    pub retry_initial: Option<String>,
    pub retry_max: Option<String>,
    pub queue_max_entries: Option<u64>,
    pub shutdown_timeout: Option<String>,
    pub request_timeout: Option<String>,
    pub resync_interval: Option<String>,
    pub listen: Option<String>,
    pub log_level: Option<String>,
    pub log_format: Option<String>,
}

impl FileConfig {
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new("--config", format!("cannot read {}: {e}", path.display()))
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The file's text, `origin` naming it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| {
            // toml's message spans several lines (it quotes the file); keep the first.
            let msg = e
                .message()
                .lines()
                .next()
                .unwrap_or("parse error")
                .to_string();
            let at = e
                .span()
                .map(|s| format!(" at line {}", text[..s.start].lines().count().max(1)))
                .unwrap_or_default();
            ConfigError::new("--config", format!("{origin}{at}: {msg}"))
        })
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

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub max: Duration,
}

/// Everything the agent and its commands need, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub url: Option<reqwest::Url>,
    pub token: Option<Token>,
    pub environment: String,
    /// `None` keeps the queue in memory (dry run without an explicit state dir).
    pub state_dir: Option<PathBuf>,
    pub docker_host: String,
    pub dry_run: bool,
    /// `None`: the built-in, Swarm-aware default (`deployment::default_name`).
    pub name_template: Option<NameTemplate>,
    /// Replaces the engine's host name in names.
    pub host_name: Option<String>,
    pub require_label: bool,
    pub label_selector: LabelSelector,
    pub report_stops: bool,
    pub concurrency: usize,
    pub retry: RetryPolicy,
    pub queue_max_entries: u64,
    pub shutdown_timeout: Duration,
    pub request_timeout: Duration,
    pub resync_interval: Duration,
    pub listen: Option<SocketAddr>,
    /// Certificates from `--ca-file`, trusted besides the system roots.
    pub ca_certificates: Vec<reqwest::Certificate>,
    /// Settings that work but deserve a look; logged once at start.
    pub warnings: Vec<String>,
}

/// The longest any duration setting may be: past it a value is a typo, not a choice (and
/// deadlines computed from it stay far from the clock's limits).
const DURATION_MAX: Duration = Duration::from_secs(24 * 3600);
/// The most pending reports a queue may be told to keep.
const QUEUE_MAX_ENTRIES_LIMIT: u64 = 100_000_000;

/// A duration setting, `default` when unset, at most `DURATION_MAX`.
pub fn duration(
    setting: &'static str,
    value: Option<String>,
    default: &str,
) -> Result<Duration, ConfigError> {
    let text = value.unwrap_or_else(|| default.to_string());
    let parsed = humantime::parse_duration(text.trim()).map_err(|e| {
        ConfigError::new(
            setting,
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

/// A setting whose error names where its value came from: the flag, its environment
/// variable or the config file's key.
struct Sourced {
    id: &'static str,
    flag: &'static str,
    env: &'static str,
    file_key: &'static str,
}

const NAME_TEMPLATE: Sourced = Sourced {
    id: "name_template",
    flag: "--name-template",
    env: "DEPLOYTRACK_NAME_TEMPLATE",
    file_key: "name_template in the config file",
};

const HOST_NAME: Sourced = Sourced {
    id: "host_name",
    flag: "--host-name",
    env: "DEPLOYTRACK_HOST_NAME",
    file_key: "host_name in the config file",
};

impl Sourced {
    /// The value (flag or environment over the file) and the name of its source.
    fn pick(
        &self,
        args: &RunArgs,
        from_args: Option<&String>,
        from_file: Option<&String>,
    ) -> Option<(String, &'static str)> {
        match (from_args, from_file) {
            (Some(v), _) if args.from_env.contains(self.id) => Some((v.clone(), self.env)),
            (Some(v), _) => Some((v.clone(), self.flag)),
            (None, Some(v)) => Some((v.clone(), self.file_key)),
            (None, None) => None,
        }
    }
}

/// `--host-name`: a name others cannot mistake for a path or a log line.
pub fn validate_host_name(name: &str) -> Result<(), String> {
    if name.trim().is_empty() {
        Err("the host name is empty".into())
    } else if name.chars().any(char::is_control) {
        Err(format!("{name:?} holds control characters"))
    } else if name.contains('/') {
        Err(format!(
            "{name:?} holds a /, which separates the host from the container in names"
        ))
    } else if name.trim() != name {
        Err(format!("{name:?} begins or ends with a space"))
    } else {
        Ok(())
    }
}

fn positive<T: std::str::FromStr + PartialOrd + Default + fmt::Display>(
    setting: &'static str,
    value: Option<String>,
    default: T,
) -> Result<T, ConfigError> {
    let Some(text) = value else {
        return Ok(default);
    };
    match text.trim().parse::<T>() {
        Ok(n) if n > T::default() => Ok(n),
        _ => Err(ConfigError::new(
            setting,
            format!("{text:?} is not a positive whole number"),
        )),
    }
}

impl Config {
    /// Merge `args` (flags and environment) over `file`, then validate everything.
    pub fn build(args: &RunArgs, file: &FileConfig) -> Result<Self, ConfigError> {
        let url = match args.url.clone().or_else(|| file.url.clone()) {
            None => None,
            Some(text) => Some(parse_url(&text)?),
        };
        let explicit_dry_run = args.dry_run.or(file.dry_run).unwrap_or(false);
        let dry_run = explicit_dry_run || url.is_none();

        let environment = args
            .environment
            .clone()
            .or_else(|| file.environment.clone())
            .unwrap_or_else(|| DEFAULT_ENVIRONMENT.to_string());
        crate::deployment::validate_environment(&environment)
            .map_err(|reason| ConfigError::new("--environment", reason))?;

        let explicit_state_dir = args
            .state_dir
            .clone()
            .or_else(|| file.state_dir.clone())
            .or_else(|| std::env::var_os("STATE_DIRECTORY").map(|s| first_path(&s)));
        let state_dir = match explicit_state_dir {
            Some(dir) if dir.as_os_str().is_empty() => {
                return Err(ConfigError::new("--state-dir", "the path is empty"))
            }
            Some(dir) => Some(dir),
            None if dry_run => None,
            None => Some(PathBuf::from(DEFAULT_STATE_DIR)),
        };

        let docker_host = args
            .docker_host
            .clone()
            .or_else(|| file.docker_host.clone())
            .unwrap_or_else(|| DEFAULT_DOCKER_HOST.to_string());
        crate::engine::validate_host(&docker_host)
            .map_err(|r| ConfigError::new("--docker-host", r))?;

        let name_template = match NAME_TEMPLATE.pick(
            args,
            args.name_template.as_ref(),
            file.name_template.as_ref(),
        ) {
            None => None,
            Some((text, source)) => {
                Some(NameTemplate::parse(&text).map_err(|r| ConfigError::new(source, r))?)
            }
        };
        let host_name = match HOST_NAME.pick(args, args.host_name.as_ref(), file.host_name.as_ref())
        {
            None => None,
            Some((name, source)) => {
                validate_host_name(&name).map_err(|r| ConfigError::new(source, r))?;
                Some(name)
            }
        };

        let selectors = if args.label_selector.is_empty() {
            file.label_selector.clone().unwrap_or_default()
        } else {
            args.label_selector.clone()
        };
        let label_selector = LabelSelector::parse(&selectors)
            .map_err(|r| ConfigError::new("--label-selector", r))?;

        let concurrency = positive(
            "--concurrency",
            args.concurrency
                .clone()
                .or(file.concurrency.map(|n| n.to_string())),
            4usize,
        )?;
        if concurrency > 256 {
            return Err(ConfigError::new(
                "--concurrency",
                format!("{concurrency} is more than 256"),
            ));
        }
        let retry = RetryPolicy {
            initial: duration(
                "--retry-initial",
                args.retry_initial.clone().or(file.retry_initial.clone()),
                "1s",
            )?,
            max: duration(
                "--retry-max",
                args.retry_max.clone().or(file.retry_max.clone()),
                "5m",
            )?,
        };
        if retry.initial.is_zero() {
            return Err(ConfigError::new(
                "--retry-initial",
                "must be longer than zero",
            ));
        }
        if retry.max < retry.initial {
            return Err(ConfigError::new(
                "--retry-max",
                "must not be shorter than --retry-initial",
            ));
        }
        let queue_max_entries = positive(
            "--queue-max-entries",
            args.queue_max_entries
                .clone()
                .or(file.queue_max_entries.map(|n| n.to_string())),
            100_000u64,
        )?;
        if queue_max_entries > QUEUE_MAX_ENTRIES_LIMIT {
            return Err(ConfigError::new(
                "--queue-max-entries",
                format!("{queue_max_entries} is more than {QUEUE_MAX_ENTRIES_LIMIT}"),
            ));
        }
        let shutdown_timeout = duration(
            "--shutdown-timeout",
            args.shutdown_timeout
                .clone()
                .or(file.shutdown_timeout.clone()),
            "10s",
        )?;
        let request_timeout = duration(
            "--request-timeout",
            args.request_timeout
                .clone()
                .or(file.request_timeout.clone()),
            "15s",
        )?;
        if request_timeout.is_zero() {
            return Err(ConfigError::new(
                "--request-timeout",
                "must be longer than zero",
            ));
        }
        let resync_interval = duration(
            "--resync-interval",
            args.resync_interval
                .clone()
                .or(file.resync_interval.clone()),
            "10m",
        )?;
        if resync_interval < Duration::from_secs(1) {
            return Err(ConfigError::new(
                "--resync-interval",
                "must be 1s or longer",
            ));
        }
        let listen = match args.listen.clone().or(file.listen.clone()) {
            None => None,
            Some(text) => Some(text.trim().parse::<SocketAddr>().map_err(|_| {
                ConfigError::new(
                    "--listen",
                    format!("{text:?} is not an address like 127.0.0.1:9464"),
                )
            })?),
        };

        let mut warnings = Vec::new();
        if let Some(url) = &url {
            if url.scheme() == "http" && !is_loopback(url) {
                warnings.push(format!(
                    "the endpoint {} is plain http:// to a host that is not loopback: the token and the reports cross the network unencrypted",
                    redact_url(url.as_str())
                ));
            }
        }
        let ca_certificates = match args.ca_file.clone().or_else(|| file.ca_file.clone()) {
            None => Vec::new(),
            Some(path) => load_ca_file(&path)?,
        };

        let token_file = args.token_file.clone().or_else(|| file.token_file.clone());
        if let Some(path) = &token_file {
            if let Some(warning) = token_file_warning(path) {
                warnings.push(warning);
            }
        }
        let token = load_token(token_file.as_deref())?;
        if !dry_run && token.is_none() {
            return Err(ConfigError::new(
                "token",
                "no API token: give --token-file, set DEPLOYTRACK_TOKEN, or load the systemd credential `token`",
            ));
        }

        Ok(Config {
            url,
            token,
            environment,
            state_dir,
            docker_host,
            dry_run,
            name_template,
            host_name,
            require_label: args.require_label.or(file.require_label).unwrap_or(false),
            label_selector,
            report_stops: args.report_stops.or(file.report_stops).unwrap_or(false),
            concurrency,
            retry,
            queue_max_entries,
            shutdown_timeout,
            request_timeout,
            resync_interval,
            listen,
            ca_certificates,
            warnings,
        })
    }
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
fn load_ca_file(path: &Path) -> Result<Vec<reqwest::Certificate>, ConfigError> {
    let pem = std::fs::read(path).map_err(|e| {
        ConfigError::new("--ca-file", format!("cannot read {}: {e}", path.display()))
    })?;
    let certificates = reqwest::Certificate::from_pem_bundle(&pem).map_err(|_| {
        ConfigError::new(
            "--ca-file",
            format!("{} is not a PEM certificate file", path.display()),
        )
    })?;
    if certificates.is_empty() {
        return Err(ConfigError::new(
            "--ca-file",
            format!("{} holds no PEM certificate", path.display()),
        ));
    }
    Ok(certificates)
}

/// A token file other users can read is a leaked token waiting to happen.
fn token_file_warning(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o004 != 0).then(|| {
        format!(
            "the token file {} is readable by every user (mode {:o}); chmod 600 it",
            path.display(),
            mode & 0o7777
        )
    })
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
        ConfigError::new(
            "--url",
            format!("{:?} is not a URL ({e})", redact_url(text)),
        )
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

/// The token from `--token-file`, else `DEPLOYTRACK_TOKEN`, else `$CREDENTIALS_DIRECTORY/token`.
fn load_token(file: Option<&Path>) -> Result<Option<Token>, ConfigError> {
    let (source, text) = if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(
                "--token-file",
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        ("--token-file", text)
    } else if let Ok(text) = std::env::var("DEPLOYTRACK_TOKEN") {
        ("DEPLOYTRACK_TOKEN", text)
    } else if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
        let path = Path::new(&dir).join("token");
        match std::fs::read_to_string(&path) {
            Ok(text) => ("systemd credential token", text),
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
    let token = text.trim();
    if token.is_empty() {
        return Err(ConfigError::new(
            source_setting(source),
            format!("the token from {source} is empty"),
        ));
    }
    if token.chars().any(|c| c.is_control() || !c.is_ascii()) {
        return Err(ConfigError::new(
            source_setting(source),
            format!("the token from {source} holds characters an HTTP header cannot carry"),
        ));
    }
    Ok(Some(Token(token.to_string())))
}

fn source_setting(source: &'static str) -> &'static str {
    if source == "--token-file" {
        "--token-file"
    } else {
        "token"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> RunArgs {
        RunArgs::default()
    }

    #[test]
    fn defaults_without_url_are_a_dry_run_in_memory() {
        let config = Config::build(&args(), &FileConfig::default()).unwrap();
        assert!(config.dry_run);
        assert_eq!(config.environment, "deployed");
        assert_eq!(config.concurrency, 4);
        assert_eq!(config.retry.max, Duration::from_secs(300));
        assert_eq!(config.queue_max_entries, 100_000);
    }

    #[test]
    fn flag_beats_file() {
        let file: FileConfig =
            toml::from_str("environment = \"staging\"\nconcurrency = 2").unwrap();
        let mut a = args();
        a.environment = Some("production".into());
        let config = Config::build(&a, &file).unwrap();
        assert_eq!(config.environment, "production");
        assert_eq!(config.concurrency, 2);
    }

    #[test]
    fn unknown_file_key_is_an_error() {
        let err = toml::from_str::<FileConfig>("environmnet = \"x\"").unwrap_err();
        assert!(err.message().contains("unknown field"), "{}", err.message());
    }

    #[test]
    fn bad_values_name_the_setting() {
        type Case = (fn(&mut RunArgs), &'static str);
        let cases: Vec<Case> = vec![
            (|a| a.url = Some("not a url".into()), "--url"),
            (|a| a.url = Some("ftp://x/y".into()), "--url"),
            (|a| a.environment = Some(" ".into()), "--environment"),
            (|a| a.retry_max = Some("soon".into()), "--retry-max"),
            (
                |a| a.name_template = Some("{host}/{nope}".into()),
                "--name-template",
            ),
            (|a| a.concurrency = Some("0".into()), "--concurrency"),
            (|a| a.listen = Some("everywhere".into()), "--listen"),
            (|a| a.label_selector = vec!["=x".into()], "--label-selector"),
            (
                |a| a.docker_host = Some("ftp://engine".into()),
                "--docker-host",
            ),
        ];
        for (set, setting) in cases {
            let mut a = args();
            set(&mut a);
            let err = Config::build(&a, &FileConfig::default()).unwrap_err();
            assert_eq!(err.setting, setting, "{err}");
        }
    }

    #[test]
    fn templates_and_host_names_name_their_source() {
        let file: FileConfig =
            toml::from_str("name_template = \"{pod}\"\nhost_name = \"a/b\"").unwrap();
        let err = Config::build(&args(), &file).unwrap_err();
        assert_eq!(err.setting, "name_template in the config file", "{err}");
        let mut a = args();
        a.name_template = Some("{host}/{label:app|container}".into());
        let err = Config::build(&a, &file).unwrap_err();
        assert_eq!(err.setting, "host_name in the config file", "{err}");
        a.host_name = Some("edge\n7".into());
        a.from_env.insert("host_name");
        let err = Config::build(&a, &file).unwrap_err();
        assert_eq!(err.setting, "DEPLOYTRACK_HOST_NAME", "{err}");
        a.from_env.clear();
        a.name_template = Some("{host|}".into());
        let err = Config::build(&a, &file).unwrap_err();
        assert_eq!(err.setting, "--name-template", "{err}");
        a.from_env.insert("name_template");
        let err = Config::build(&a, &file).unwrap_err();
        assert_eq!(err.setting, "DEPLOYTRACK_NAME_TEMPLATE", "{err}");
    }

    #[test]
    fn host_name_and_template_precedence() {
        let none = Config::build(&args(), &FileConfig::default()).unwrap();
        assert_eq!((none.host_name, none.name_template), (None, None));
        let file: FileConfig =
            toml::from_str("name_template = \"{id}\"\nhost_name = \"edge-7\"").unwrap();
        let config = Config::build(&args(), &file).unwrap();
        assert_eq!(config.host_name.as_deref(), Some("edge-7"));
        assert_eq!(config.name_template, NameTemplate::parse("{id}").ok());
        let mut a = args();
        a.host_name = Some("edge-8".into());
        assert_eq!(
            Config::build(&a, &file).unwrap().host_name.as_deref(),
            Some("edge-8")
        );
        for bad in ["", "  ", "a/b", "tab\there", " edge"] {
            assert!(validate_host_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_host_name("edge-7.example").is_ok());
    }

    #[test]
    fn redacts_userinfo() {
        assert_eq!(
            redact_url("https://u:p@host/x"),
            "https://<redacted>@host/x"
        );
        assert_eq!(redact_url("https://host/x@y"), "https://host/x@y");
    }

    #[test]
    fn token_debug_is_redacted() {
        assert_eq!(format!("{:?}", Token("s3cret".into())), "Token(<redacted>)");
    }
}
