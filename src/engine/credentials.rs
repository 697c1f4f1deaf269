//! Registry credentials, read where and how the Docker CLI keeps them. The engine's
//! `GET /distribution/{repo}@{digest}/json` asks the image's registry for the manifest, and
//! a private registry answers only to the `X-Registry-Auth` the client sends; reading the
//! CLI's `config.json` means that what `docker pull` can reach, the agent can, with no second
//! copy of a password to keep in sync.
//!
//! The CLI writes three forms: `auths` entries (`docker login` without a helper),
//! `credHelpers` (a helper program per registry) and `credsStore` (one helper for every
//! registry); a registry's own helper wins over `credsStore`, as in docker/cli's
//! `configfile.GetCredentialsStore`. A helper may unlock a keychain or call a cloud API, so
//! each run is bounded in time and its answer is reused for a while.
//!
//! Secrets never reach a log line, an error or a `Debug` output: the types holding them
//! print `<redacted>`, a helper's output is never logged (only its name and exit status),
//! and errors name the file and the place in it, never its contents.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fmt;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use serde_json::{json, Map, Value};
use tokio::io::AsyncWriteExt;

/// The request header the engine reads registry credentials from.
pub const HEADER: &str = "X-Registry-Auth";
/// Docker Hub as the CLI names it to helpers and to the engine (`registry.IndexServer`).
pub const HUB_SERVER: &str = "https://index.docker.io/v1/";
/// Docker Hub as a normalised reference names it, and as [`registry_key`] returns it.
const HUB: &str = "docker.io";
/// The other names of Docker Hub that config files use.
const HUB_ALIASES: [&str; 2] = ["index.docker.io", "registry-1.docker.io"];
/// What a helper prints when it holds nothing for the registry (docker-credential-helpers).
const NOT_FOUND: &str = "credentials not found in native keychain";
/// A helper's username that marks its secret as an identity token.
const TOKEN_USERNAME: &str = "<token>";
/// A helper that has not answered by then is killed: a lookup must not hang on a keychain
/// waiting for a password prompt nobody will see.
const HELPER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a helper's answer is reused: lookups do not run it each time, and a new
/// `docker login` is still seen without a restart.
const CACHE_FOR: Duration = Duration::from_secs(600);
/// A helper that failed or timed out is tried again sooner: its trouble may be passing.
const RETRY_FAILED_AFTER: Duration = Duration::from_secs(60);
/// Registries remembered at most; a host pulls from few, so this bound is rarely reached.
const CACHE_MAX: usize = 64;
/// `auth` fields as Go's `base64.StdEncoding` reads them, forgiving missing padding.
const AUTH_FIELD: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Each message is one line naming the file, never quoting what it holds.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path} is not valid JSON at line {line} column {column}")]
    Json {
        path: String,
        line: usize,
        column: usize,
    },
    #[error("{path}: {what}")]
    Shape { path: String, what: String },
    /// One bad entry: logged as a warning and skipped, so the other registries still work.
    #[error("{path}: {section}.\"{registry}\": {what}")]
    Entry {
        path: String,
        section: &'static str,
        registry: String,
        what: EntryError,
    },
}

/// What is wrong with one entry of a config.json (never its value).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("is not an object")]
    NotAnObject,
    #[error("{0} is not a string")]
    NotAString(&'static str),
    #[error("auth is not base64 of user:password")]
    BadAuth,
    #[error("has a password but no username")]
    NoUsername,
    #[error("does not name a credential helper")]
    NotAHelper,
}

/// A password or token. No `Display`, and `Debug` prints `<redacted>`, so that a type
/// deriving `Debug` over it cannot leak it.
#[derive(Clone, PartialEq, Eq)]
struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Clone, PartialEq, Eq)]
enum Login {
    Password { username: String, password: Secret },
    IdentityToken(Secret),
}

/// The credentials for one registry, ready to become an `X-Registry-Auth` header.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryAuth {
    server_address: String,
    login: Login,
}

impl RegistryAuth {
    /// The value of [`HEADER`]: base64url with padding (Go's `base64.URLEncoding`, which the
    /// engine decodes) of the JSON of moby's `registry.AuthConfig`.
    pub fn header(&self) -> String {
        let body = match &self.login {
            Login::Password { username, password } => json!({
                "username": username,
                "password": password.0,
                "serveraddress": self.server_address,
            }),
            Login::IdentityToken(token) => json!({
                "identitytoken": token.0,
                "serveraddress": self.server_address,
            }),
        };
        URL_SAFE.encode(body.to_string())
    }

    /// `https://index.docker.io/v1/` for Docker Hub, else the registry's host[:port].
    pub fn server_address(&self) -> &str {
        &self.server_address
    }

    /// The user and password for an `Authorization: Basic` header (a registry's own challenge
    /// or its token service); `None` for an identity token. Never logged.
    pub fn basic(&self) -> Option<(&str, &str)> {
        match &self.login {
            Login::Password { username, password } => Some((username, &password.0)),
            Login::IdentityToken(_) => None,
        }
    }

    /// `None` for an identity token.
    pub fn username(&self) -> Option<&str> {
        match &self.login {
            Login::Password { username, .. } => Some(username),
            Login::IdentityToken(_) => None,
        }
    }
}

impl fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("RegistryAuth");
        s.field("serveraddress", &self.server_address);
        match &self.login {
            Login::Password { username, .. } => s
                .field("username", username)
                .field("password", &format_args!("<redacted>")),
            Login::IdentityToken(_) => s.field("identitytoken", &format_args!("<redacted>")),
        };
        s.finish()
    }
}

/// What a helper said, as remembered between lookups.
#[derive(Clone)]
enum Answer {
    Found(RegistryAuth),
    NotFound,
    /// The program is not there: it will not appear soon, and a warning per minute is noise.
    Missing,
    /// It failed, timed out or answered nonsense.
    Failed,
}

impl Answer {
    fn keep_for(&self) -> Duration {
        match self {
            Answer::Found(_) | Answer::NotFound | Answer::Missing => CACHE_FOR,
            Answer::Failed => RETRY_FAILED_AFTER,
        }
    }
}

struct Cached {
    at: Instant,
    answer: Answer,
}

/// The credentials of one Docker CLI config file. Shared by the agent's tasks in an `Arc`.
pub struct Credentials {
    path: PathBuf,
    /// By [`registry_key`].
    auths: BTreeMap<String, Login>,
    /// `credHelpers`, by [`registry_key`]: helper names, without `docker-credential-`.
    helpers: BTreeMap<String, String>,
    /// `credsStore`.
    store: Option<String>,
    helper_dirs: Vec<PathBuf>,
    helper_timeout: Duration,
    cache: Mutex<HashMap<String, Cached>>,
    /// One helper run at a time, so that concurrent lookups wait for the first answer
    /// instead of each running the helper (or each raising a keychain prompt).
    asking: tokio::sync::Mutex<()>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("path", &self.path)
            .field("auths", &self.auths.keys().collect::<Vec<_>>())
            .field("credHelpers", &self.helpers)
            .field("credsStore", &self.store)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Where the Docker CLI reads its config: `explicit/config.json`, else
    /// `$DOCKER_CONFIG/config.json`, else `$HOME/.docker/config.json` (an empty
    /// `DOCKER_CONFIG` counts as unset, as in docker/cli's `config.Dir`).
    pub fn locate(
        explicit: Option<&Path>,
        docker_config_env: Option<&OsStr>,
        home: Option<&Path>,
    ) -> Option<PathBuf> {
        if let Some(dir) = explicit {
            return Some(dir.join("config.json"));
        }
        if let Some(dir) = docker_config_env.filter(|d| !d.is_empty()) {
            return Some(Path::new(dir).join("config.json"));
        }
        home.map(|h| h.join(".docker").join("config.json"))
    }

    /// [`Credentials::locate`] with the process environment, then [`Credentials::load`].
    pub fn from_env(explicit: Option<&Path>) -> Result<Option<Credentials>, CredentialsError> {
        let docker_config = std::env::var_os("DOCKER_CONFIG");
        let home = std::env::var_os("HOME").map(PathBuf::from);
        match Self::locate(explicit, docker_config.as_deref(), home.as_deref()) {
            Some(path) => Self::load(&path, explicit.is_some()),
            None => Ok(None),
        }
    }

    /// Read a config file. A file the user named (`explicit`) must be there; the implicit
    /// one may be absent (`Ok(None)`: no credentials), but one that is there and cannot be
    /// read is an error, as a silently ignored login would fail far from its cause.
    pub fn load(path: &Path, explicit: bool) -> Result<Option<Credentials>, CredentialsError> {
        let text = match std::fs::read(path) {
            Ok(text) => text,
            Err(e)
                if !explicit
                    && matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) =>
            {
                return Ok(None)
            }
            Err(e) => {
                return Err(CredentialsError::Read {
                    path: path.display().to_string(),
                    reason: io_reason(&e),
                })
            }
        };
        Self::parse(path, &text).map(Some)
    }

    fn parse(path: &Path, text: &[u8]) -> Result<Credentials, CredentialsError> {
        let shown = path.display().to_string();
        let shape = |what: &str| CredentialsError::Shape {
            path: shown.clone(),
            what: what.to_string(),
        };
        // An empty file is an empty config to docker/cli.
        let config = if text.trim_ascii().is_empty() {
            Map::new()
        } else {
            match serde_json::from_slice::<Value>(text) {
                Ok(Value::Object(config)) => config,
                Ok(_) => return Err(shape("the top level is not a JSON object")),
                Err(e) => {
                    return Err(CredentialsError::Json {
                        path: shown,
                        line: e.line(),
                        column: e.column(),
                    })
                }
            }
        };
        let section = |name: &str| match config.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(map)) => Ok(Some(map)),
            Some(_) => Err(shape(&format!("{name} is not an object"))),
        };
        let auths = section("auths")?.map(|m| parse_auths(&shown, m));
        let helpers = section("credHelpers")?.map(|m| parse_helpers(&shown, m));
        let store = match config.get("credsStore") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) if usable_helper_name(s) => Some(s.clone()),
            Some(_) => return Err(shape("credsStore does not name a credential helper")),
        };
        Ok(Credentials {
            path: path.to_path_buf(),
            auths: auths.unwrap_or_default(),
            helpers: helpers.unwrap_or_default(),
            store,
            helper_dirs: path_dirs(),
            helper_timeout: HELPER_TIMEOUT,
            cache: Mutex::new(HashMap::new()),
            asking: tokio::sync::Mutex::new(()),
        })
    }

    /// Where helper programs are looked for, instead of `PATH`.
    pub fn with_helper_dirs(mut self, dirs: Vec<PathBuf>) -> Self {
        self.helper_dirs = dirs;
        self
    }

    /// How long a helper may take, instead of 5 s.
    pub fn with_helper_timeout(mut self, timeout: Duration) -> Self {
        self.helper_timeout = timeout;
        self
    }

    /// The config file read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// [`Credentials::describe`] as one line, for the log and `check`: `registry (source)`,
    /// comma-separated, or `none in <path>`.
    pub fn summary(&self) -> String {
        let found: Vec<String> = self
            .describe()
            .into_iter()
            .map(|(registry, source)| format!("{registry} ({source})"))
            .collect();
        if found.is_empty() {
            format!("none in {}", self.path().display())
        } else {
            found.join(", ")
        }
    }

    /// For `check`: each registry with credentials and where they come from, without
    /// secrets; `*` stands for every registry (`credsStore`). Sorted by registry, `*` last,
    /// a registry's helper before the `auths` entry it overrides.
    pub fn describe(&self) -> Vec<(String, String)> {
        let mut rows: Vec<(String, String)> = self
            .helpers
            .iter()
            .map(|(key, helper)| {
                let source = format!("credential helper {}", program_name(helper));
                (key.clone(), source)
            })
            .collect();
        let file = format!("auths in {}", self.path.display());
        for key in self.auths.keys() {
            let source = match self.helper_for(key) {
                Some(helper) => format!("{file} (used only if {} fails)", program_name(helper)),
                None => file.clone(),
            };
            rows.push((key.clone(), source));
        }
        if let Some(store) = &self.store {
            rows.push(("*".into(), format!("credsStore {}", program_name(store))));
        }
        rows.sort_by(|a, b| (a.0 == "*", &a.0).cmp(&(b.0 == "*", &b.0)));
        rows
    }

    /// The credentials for a registry, as a normalised reference names it (`docker.io`,
    /// `ghcr.io`, `127.0.0.1:5002`); `None` for an anonymous lookup. A registry with a
    /// helper gets the helper's answer; when the helper fails (rather than saying it holds
    /// nothing), the file's entry is used, as docker/cli's `ResolveAuthConfig` does.
    pub async fn for_registry(&self, registry: &str) -> Option<RegistryAuth> {
        let key = registry_key(registry);
        if key.is_empty() {
            return None;
        }
        let from_file = || {
            self.auths.get(&key).map(|login| RegistryAuth {
                server_address: server_address(&key),
                login: login.clone(),
            })
        };
        let Some(helper) = self.helper_for(&key) else {
            return from_file();
        };
        match self.helper_answer(helper, &key).await {
            Answer::Found(auth) => Some(auth),
            Answer::NotFound => None,
            Answer::Missing | Answer::Failed => from_file(),
        }
    }

    /// The registry's own helper, else `credsStore`.
    fn helper_for(&self, key: &str) -> Option<&str> {
        self.helpers
            .get(key)
            .or(self.store.as_ref())
            .map(String::as_str)
    }

    async fn helper_answer(&self, helper: &str, key: &str) -> Answer {
        if let Some(answer) = self.cached(key) {
            return answer;
        }
        let _turn = self.asking.lock().await;
        // Another lookup may have asked while this one waited.
        if let Some(answer) = self.cached(key) {
            return answer;
        }
        let answer = self.ask_helper(helper, key).await;
        self.remember(key, answer.clone());
        answer
    }

    fn cached(&self, key: &str) -> Option<Answer> {
        let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        let hit = cache.get(key)?;
        (hit.at.elapsed() < hit.answer.keep_for()).then(|| hit.answer.clone())
    }

    fn remember(&self, key: &str, answer: Answer) {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= CACHE_MAX && !cache.contains_key(key) {
            cache.retain(|_, c| c.at.elapsed() < c.answer.keep_for());
            let oldest = cache
                .iter()
                .min_by_key(|(_, c)| c.at)
                .map(|(k, _)| k.clone());
            if let (true, Some(oldest)) = (cache.len() >= CACHE_MAX, oldest) {
                cache.remove(&oldest);
            }
        }
        let at = Instant::now();
        cache.insert(key.to_string(), Cached { at, answer });
    }

    /// Run `docker-credential-<helper> get` with the server address on its stdin. Only the
    /// helper's name, the registry and the exit status are ever logged.
    async fn ask_helper(&self, helper: &str, key: &str) -> Answer {
        let name = program_name(helper);
        let Some(program) = self.find_helper(&name) else {
            tracing::warn!(
                helper = %name,
                registry = key,
                "the credential helper is not on the PATH; the registry's entry in the Docker config, if any, is used"
            );
            return Answer::Missing;
        };
        let server = server_address(key);
        let run = run_helper(&program, &server);
        match tokio::time::timeout(self.helper_timeout, run).await {
            Ok(Ok(output)) => answer_of(&name, key, server, &output),
            Ok(Err(e)) => {
                let reason = io_reason(&e);
                tracing::warn!(helper = %program.display(), registry = key, "cannot run the credential helper: {reason}");
                Answer::Failed
            }
            Err(_) => {
                let bound = humantime::format_duration(self.helper_timeout);
                tracing::warn!(helper = %name, registry = key, "the credential helper did not answer within {bound}; killed");
                Answer::Failed
            }
        }
    }

    fn find_helper(&self, name: &str) -> Option<PathBuf> {
        self.helper_dirs
            .iter()
            .map(|dir| dir.join(name))
            .find(|program| is_executable(program))
    }
}

/// A registry's key as docker/cli's `ConvertToHostname` makes it: without scheme, user
/// and path, lower-cased; Docker Hub's names (`https://index.docker.io/v1/`,
/// `index.docker.io`, `registry-1.docker.io`) all become `docker.io`.
pub fn registry_key(text: &str) -> String {
    let text = text.trim();
    let rest = text.split_once("://").map_or(text, |(_, rest)| rest);
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = host
        .rsplit('@')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if HUB_ALIASES.contains(&host.as_str()) {
        HUB.to_string()
    } else {
        host
    }
}

/// The name the CLI gives a helper and sends the engine: Docker Hub's historical index
/// URL, else the registry's host[:port].
fn server_address(key: &str) -> String {
    if key == HUB {
        HUB_SERVER.to_string()
    } else {
        key.to_string()
    }
}

/// Keys naming one registry (`https://index.docker.io/v1/` and `docker.io`) collapse to
/// one: the key docker/cli looks up first (the exact server address) wins, else the first
/// in the file's (sorted) order.
fn collapse<'a, T>(entries: impl Iterator<Item = (&'a String, T)>) -> BTreeMap<String, T> {
    let mut out: BTreeMap<String, (T, bool)> = BTreeMap::new();
    for (raw, value) in entries {
        let key = registry_key(raw);
        if key.is_empty() {
            continue;
        }
        let exact = *raw == server_address(&key);
        match out.get(&key) {
            Some((_, true)) => continue,
            Some((_, false)) if !exact => continue,
            _ => out.insert(key, (value, exact)),
        };
    }
    out.into_iter().map(|(k, (v, _))| (k, v)).collect()
}

/// `auths`, skipping (with a warning naming the registry) each entry that cannot be read,
/// and silently the empty ones `docker login` leaves when a helper holds the secret.
fn parse_auths(path: &str, auths: &Map<String, Value>) -> BTreeMap<String, Login> {
    let logins = auths
        .iter()
        .filter_map(|(registry, entry)| match login_of(entry) {
            Ok(login) => login.map(|l| (registry, l)),
            Err(what) => {
                warn_skipped(path, "auths", registry, what);
                None
            }
        });
    collapse(logins)
}

fn parse_helpers(path: &str, helpers: &Map<String, Value>) -> BTreeMap<String, String> {
    let names = helpers.iter().filter_map(|(registry, helper)| {
        match helper.as_str().filter(|h| usable_helper_name(h)) {
            Some(helper) => Some((registry, helper.to_string())),
            None => {
                warn_skipped(path, "credHelpers", registry, EntryError::NotAHelper);
                None
            }
        }
    });
    collapse(names)
}

fn warn_skipped(path: &str, section: &'static str, registry: &str, what: EntryError) {
    let error = CredentialsError::Entry {
        path: path.to_string(),
        section,
        registry: registry.escape_debug().to_string(),
        what,
    };
    tracing::warn!("{error}; skipped");
}

/// One `auths` entry: `identitytoken`, else `auth` (base64 of `user:password`, which
/// docker/cli reads before `username`/`password`), else `username`/`password`. `Ok(None)`
/// for an entry without credentials. The error says what is wrong, never the value.
fn login_of(entry: &Value) -> Result<Option<Login>, EntryError> {
    let Value::Object(entry) = entry else {
        return Err(EntryError::NotAnObject);
    };
    let field = |name: &'static str| match entry.get(name) {
        None | Some(Value::Null) => Ok(""),
        Some(Value::String(s)) => Ok(s.as_str()),
        Some(_) => Err(EntryError::NotAString(name)),
    };
    let token = field("identitytoken")?;
    if !token.is_empty() {
        return Ok(Some(Login::IdentityToken(Secret(token.to_string()))));
    }
    let (username, password) = match field("auth")? {
        "" => (
            field("username")?.to_string(),
            field("password")?.to_string(),
        ),
        auth => decode_auth(auth).ok_or(EntryError::BadAuth)?,
    };
    match (username.is_empty(), password.is_empty()) {
        (true, true) => Ok(None),
        (true, false) => Err(EntryError::NoUsername),
        (false, _) => Ok(Some(Login::Password {
            username,
            password: Secret(password),
        })),
    }
}

/// docker/cli's `decodeAuth`: standard base64, a non-empty user before the first `:`.
fn decode_auth(auth: &str) -> Option<(String, String)> {
    let decoded = String::from_utf8(AUTH_FIELD.decode(auth.trim()).ok()?).ok()?;
    let (username, password) = decoded.split_once(':')?;
    if username.is_empty() {
        return None;
    }
    Some((
        username.to_string(),
        password.trim_matches('\0').to_string(),
    ))
}

/// A helper's `{"ServerURL", "Username", "Secret"}`; `Ok(None)` for an empty secret.
fn login_from_helper(stdout: &[u8]) -> Result<Option<Login>, ()> {
    let answer: Value = serde_json::from_slice(stdout).map_err(drop)?;
    let field = |name: &str| answer.get(name).and_then(Value::as_str).ok_or(());
    let (username, secret) = (field("Username")?, field("Secret")?);
    if secret.is_empty() {
        return Ok(None);
    }
    let secret = Secret(secret.to_string());
    Ok(Some(if username == TOKEN_USERNAME {
        Login::IdentityToken(secret)
    } else {
        Login::Password {
            username: username.to_string(),
            password: secret,
        }
    }))
}

/// What a helper's exit status and output mean. Its output is never logged: it may hold
/// the secret, even in an error message.
fn answer_of(name: &str, key: &str, server: String, output: &Output) -> Answer {
    if !output.status.success() {
        if says_not_found(&output.stdout) || says_not_found(&output.stderr) {
            tracing::debug!(helper = %name, registry = key, "the credential helper holds nothing for the registry");
            return Answer::NotFound;
        }
        tracing::warn!(
            helper = %name,
            registry = key,
            status = %output.status,
            "the credential helper failed (its output is not logged: it may hold a secret)"
        );
        return Answer::Failed;
    }
    match login_from_helper(&output.stdout) {
        Ok(Some(login)) => Answer::Found(RegistryAuth {
            server_address: server,
            login,
        }),
        Ok(None) => Answer::NotFound,
        Err(()) => {
            tracing::warn!(
                helper = %name,
                registry = key,
                "the credential helper answered something other than {{\"Username\", \"Secret\"}} JSON"
            );
            Answer::Failed
        }
    }
}

async fn run_helper(program: &Path, server: &str) -> std::io::Result<Output> {
    let mut child = spawn_helper(program).await?;
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits without reading is judged by its exit status, not by this.
        let _ = stdin.write_all(server.as_bytes()).await;
    }
    child.wait_with_output().await
}

/// Killed when dropped, which is what the timeout does. Retried briefly on ETXTBSY: a
/// helper being replaced (or just written) cannot be run for a moment.
async fn spawn_helper(program: &Path) -> std::io::Result<tokio::process::Child> {
    let mut busy = 0;
    loop {
        let spawned = tokio::process::Command::new(program)
            .arg("get")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn();
        match spawned {
            Err(e) if e.kind() == ErrorKind::ExecutableFileBusy && busy < 5 => busy += 1,
            other => return other,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn says_not_found(output: &[u8]) -> bool {
    String::from_utf8_lossy(output).trim() == NOT_FOUND
}

fn program_name(helper: &str) -> String {
    format!("docker-credential-{helper}")
}

/// A helper name becomes part of a file name: no path in it.
fn usable_helper_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(['/', '\\']) && !name.chars().any(char::is_control)
}

/// `PATH`'s absolute directories: like Go's `exec.LookPath` since 1.19, a helper is not run
/// from a directory relative to wherever the agent was started.
fn path_dirs() -> Vec<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .filter(|d| d.is_absolute())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(unix)]
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(path: &Path) -> bool {
    path.is_file()
}

/// An I/O error's kind in words; the OS error number adds nothing for the reader.
fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        ErrorKind::NotFound => "no such file".into(),
        ErrorKind::PermissionDenied => "permission denied".into(),
        ErrorKind::IsADirectory => "it is a directory".into(),
        ErrorKind::NotADirectory => "a part of the path is not a directory".into(),
        kind => kind.to_string(),
    }
}

#[cfg(test)]
mod tests;
