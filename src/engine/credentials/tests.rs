//! The registry credentials' tests: where the config is found, each kind of entry, the
//! helpers, and that no secret is shown.

use super::*;

use base64::engine::general_purpose::STANDARD;

/// A directory under the system's temp dir, removed at the end of the test.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> Self {
        let name = format!(
            "dt-credentials-{test}-{}-{:x}",
            std::process::id(),
            fastrand::u64(..)
        );
        let dir = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    /// Write `config.json` and load it, with helpers looked for in this directory only.
    fn config(&self, config: &str) -> Credentials {
        let path = self.0.join("config.json");
        std::fs::write(&path, config).unwrap();
        Credentials::load(&path, true)
            .unwrap()
            .unwrap()
            .with_helper_dirs(vec![self.0.clone()])
    }

    /// A `docker-credential-<name>` shell script.
    fn helper(&self, name: &str, body: &str) {
        use std::os::unix::fs::PermissionsExt;
        let path = self.0.join(program_name(name));
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn header_json(auth: &RegistryAuth) -> Value {
    let bytes = URL_SAFE.decode(auth.header()).unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// `{"auths": {registry: {"auth": base64(user:password)}}}`.
fn auths_config(registry: &str, user: &str, password: &str) -> String {
    let auth = STANDARD.encode(format!("{user}:{password}"));
    json!({ "auths": { registry: { "auth": auth } } }).to_string()
}

#[test]
fn registry_keys_as_docker_cli_converts_them() {
    for (text, key) in [
        ("https://index.docker.io/v1/", "docker.io"),
        ("index.docker.io", "docker.io"),
        ("docker.io", "docker.io"),
        ("registry-1.docker.io", "docker.io"),
        ("https://registry-1.docker.io/v2/", "docker.io"),
        ("https://myreg:5000/v1/", "myreg:5000"),
        ("http://myreg:5000", "myreg:5000"),
        ("http://myreg:5000/v2/", "myreg:5000"),
        ("myreg:5000", "myreg:5000"),
        ("myreg:5000/v1/", "myreg:5000"),
        ("GHCR.io", "ghcr.io"),
        ("https://user@ghcr.io/", "ghcr.io"),
        ("127.0.0.1:5002", "127.0.0.1:5002"),
        ("[::1]:5000", "[::1]:5000"),
    ] {
        assert_eq!(registry_key(text), key, "{text}");
    }
}

#[test]
fn the_config_is_where_the_docker_cli_looks() {
    let (dir, env, home) = (Path::new("/d"), OsStr::new("/e"), Path::new("/h"));
    let at = |p: &str| Some(PathBuf::from(p));
    assert_eq!(
        Credentials::locate(Some(dir), Some(env), Some(home)),
        at("/d/config.json")
    );
    assert_eq!(
        Credentials::locate(None, Some(env), Some(home)),
        at("/e/config.json")
    );
    assert_eq!(
        Credentials::locate(None, Some(OsStr::new("")), Some(home)),
        at("/h/.docker/config.json")
    );
    assert_eq!(
        Credentials::locate(None, None, Some(home)),
        at("/h/.docker/config.json")
    );
    assert_eq!(Credentials::locate(None, None, None), None);
}

#[test]
fn a_missing_explicit_config_is_an_error_and_an_implicit_one_is_none() {
    let dir = TempDir::new("missing");
    let path = dir.0.join("nothing").join("config.json");
    let err = Credentials::load(&path, true).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("cannot read {}: no such file", path.display())
    );
    assert!(Credentials::load(&path, false).unwrap().is_none());
    // A HOME whose .docker is a file.
    std::fs::write(dir.0.join("file"), "").unwrap();
    let under_file = dir.0.join("file").join("config.json");
    assert!(Credentials::load(&under_file, false).unwrap().is_none());
    // A directory where the file should be is there, and unreadable.
    std::fs::create_dir(dir.0.join("config.json")).unwrap();
    let err = Credentials::load(&dir.0.join("config.json"), false).unwrap_err();
    assert!(err.to_string().ends_with(": it is a directory"), "{err}");
}

#[test]
fn a_file_that_is_not_json_is_an_error_naming_the_place_not_the_contents() {
    let dir = TempDir::new("badjson");
    let path = dir.0.join("config.json");
    std::fs::write(
        &path,
        "{\n  \"auths\": {\n    \"ghcr.io\": hunter2\n  }\n}\n",
    )
    .unwrap();
    let err = Credentials::load(&path, false).unwrap_err().to_string();
    assert_eq!(
        err,
        format!("{} is not valid JSON at line 3 column 16", path.display())
    );
    std::fs::write(&path, r#"{"auths": ["hunter2"]}"#).unwrap();
    let err = Credentials::load(&path, false).unwrap_err().to_string();
    assert_eq!(err, format!("{}: auths is not an object", path.display()));
    std::fs::write(&path, r#"["hunter2"]"#).unwrap();
    let err = Credentials::load(&path, false).unwrap_err().to_string();
    assert!(
        !err.contains("hunter2") && err.contains("not a JSON object"),
        "{err}"
    );
    // An empty file is an empty config, as to docker/cli.
    std::fs::write(&path, "\n").unwrap();
    assert!(Credentials::load(&path, false)
        .unwrap()
        .unwrap()
        .describe()
        .is_empty());
}

#[tokio::test]
async fn auths_entry_with_auth_becomes_the_exact_header() {
    let dir = TempDir::new("auth");
    let creds = dir.config(&auths_config("127.0.0.1:5002", "ci", "s3cret:with:colons"));
    let auth = creds.for_registry("127.0.0.1:5002").await.unwrap();
    let expected = json!({
        "username": "ci",
        "password": "s3cret:with:colons",
        "serveraddress": "127.0.0.1:5002",
    });
    assert_eq!(header_json(&auth), expected);
    // Go's URLEncoding: the URL-safe alphabet, padded.
    assert_eq!(auth.header(), URL_SAFE.encode(expected.to_string()));
    assert!(creds.for_registry("ghcr.io").await.is_none());
}

#[tokio::test]
async fn auths_entry_with_username_and_password() {
    let dir = TempDir::new("userpass");
    let creds = dir.config(r#"{"auths": {"ghcr.io": {"username": "me", "password": "pw"}}}"#);
    let auth = creds.for_registry("ghcr.io").await.unwrap();
    let expected = json!({"username": "me", "password": "pw", "serveraddress": "ghcr.io"});
    assert_eq!(header_json(&auth), expected);
}

#[tokio::test]
async fn auths_entry_with_identity_token() {
    let dir = TempDir::new("token");
    let auth = STANDARD.encode("me:");
    let config = json!({"auths": {"myreg:5000": {"auth": auth, "identitytoken": "tok-123"}}});
    let creds = dir.config(&config.to_string());
    let auth = creds.for_registry("myreg:5000").await.unwrap();
    let expected = json!({"identitytoken": "tok-123", "serveraddress": "myreg:5000"});
    assert_eq!(header_json(&auth), expected);
    assert_eq!(auth.username(), None);
}

#[tokio::test]
async fn docker_hub_aliases_are_one_registry() {
    let dir = TempDir::new("hub");
    let creds = dir.config(&auths_config("https://index.docker.io/v1/", "me", "pw"));
    for name in ["docker.io", "index.docker.io", "registry-1.docker.io"] {
        let auth = creds.for_registry(name).await.unwrap();
        assert_eq!(auth.server_address(), HUB_SERVER, "{name}");
        assert_eq!(header_json(&auth)["serveraddress"], HUB_SERVER);
    }
    let creds = dir.config(&auths_config("docker.io", "me", "pw"));
    assert_eq!(
        creds
            .for_registry("docker.io")
            .await
            .unwrap()
            .server_address(),
        HUB_SERVER
    );
}

#[tokio::test]
async fn the_exact_key_wins_over_an_alias() {
    let dir = TempDir::new("alias");
    let config = json!({"auths": {
        "docker.io": {"username": "alias", "password": "a"},
        "https://index.docker.io/v1/": {"username": "exact", "password": "e"},
        "index.docker.io": {"username": "other", "password": "o"},
    }});
    let creds = dir.config(&config.to_string());
    let auth = creds.for_registry("docker.io").await.unwrap();
    assert_eq!(auth.username(), Some("exact"));
}

#[tokio::test]
async fn a_key_with_scheme_and_path_names_its_host() {
    let dir = TempDir::new("scheme");
    let creds = dir.config(&auths_config("http://myreg:5000/v2/", "me", "pw"));
    let auth = creds.for_registry("myreg:5000").await.unwrap();
    assert_eq!(header_json(&auth)["serveraddress"], "myreg:5000");
    assert!(creds.for_registry("myreg").await.is_none());
}

#[tokio::test]
async fn a_malformed_entry_is_skipped_and_the_others_kept() {
    let dir = TempDir::new("malformed");
    let config = json!({"auths": {
        "bad.example": {"auth": "not base64!"},
        "nocolon.example": {"auth": STANDARD.encode("justauser")},
        "number.example": {"auth": 5},
        "empty.example": {},
        "ghcr.io": {"auth": STANDARD.encode("me:pw")},
    }});
    let creds = dir.config(&config.to_string());
    assert!(creds.for_registry("bad.example").await.is_none());
    assert!(creds.for_registry("nocolon.example").await.is_none());
    assert!(creds.for_registry("number.example").await.is_none());
    assert!(creds.for_registry("ghcr.io").await.is_some());
    let message = CredentialsError::Entry {
        path: "/x/config.json".into(),
        section: "auths",
        registry: "reg".into(),
        what: login_of(&config["auths"]["bad.example"]).err().unwrap(),
    };
    let expected = r#"/x/config.json: auths."reg": auth is not base64 of user:password"#;
    assert_eq!(message.to_string(), expected);
    let refusal = |registry: &str| login_of(&config["auths"][registry]).err();
    assert_eq!(refusal("bad.example"), Some(EntryError::BadAuth));
    assert_eq!(refusal("nocolon.example"), Some(EntryError::BadAuth));
    assert_eq!(
        refusal("number.example"),
        Some(EntryError::NotAString("auth"))
    );
    assert_eq!(
        login_of(&json!({"password": "pw"})).err(),
        Some(EntryError::NoUsername)
    );
    assert_eq!(login_of(&json!("x")).err(), Some(EntryError::NotAnObject));
}

#[tokio::test]
async fn creds_store_serves_every_registry_and_gets_the_server_address() {
    let dir = TempDir::new("store");
    // Echo the server address it was given as the user name.
    dir.helper(
        "test",
        r#"[ "$1" = get ] || exit 2
url=$(cat)
printf '{"ServerURL":"%s","Username":"u-%s","Secret":"s3cret"}' "$url" "$url""#,
    );
    let creds = dir.config(r#"{"credsStore": "test"}"#);
    let auth = creds.for_registry("ghcr.io").await.unwrap();
    let expected =
        json!({"username": "u-ghcr.io", "password": "s3cret", "serveraddress": "ghcr.io"});
    assert_eq!(header_json(&auth), expected);
    let hub = creds.for_registry("docker.io").await.unwrap();
    assert_eq!(hub.username(), Some("u-https://index.docker.io/v1/"));
    assert_eq!(header_json(&hub)["serveraddress"], HUB_SERVER);
}

#[tokio::test]
async fn a_registry_helper_wins_over_creds_store() {
    let dir = TempDir::new("precedence");
    dir.helper(
        "store",
        r#"echo '{"ServerURL":"x","Username":"from-store","Secret":"a"}'"#,
    );
    dir.helper(
        "gh",
        r#"echo '{"ServerURL":"x","Username":"from-gh","Secret":"b"}'"#,
    );
    let config = json!({
        "credsStore": "store",
        "credHelpers": {"ghcr.io": "gh", "https://index.docker.io/v1/": "gh"},
        "auths": {"ghcr.io": {}},
    });
    let creds = dir.config(&config.to_string());
    let user = |auth: Option<RegistryAuth>| auth.unwrap().username().unwrap().to_string();
    assert_eq!(user(creds.for_registry("ghcr.io").await), "from-gh");
    assert_eq!(user(creds.for_registry("docker.io").await), "from-gh");
    assert_eq!(user(creds.for_registry("quay.io").await), "from-store");
}

#[tokio::test]
async fn a_helper_token_is_an_identity_token() {
    let dir = TempDir::new("helpertoken");
    dir.helper(
        "tok",
        r#"echo '{"ServerURL":"x","Username":"<token>","Secret":"tok-9"}'"#,
    );
    let creds = dir.config(r#"{"credHelpers": {"myreg:5000": "tok"}}"#);
    let auth = creds.for_registry("myreg:5000").await.unwrap();
    let expected = json!({"identitytoken": "tok-9", "serveraddress": "myreg:5000"});
    assert_eq!(header_json(&auth), expected);
}

#[tokio::test]
async fn a_helper_without_credentials_means_none_even_with_a_file_entry() {
    let dir = TempDir::new("notfound");
    dir.helper("none", &format!("echo '{NOT_FOUND}'\nexit 1"));
    let mut config: Value = serde_json::from_str(&auths_config("ghcr.io", "me", "pw")).unwrap();
    config["credsStore"] = json!("none");
    let creds = dir.config(&config.to_string());
    assert!(creds.for_registry("ghcr.io").await.is_none());
}

#[tokio::test]
async fn a_missing_or_failing_helper_falls_back_to_the_file() {
    let dir = TempDir::new("fallback");
    dir.helper("broken", "echo 'hunter2 in an error'\nexit 3");
    let mut config: Value = serde_json::from_str(&auths_config("ghcr.io", "me", "pw")).unwrap();
    config["credHelpers"] =
        json!({"ghcr.io": "absent", "quay.io": "absent", "a.example": "broken"});
    config["auths"]["a.example"] = json!({"username": "a", "password": "b"});
    let creds = dir.config(&config.to_string());
    assert_eq!(
        creds.for_registry("ghcr.io").await.unwrap().username(),
        Some("me")
    );
    assert!(creds.for_registry("quay.io").await.is_none());
    assert_eq!(
        creds.for_registry("a.example").await.unwrap().username(),
        Some("a")
    );
}

#[tokio::test]
async fn a_slow_helper_is_killed_at_the_bound() {
    let dir = TempDir::new("slow");
    dir.helper("slow", "exec sleep 30");
    let creds = dir
        .config(r#"{"credsStore": "slow"}"#)
        .with_helper_timeout(Duration::from_millis(300));
    let started = Instant::now();
    assert!(creds.for_registry("ghcr.io").await.is_none());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn helper_answers_are_cached() {
    let dir = TempDir::new("cache");
    let runs = dir.0.join("runs");
    dir.helper(
        "count",
        &format!(
            "echo run >> '{}'\necho '{{\"ServerURL\":\"x\",\"Username\":\"u\",\"Secret\":\"s\"}}'",
            runs.display()
        ),
    );
    let creds = std::sync::Arc::new(dir.config(r#"{"credsStore": "count"}"#));
    let lookups: Vec<_> = (0..4)
        .map(|_| {
            let creds = creds.clone();
            tokio::spawn(async move { creds.for_registry("ghcr.io").await })
        })
        .collect();
    for lookup in lookups {
        assert!(lookup.await.unwrap().is_some());
    }
    assert!(creds.for_registry("ghcr.io").await.is_some());
    assert_eq!(std::fs::read_to_string(&runs).unwrap().lines().count(), 1);
}

#[tokio::test]
async fn debug_output_holds_no_secret() {
    let dir = TempDir::new("debug");
    let config = json!({"auths": {
        "ghcr.io": {"auth": STANDARD.encode("me:hunter2")},
        "myreg:5000": {"identitytoken": "tok-secret"},
    }});
    let creds = dir.config(&config.to_string());
    let password = creds.for_registry("ghcr.io").await.unwrap();
    let token = creds.for_registry("myreg:5000").await.unwrap();
    let shown = format!("{creds:?} {password:?} {token:?} {password:#?} {token:#?}");
    for secret in ["hunter2", &STANDARD.encode("me:hunter2"), "tok-secret"] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
    }
    assert!(
        shown.contains("<redacted>") && shown.contains("ghcr.io"),
        "{shown}"
    );
}

#[test]
fn describe_names_sources_without_secrets() {
    let dir = TempDir::new("describe");
    let config = json!({
        "auths": {
            "127.0.0.1:5002": {"auth": STANDARD.encode("me:hunter2")},
            "ghcr.io": {"auth": STANDARD.encode("me:hunter2")},
        },
        "credHelpers": {"ghcr.io": "gh"},
        "credsStore": "desktop",
    });
    let creds = dir.config(&config.to_string());
    let file = format!("auths in {}", creds.path().display());
    let row = |r: &str, s: &str| (r.to_string(), s.to_string());
    assert_eq!(
        creds.describe(),
        vec![
            row(
                "127.0.0.1:5002",
                &format!("{file} (used only if docker-credential-desktop fails)")
            ),
            row("ghcr.io", "credential helper docker-credential-gh"),
            row(
                "ghcr.io",
                &format!("{file} (used only if docker-credential-gh fails)")
            ),
            row("*", "credsStore docker-credential-desktop"),
        ]
    );
}

#[test]
fn credentials_can_be_shared_between_tasks() {
    fn shared<T: Send + Sync>() {}
    fn sent<T: Send>(_: &T) {}
    shared::<Credentials>();
    let creds = Credentials::parse(Path::new("/x"), b"{}").unwrap();
    sent(&creds.for_registry("ghcr.io"));
}
