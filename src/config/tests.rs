//! The configuration's tests: each setting's rule, where an error names its source, and the
//! merged config.

use super::file::{Kind, FILE_KEYS};
use super::*;

fn args() -> RunArgs {
    RunArgs::default()
}

#[test]
fn docker_hosts() {
    assert!(validate_host("unix:///var/run/docker.sock").is_ok());
    assert!(validate_host("tcp://10.0.0.1:2376").is_ok());
    for bad in ["unix://", "/var/run/docker.sock"] {
        assert_eq!(
            validate_host(bad),
            Err(DockerHostError { host: bad.into() })
        );
    }
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
    let file: FileConfig = toml::from_str("environment = \"staging\"\nconcurrency = 2").unwrap();
    let mut a = args();
    a.environment = Some("production".into());
    let config = Config::build(&a, &file).unwrap();
    assert_eq!(config.environment, "production");
    assert_eq!(config.concurrency, 2);
}

#[test]
fn a_token_in_the_file_points_to_token_file() {
    let err = FileConfig::parse("token = \"s3cret\"", "/etc/d.toml").unwrap_err();
    assert_eq!(err.setting, "/etc/d.toml: key token");
    assert!(
        err.reason.to_string().starts_with("there is no such setting: the token never goes in the config file; write it to a file of its own (mode 0600) and set token_file = "),
        "{err}"
    );
    assert!(!err.to_string().contains("s3cret"), "{err}");
}

#[test]
fn unknown_file_key_is_an_error_with_a_suggestion() {
    let err = FileConfig::parse("environmnet = \"x\"", "/etc/d.toml").unwrap_err();
    assert_eq!(err.setting, "/etc/d.toml: key environmnet");
    assert!(
        err.reason
            .to_string()
            .ends_with("did you mean environment?"),
        "{err}"
    );
}

#[test]
fn file_type_errors_name_the_key_and_the_type_in_plain_words() {
    let cases = [
        (
            "concurrency = \"10\"",
            "key concurrency: expected a whole number, without quotes, found the string \"10\"",
        ),
        (
            "environment = 10",
            "key environment: expected a string in quotes, found the number 10",
        ),
        (
            "dry_run = \"maybe\"",
            "key dry_run: expected true or false (or 1, 0, \"yes\", \"no\"), found the string \"maybe\"",
        ),
        (
            "label_selector = \"a=b\"",
            "key label_selector: expected a list of strings in quotes",
        ),
    ];
    for (text, want) in cases {
        let err = FileConfig::parse(text, "f.toml").unwrap_err().to_string();
        assert!(err.contains(want), "{text}: {err}");
        assert!(!err.contains("invalid type"), "{err}");
    }
}

/// FILE_KEYS lists exactly the fields serde accepts, each with a kind serde takes.
#[test]
fn the_file_keys_are_the_config_fields() {
    let err = toml::from_str::<FileConfig>("zzz = 1").unwrap_err();
    let message = err.message();
    let expected = message.split("expected one of ").nth(1).unwrap_or_default();
    let mut fields: Vec<&str> = expected.split(", ").map(|f| f.trim_matches('`')).collect();
    let mut keys: Vec<&str> = FILE_KEYS.iter().map(|(k, _)| *k).collect();
    fields.sort();
    keys.sort();
    assert_eq!(fields, keys, "{message}");
    for (key, kind) in FILE_KEYS {
        let value = match kind {
            Kind::Text => "\"1s\"",
            Kind::Bool => "true",
            Kind::Integer => "3",
            Kind::TextList => "[\"a=b\"]",
        };
        FileConfig::parse(&format!("{key} = {value}"), "f.toml")
            .unwrap_or_else(|e| panic!("{key}: {e}"));
    }
}

#[test]
fn registry_credentials_are_read_only_by_the_commands_that_ask_registries() {
    let dir = std::env::temp_dir().join(format!(
        "deploytrack-cfg-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.json");
    std::fs::write(&config, "not json").unwrap();
    let file = FileConfig::parse(
        &format!("docker_config = {:?}", config.display().to_string()),
        "/etc/d.toml",
    )
    .unwrap();
    let err = Config::build(&args(), &file).unwrap_err();
    assert_eq!(err.setting, "/etc/d.toml: key docker_config");
    assert!(
        matches!(
            &err.reason,
            Reason::Credentials(CredentialsError::Json { line: 1, .. })
        ),
        "{err}"
    );
    // `report` sends one report to the endpoint: a broken Docker CLI config is not its.
    let mut a = args();
    a.skips_registries = true;
    let built = Config::build(&a, &file).unwrap();
    assert!(built.registry_credentials.is_none());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn errors_name_the_environment_variable_or_the_file_key() {
    let file = FileConfig::parse("concurrency = 0", "/etc/d.toml").unwrap();
    let err = Config::build(&args(), &file).unwrap_err();
    assert_eq!(err.setting, "/etc/d.toml: key concurrency");
    let mut a = args();
    a.concurrency = Some("0".into());
    a.from_env = vec![("--concurrency".into(), "DEPLOYTRACK_CONCURRENCY".into())];
    let err = Config::build(&a, &file).unwrap_err();
    assert_eq!(err.setting, "DEPLOYTRACK_CONCURRENCY");
    a.from_env.clear();
    let err = Config::build(&a, &file).unwrap_err();
    assert_eq!(err.setting, "--concurrency");
    a.concurrency = Some("-1".into());
    let err = Config::build(&a, &file).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid --concurrency: -1 is negative: give a whole number of 1 or more"
    );
}

#[test]
fn a_dry_run_never_uses_the_state_dir() {
    let mut a = args();
    a.state_dir = Some("/tmp/somewhere".into());
    a.url = Some("http://127.0.0.1:1/x".into());
    a.dry_run = Some(true);
    let config = Config::build(&a, &FileConfig::default()).unwrap();
    assert!(config.dry_run && config.explicit_dry_run);
    assert_eq!(config.queue_dir(), None);
    assert_eq!(
        config.state_dir.as_deref(),
        Some(Path::new("/tmp/somewhere"))
    );
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
    let file = FileConfig::parse(
        "name_template = \"{pod}\"\nhost_name = \"a/b\"",
        "/etc/deploytrack/config.toml",
    )
    .unwrap();
    let err = Config::build(&args(), &file).unwrap_err();
    assert_eq!(
        err.setting, "/etc/deploytrack/config.toml: key name_template",
        "{err}"
    );
    let mut a = args();
    a.name_template = Some("{host}/{label:app|container}".into());
    let err = Config::build(&a, &file).unwrap_err();
    assert_eq!(
        err.setting, "/etc/deploytrack/config.toml: key host_name",
        "{err}"
    );
    a.host_name = Some("edge\n7".into());
    a.from_env
        .push(("--host-name".into(), "DEPLOYTRACK_HOST_NAME".into()));
    let err = Config::build(&a, &file).unwrap_err();
    assert_eq!(err.setting, "DEPLOYTRACK_HOST_NAME", "{err}");
    a.from_env.clear();
    a.name_template = Some("{host|}".into());
    let err = Config::build(&a, &file).unwrap_err();
    assert_eq!(err.setting, "--name-template", "{err}");
    a.from_env
        .push(("--name-template".into(), "DEPLOYTRACK_NAME_TEMPLATE".into()));
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
    for (bad, refusal) in [
        ("", HostNameError::Empty),
        ("  ", HostNameError::Empty),
        ("a/b", HostNameError::Slash("a/b".into())),
        (
            "tab\there",
            HostNameError::ControlCharacters("tab\there".into()),
        ),
        (" edge", HostNameError::Spaces(" edge".into())),
    ] {
        assert_eq!(validate_host_name(bad), Err(refusal), "{bad:?}");
    }
    assert!(validate_host_name("edge-7.example").is_ok());
}

/// A token file with this text and mode, in a fresh directory.
fn token_file(text: &str, mode: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!(
        "deploytrack-unit-{}-{:x}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("token");
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

#[test]
fn yes_or_no_in_the_file_takes_the_words_every_source_takes() {
    for (value, want) in [
        ("true", true),
        ("\"yes\"", true),
        ("1", true),
        ("\"1\"", true),
        ("\"No\"", false),
        ("0", false),
    ] {
        let file = FileConfig::parse(&format!("report_stops = {value}"), "f.toml")
            .unwrap_or_else(|e| panic!("{value}: {e}"));
        let config = Config::build(&args(), &file).unwrap();
        assert_eq!(config.report_stops, want, "{value}");
    }
    for value in ["2", "\"maybe\"", "\"on\""] {
        let err = FileConfig::parse(&format!("require_label = {value}"), "f.toml").unwrap_err();
        assert_eq!(err.setting, "f.toml: key require_label", "{value}");
        assert!(
            err.reason
                .to_string()
                .starts_with("expected true or false (or 1, 0, \"yes\", \"no\")"),
            "{err}"
        );
    }
}

#[test]
fn one_rule_for_the_environment_from_every_source() {
    let mut a = args();
    a.environment = Some(" prod ".into());
    let err = Config::build(&a, &FileConfig::default()).unwrap_err();
    assert_eq!(err.setting, "--environment");
    assert!(
        matches!(&err.reason, Reason::Environment(EnvironmentError::Spaces { name }) if name == " prod "),
        "{err}"
    );
    a.from_env = vec![("--environment".into(), "DEPLOYTRACK_ENVIRONMENT".into())];
    let err = Config::build(&a, &FileConfig::default()).unwrap_err();
    assert_eq!(err.setting, "DEPLOYTRACK_ENVIRONMENT");
    let file = FileConfig::parse("environment = \"prod \"", "f.toml").unwrap();
    let err = Config::build(&args(), &file).unwrap_err();
    assert_eq!(err.setting, "f.toml: key environment");
    assert!(
        matches!(&err.reason, Reason::Environment(EnvironmentError::Spaces { name }) if name == "prod "),
        "{err}"
    );
}

#[test]
fn a_url_with_a_password_beside_a_token_is_refused() {
    let token = token_file("s3cret\n", 0o600);
    let mut a = args();
    a.url = Some("https://user:pa55@example.com/hook".into());
    a.token_file = Some(token.clone());
    let err = Config::build(&a, &FileConfig::default()).unwrap_err();
    assert_eq!(err.setting, "--url");
    assert!(
        err.reason.to_string().starts_with(&format!(
            "https://<redacted>@example.com/hook holds a user name and password (user:password@), and the token from --token-file {} is set: a request would carry both in two Authorization headers",
            token.display()
        )),
        "{err}"
    );
    assert!(!err.to_string().contains("pa55"), "{err}");
    // Without the user part it is fine; a dry run without a token too.
    a.url = Some("https://example.com/hook".into());
    assert!(Config::build(&a, &FileConfig::default()).is_ok());
    let mut a = args();
    a.url = Some("https://user:pa55@example.com/hook".into());
    a.dry_run = Some(true);
    assert!(Config::build(&a, &FileConfig::default()).is_ok());
    let _ = std::fs::remove_dir_all(token.parent().unwrap());
}

#[test]
fn a_token_is_refused_by_its_source_never_by_its_value() {
    assert!(matches!(
        token_of(" \n", "DEPLOYTRACK_TOKEN"),
        Err(TokenError::Empty { from }) if from == "DEPLOYTRACK_TOKEN"
    ));
    let refused = token_of("s3crét", "DEPLOYTRACK_TOKEN").unwrap_err();
    assert!(
        matches!(&refused, TokenError::NotHeaderSafe { from } if from == "DEPLOYTRACK_TOKEN"),
        "{refused}"
    );
    assert!(
        !format!("{refused} {refused:?}").contains("s3cr"),
        "{refused:?}"
    );
    let path = token_file(" \n", 0o600);
    let mut a = args();
    a.url = Some("https://example.com/hook".into());
    a.token_file = Some(path.clone());
    let err = Config::build(&a, &FileConfig::default()).unwrap_err();
    assert_eq!(err.setting, "--token-file");
    assert!(
        matches!(&err.reason, Reason::Token(TokenError::Empty { from }) if *from == format!("--token-file {}", path.display())),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
    let gone = TokenFile {
        path: path.clone(),
        source: format!("--token-file {}", path.display()),
        credential: false,
    };
    assert!(matches!(
        gone.read(),
        Err(TokenError::Unreadable { path: p, source }) if p == path && source.kind() == std::io::ErrorKind::NotFound
    ));
}

#[test]
fn a_url_without_a_scheme_gets_a_hint() {
    let err = parse_url("webhook.example.com/atomist/resource/1").unwrap_err();
    assert_eq!(
        err.reason.to_string(),
        "\"webhook.example.com/atomist/resource/1\" is not a URL: it has no scheme; an endpoint's URL starts with https:// (or http://), as in https://webhook.example.com/atomist/resource/1"
    );
    let err = parse_url("https://exa mple.com/").unwrap_err();
    assert!(!err.reason.to_string().contains("no scheme"), "{err}");
}

#[test]
fn only_a_token_file_every_user_can_read_draws_a_warning() {
    for mode in [0o600, 0o400, 0o440, 0o640] {
        let token = token_file("t\n", mode);
        assert_eq!(token_file_warning(&token), None, "{mode:o}");
        let _ = std::fs::remove_dir_all(token.parent().unwrap());
    }
    let token = token_file("t\n", 0o644);
    let warning = token_file_warning(&token).unwrap();
    assert!(
        warning.contains("is readable by every user (mode 644): chmod o-r")
            && warning.contains("0440 with a group it runs in")
            && !warning.contains("chmod 600"),
        "{warning}"
    );
    let mut a = args();
    a.url = Some("http://127.0.0.1:1/x".into());
    a.token_file = Some(token.clone());
    let config = Config::build(&a, &FileConfig::default()).unwrap();
    assert_eq!(config.warnings.len(), 1);
    assert_eq!(config.warnings[0].about, "token");
    let _ = std::fs::remove_dir_all(token.parent().unwrap());
}

#[test]
fn every_invalid_setting_is_named_and_the_others_still_hold() {
    let token = token_file("\n", 0o600);
    let mut a = args();
    a.url = Some("https://example.com/hook".into());
    a.token_file = Some(token.clone());
    a.environment = Some("prod\t".into());
    a.docker_host = Some("unix:///run/other.sock".into());
    let (config, invalid) = Config::build_each(&a, &FileConfig::default());
    let keys: Vec<&str> = invalid.iter().map(|i| i.key).collect();
    assert_eq!(keys, ["token", "environment"]);
    assert!(
        invalid[0]
            .error
            .to_string()
            .starts_with("invalid --token-file: the token from --token-file"),
        "{}",
        invalid[0].error
    );
    // The engine and the endpoint can still be checked.
    assert_eq!(config.docker_host, "unix:///run/other.sock");
    assert_eq!(
        config.url.as_ref().map(|u| u.as_str()),
        Some("https://example.com/hook")
    );
    assert!(!config.dry_run);
    // `build` names the first, as before.
    let err = Config::build(&a, &FileConfig::default()).unwrap_err();
    assert_eq!(err.setting, "--token-file");
    // An invalid URL is no dry run: the missing token is named too.
    let mut a = args();
    a.url = Some("example.com/hook".into());
    let (_, invalid) = Config::build_each(&a, &FileConfig::default());
    let keys: Vec<&str> = invalid.iter().map(|i| i.key).collect();
    assert_eq!(keys, ["url", "token"]);
    let _ = std::fs::remove_dir_all(token.parent().unwrap());
}

#[test]
fn in_a_container_an_unreadable_token_file_names_the_compose_fix() {
    let token = token_file("t\n", 0o440);
    let fix = token_fix_in_container(&token);
    assert!(
        fix.starts_with(" (it is owned by ")
            && fix.contains("with mode 440)")
            && fix.contains("DOCKER_GID")
            && fix.contains("group_add"),
        "{fix}"
    );
    let _ = std::fs::remove_dir_all(token.parent().unwrap());
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
