//! Bad input: one sentence naming the setting, exit 64, no panic.

use deploytrack_test_support::*;

use crate::ENGINE;

fn assert_usage_error(out: &Output, setting: &str) {
    assert_eq!(
        out.status.code(),
        Some(64),
        "stdout: {}\nstderr: {}",
        out.stdout,
        out.stderr
    );
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "not one line: {}", out.stderr);
    assert!(
        lines[0].contains(setting),
        "{setting} not named: {}",
        out.stderr
    );
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
}

#[test]
fn invalid_values_exit_64_naming_the_setting() {
    let dir = std::env::temp_dir().join(format!("deploytrack-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["run", "--url", "not a url"], "--url"),
        (&["run", "--url", "ftp://example.com/x"], "--url"),
        (&["run", "--environment", ""], "--environment"),
        (&["run", "--retry-max", "forever"], "--retry-max"),
        (
            &["run", "--retry-initial", "10s", "--retry-max", "1s"],
            "--retry-max",
        ),
        (&["run", "--shutdown-timeout=-3s"], "--shutdown-timeout"),
        (
            &["run", "--name-template", "{host}/{pod}"],
            "--name-template",
        ),
        (&["run", "--concurrency", "zero"], "--concurrency"),
        (&["run", "--queue-max-entries", "0"], "--queue-max-entries"),
        (&["run", "--listen", "anywhere"], "--listen"),
        (
            &["run", "--docker-host", "/var/run/docker.sock"],
            "--docker-host",
        ),
        (&["run", "--label-selector", "=x"], "--label-selector"),
        (
            &[
                "run",
                "--token-file",
                "/nonexistent/token",
                "--url",
                "https://example.com/x",
            ],
            "--token-file",
        ),
        (&["run", "--url", "https://example.com/x"], "token"),
        (&["--log-format", "xml", "run"], "--log-format"),
        (&["run", "--frobnicate"], "--frobnicate"),
        (&["--config", "/nonexistent/config.toml", "run"], "--config"),
        // A directory where a file belongs: unreadable as one.
        (&["--config", "/", "run"], "--config"),
        (
            &["run", "--url", "https://example.com/x", "--token-file", "/"],
            "--token-file",
        ),
        // Absurd durations and sizes, and empty strings.
        (&["run", "--retry-max", "300years"], "--retry-max"),
        (
            &["run", "--request-timeout", "99999999999999999999s"],
            "--request-timeout",
        ),
        (&["run", "--shutdown-timeout", "25h"], "--shutdown-timeout"),
        (&["run", "--request-timeout", "0s"], "--request-timeout"),
        (&["run", "--resync-interval", "100ms"], "--resync-interval"),
        (
            &["run", "--queue-max-entries", "18446744073709551616"],
            "--queue-max-entries",
        ),
        (
            &["run", "--queue-max-entries", "1000000000000"],
            "--queue-max-entries",
        ),
        (&["run", "--concurrency", "100000"], "--concurrency"),
        (&["run", "--concurrency=-1"], "--concurrency"),
        (&["run", "--url", ""], "--url"),
        (&["run", "--docker-host", ""], "--docker-host"),
        (&["run", "--name-template", ""], "--name-template"),
        (&["run", "--listen", ""], "--listen"),
        (&["run", "--state-dir", ""], "--state-dir"),
        (&["run", "--ca-file", "/nonexistent/ca.pem"], "--ca-file"),
        (&["run", "--ca-file", "/etc/hostname"], "--ca-file"),
        (&["--log-level", "loud", "run"], "--log-level"),
        (&["run", "--dry-run", "maybe"], "--dry-run"),
        (
            &[
                "report",
                "--image",
                "app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                "--timeout",
                "400days",
            ],
            "--timeout",
        ),
    ];
    for (args, setting) in cases {
        let out = Scope::command_only(args);
        assert_usage_error(&out, setting);
    }
    let bad_key = dir.join("bad-key.toml");
    std::fs::write(
        &bad_key,
        "url = \"https://example.com/x\"\nenvironmnet = \"prod\"\n",
    )
    .unwrap();
    let out = Scope::command_only(&["--config", bad_key.to_str().unwrap(), "run"]);
    assert_usage_error(&out, "environmnet");
    let bad_type = dir.join("bad-type.toml");
    std::fs::write(&bad_type, "concurrency = \"many\"\n").unwrap();
    let out = Scope::command_only(&["--config", bad_type.to_str().unwrap(), "run"]);
    assert_usage_error(&out, "key concurrency");
    let cases: &[(&str, &[u8], &str)] = &[
        ("not-toml.toml", b"this is not = = toml [", "--config"),
        ("binary.toml", b"\x00\xff\xfe\x01garbage", "--config"),
        (
            "bool-as-string.toml",
            b"dry_run = \"maybe\"\n",
            "key dry_run",
        ),
        (
            "string-not-list.toml",
            b"label_selector = \"a=b\"\n",
            "key label_selector",
        ),
        ("negative.toml", b"concurrency = -4\n", "key concurrency"),
        ("empty-url.toml", b"url = \"\"\n", "key url"),
        (
            "absurd.toml",
            b"retry_initial = \"1000000h\"\n",
            "key retry_initial",
        ),
        ("table.toml", b"[url]\nhost = \"x\"\n", "key url"),
    ];
    for (file, text, setting) in cases {
        let path = dir.join(file);
        std::fs::write(&path, text).unwrap();
        let out = Scope::command_only(&["--config", path.to_str().unwrap(), "run"]);
        assert_usage_error(&out, setting);
    }
    let control = dir.join("control-token");
    std::fs::write(&control, "tok\x01en\n").unwrap();
    let out = Scope::command_only(&[
        "run",
        "--url",
        "https://example.com/x",
        "--token-file",
        control.to_str().unwrap(),
    ]);
    assert_usage_error(&out, "--token-file");
    let empty_token = dir.join("empty-token");
    std::fs::write(&empty_token, "\n").unwrap();
    let out = Scope::command_only(&[
        "run",
        "--url",
        "https://example.com/x",
        "--token-file",
        empty_token.to_str().unwrap(),
    ]);
    assert_usage_error(&out, "--token-file");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn environment_and_file_follow_the_precedence() {
    let dir = std::env::temp_dir().join(format!("deploytrack-precedence-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("config.toml");
    std::fs::write(
        &file,
        "environment = \"from-file\"\nretry_max = \"nonsense\"\n",
    )
    .unwrap();
    // The file's bad value is named, with its key, when nothing overrides it...
    let out = Scope::command_only(&["--config", file.to_str().unwrap(), "run"]);
    assert_usage_error(&out, &format!("{}: key retry_max", file.display()));
    // ...and an environment variable overrides the file.
    let out = agent_command(&[
        "--config",
        file.to_str().unwrap(),
        "run",
        "--environment",
        " ",
    ])
    .env("DEPLOYTRACK_RETRY_MAX", "1m")
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64));
    assert!(stderr.contains("--environment"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn template_and_host_name_errors_name_their_source() {
    let dir = std::env::temp_dir().join(format!("deploytrack-sources-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("config.toml");
    std::fs::write(&file, "name_template = \"{host}/{label:app|}\"\n").unwrap();
    let config = file.to_str().unwrap();
    let out = Scope::command_only(&["--config", config, "run"]);
    assert_usage_error(
        &out,
        &format!("invalid {}: key name_template", file.display()),
    );
    // The environment overrides the file, and is named when it is the one that is wrong.
    let out = agent_command(&["--config", config, "run"])
        .env("DEPLOYTRACK_NAME_TEMPLATE", "{host}/{swarm_slit}")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("invalid DEPLOYTRACK_NAME_TEMPLATE") && stderr.contains("{swarm_slit}"),
        "{stderr}"
    );
    let out = Scope::command_only(&["run", "--name-template", "{label:app|\"x\"|id}"]);
    assert_usage_error(&out, "invalid --name-template");
    let out = agent_command(&["run"])
        .env("DEPLOYTRACK_HOST_NAME", "edge/7")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("invalid DEPLOYTRACK_HOST_NAME"), "{stderr}");
    let out = Scope::command_only(&["run", "--host-name", ""]);
    assert_usage_error(&out, "invalid --host-name");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unreachable_engine_is_one_sentence_and_exit_1() {
    let out = Scope::command_only(&["run", "--docker-host", "unix:///nonexistent/docker.sock"]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    let last = out.stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("deploytrack: the Docker socket /nonexistent/docker.sock does not exist"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("panicked"));
    // Before the error, it says what it waits for.
    assert!(
        out.stderr.contains(
            "the Docker Engine does not answer yet; retrying for up to 8s engine=unix:///nonexistent/docker.sock"
        ),
        "{}",
        out.stderr
    );
    let out = Scope::command_only(&["run", "--docker-host", "tcp://127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr
            .lines()
            .last()
            .unwrap_or_default()
            .contains("cannot reach the Docker Engine at tcp://127.0.0.1:1"),
        "{}",
        out.stderr
    );
}

/// Runs the binary with `env` added; exit code, stdout, stderr.
fn with_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let out = agent_command(args)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    Output {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "deploytrack-{name}-{}-{:x}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

const PINNED: &str =
    "registry.example.com/team/api@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

#[test]
fn command_line_errors_keep_their_subject_in_one_line() {
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (
            &["report"],
            &[],
            "the following required arguments were not provided: --image <REF>",
        ),
        (
            &["completions"],
            &[],
            "the following required arguments were not provided: <SHELL>",
        ),
        (
            &["--url", "https://example.com/x", "run"],
            &[],
            "unexpected argument '--url' found; options of a command go after it, as in `deploytrack run --url ...`",
        ),
        (&["runn"], &[], "a similar subcommand exists: 'run'"),
        (
            &["run", "--concurrency", "-1"],
            &[],
            "invalid --concurrency: -1 is negative: give a whole number of 1 or more",
        ),
        (
            &["run"],
            &[("DEPLOYTRACK_DRY_RUN", "maybe")],
            "invalid value 'maybe' for '--dry-run [<BOOL>]' (from the environment variable DEPLOYTRACK_DRY_RUN); [possible values: true, false, 1, 0, yes, no]",
        ),
        (
            &["queue", "--state-dir", "/nonexistent", "purge"],
            &[],
            "queue purge deletes every pending report and dead letter: confirm with --yes",
        ),
    ];
    for (args, env, want) in cases {
        let out = with_env(args, env);
        assert_usage_error(&out, want);
    }
}

#[test]
fn errors_name_the_variable_or_the_file_key_the_value_came_from() {
    let dir = scratch("sources");
    let out = with_env(&["run"], &[("DEPLOYTRACK_CONCURRENCY", "0")]);
    assert_usage_error(
        &out,
        "invalid DEPLOYTRACK_CONCURRENCY: \"0\" is not a positive whole number",
    );
    let cases: &[(&str, &str)] = &[
        ("concurrency = 0\n", "key concurrency: \"0\" is not a positive whole number"),
        (
            "concurrency = \"10\"\n",
            "key concurrency: expected a whole number, without quotes, found the string \"10\"",
        ),
        (
            "environment = 10\n",
            "key environment: expected a string in quotes, found the number 10",
        ),
        (
            "environmnet = \"prod\"\n",
            "key environmnet: there is no such setting (the keys are the long flag names in snake_case); did you mean environment?",
        ),
    ];
    for (text, want) in cases {
        let file = dir.join("config.toml");
        std::fs::write(&file, text).unwrap();
        let out = Scope::command_only(&["--config", file.to_str().unwrap(), "run"]);
        assert_usage_error(&out, &format!("invalid {}: {want}", file.display()));
        assert!(!out.stderr.contains("invalid type"), "{}", out.stderr);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn rust_log_ranks_between_our_variable_and_the_file_and_is_validated() {
    let dir = scratch("rustlog");
    let file = dir.join("config.toml");
    std::fs::write(&file, "log_level = \"error\"\n").unwrap();
    // `check` against a missing engine logs its retries at DEBUG.
    let check = [
        "--config",
        file.to_str().unwrap(),
        "check",
        "--docker-host",
        "unix:///nonexistent/docker.sock",
    ];
    let out = with_env(&check, &[("RUST_LOG", "debug")]);
    assert!(out.stdout.contains("FAIL engine"), "{}", out.stdout);
    assert!(
        out.stderr.contains("DEBUG"),
        "RUST_LOG lost to the file: {}",
        out.stderr
    );
    let out = with_env(
        &check,
        &[("RUST_LOG", "debug"), ("DEPLOYTRACK_LOG_LEVEL", "error")],
    );
    assert!(out.stdout.contains("FAIL engine"), "{}", out.stdout);
    assert!(
        !out.stderr.contains("DEBUG"),
        "RUST_LOG beat DEPLOYTRACK_LOG_LEVEL: {}",
        out.stderr
    );
    let out = with_env(&["run"], &[("RUST_LOG", "nope")]);
    assert_usage_error(&out, "invalid RUST_LOG: \"nope\" is not a level");
    std::fs::write(&file, "log_level = \"nope\"\n").unwrap();
    let out = Scope::command_only(&["--config", file.to_str().unwrap(), "run"]);
    assert_usage_error(&out, &format!("invalid {}: key log_level", file.display()));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn report_without_an_endpoint_fails_unless_asked_to_dry_run() {
    let out = Scope::command_only(&["report", "--image", PINNED]);
    assert_usage_error(
        &out,
        "invalid --url: report needs the endpoint: give --url or set DEPLOYTRACK_URL (or pass --dry-run to print the report without sending it)",
    );
    assert!(out.stdout.is_empty(), "{}", out.stdout);
    let out = Scope::command_only(&["report", "--image", PINNED, "--dry-run"]);
    assert!(out.status.success(), "{}", out.stderr);
    let body: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(body["image"]["url"], PINNED);
    assert!(
        out.stderr.contains("dry run: deployment printed, not sent"),
        "{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("deployment reported"),
        "{}",
        out.stderr
    );
}

#[test]
fn report_input_is_validated_and_normalised_as_docker_does() {
    let digest = "@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let report = |extra: &[&str]| {
        let mut args = vec!["report", "--dry-run"];
        args.extend_from_slice(extra);
        Scope::command_only(&args)
    };
    let out = report(&["--image", PINNED, "--name", ""]);
    assert_usage_error(&out, "invalid --name: the name is empty");
    let nginx = format!("Nginx{digest}");
    let out = report(&["--image", &nginx]);
    assert_usage_error(
        &out,
        "invalid --image: the repository name \"library/Nginx\" must be lowercase, as Docker requires",
    );
    let out = report(&["--image", PINNED, "--platform", "Linux/AMD64"]);
    assert!(out.status.success(), "{}", out.stderr);
    let body: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(
        body["platform"],
        serde_json::json!({"os": "linux", "architecture": "amd64"})
    );
    let out = report(&["--image", PINNED, "--platform", "linux/aarch64"]);
    let body: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(body["platform"]["architecture"], "arm64");
}

#[test]
fn the_man_page_describes_every_subcommand_itself() {
    let out = Scope::command_only(&["man"]);
    assert!(out.status.success());
    assert!(out.stdout.contains(".SH SUBCOMMANDS"), "{}", out.stdout);
    assert!(
        out.stdout.contains(".SH \"DEPLOYTRACK RUN\""),
        "{}",
        out.stdout
    );
    assert!(
        !out.stdout.contains("deploytrack-run(1)"),
        "points to pages that are not shipped"
    );
}

#[test]
fn a_queue_the_user_cannot_read_is_a_permission_problem() {
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch("denied");
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("deploytrack.db"), b"").unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_deploytrack"))
        .args(["queue", "--state-dir", state.to_str().unwrap(), "list"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "permission denied: this user cannot read the queue {}/deploytrack.db; run the command as the user the agent runs as",
            state.display()
        )),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn agent_only_flags_on_one_shot_commands_exit_64_naming_the_flag() {
    let out = Scope::command_only(&[
        "report",
        "--image",
        PINNED,
        "--dry-run",
        "--report-stops",
        "--listen",
        "127.0.0.1:9464",
        "--label-selector",
        "app=web",
        "--name-template",
        "{host}/{container}",
    ]);
    assert_usage_error(
        &out,
        "report does not take --report-stops: it is a setting of `run` and `sync`",
    );
    assert!(out.stdout.is_empty(), "{}", out.stdout);
    let out = Scope::command_only(&["check", "--listen", "127.0.0.1:9464"]);
    assert_usage_error(
        &out,
        "check does not take --listen: it is a setting of `run` only",
    );
    let out = Scope::command_only(&["sync", "--once", "--resync-interval", "1m"]);
    assert_usage_error(
        &out,
        "sync does not take --resync-interval: it is a setting of `run` only",
    );
    // Each command's help lists what it takes, and nothing of the agent's.
    for (command, takes, not) in [
        (
            "report",
            &["--url", "--image", "--platform", "--retry-max"][..],
            &[
                "--listen",
                "--report-stops",
                "--label-selector",
                "--name-template",
                "--state-dir",
                "--docker-host",
                "--concurrency",
            ][..],
        ),
        (
            "check",
            &["--url", "--docker-host", "--state-dir", "--host-name"][..],
            &[
                "--listen",
                "--report-stops",
                "--concurrency",
                "--retry-max",
                "--resync-interval",
            ][..],
        ),
        (
            "sync",
            &["--once", "--url", "--report-stops", "--concurrency"][..],
            &["--listen", "--resync-interval", "--shutdown-timeout"][..],
        ),
    ] {
        let out = Scope::command_only(&[command, "--help"]);
        assert!(out.status.success(), "{}", out.stderr);
        for flag in takes {
            assert!(
                out.stdout.contains(&format!("{flag} ")),
                "{command}: {flag}\n{}",
                out.stdout
            );
        }
        for flag in not {
            assert!(
                !out.stdout.contains(flag),
                "{command}: {flag}\n{}",
                out.stdout
            );
        }
    }
    // The agent's own variables, set where a one-shot command runs too (a Compose service
    // that `docker compose exec ... check` runs in), are not the command's: no error.
    let out = with_env(
        &["check", "--docker-host", "unix:///nonexistent/docker.sock"],
        &[
            ("DEPLOYTRACK_LISTEN", "0.0.0.0:9464"),
            ("DEPLOYTRACK_REPORT_STOPS", "1"),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(out.stdout.contains("FAIL engine"), "{}", out.stdout);
}

#[test]
fn report_platforms_are_those_docker_knows_with_their_aliases() {
    let report = |platform: &str| {
        Scope::command_only(&[
            "report",
            "--dry-run",
            "--image",
            PINNED,
            "--platform",
            platform,
        ])
    };
    for (given, arch, variant) in [
        ("aarch64", "arm64", Some("v8")),
        ("linux/x86_64", "amd64", None),
        ("armhf", "arm", Some("v7")),
        ("linux/arm/7", "arm", Some("v7")),
    ] {
        let out = report(given);
        assert!(out.status.success(), "{given}: {}", out.stderr);
        let body: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
        assert_eq!(body["platform"]["architecture"], arch, "{given}");
        assert_eq!(body["platform"]["variant"].as_str(), variant, "{given}");
    }
    let out = report("linux/amd65");
    assert_usage_error(
        &out,
        "invalid --platform: \"linux/amd65\": \"amd65\" is not an architecture Docker knows",
    );
    let out = report("linux/arm/v9");
    assert_usage_error(&out, "\"v9\" is not a variant of arm");
}

#[test]
fn one_rule_per_value_whatever_its_source() {
    let dir = scratch("one-rule");
    // Yes or no: the same words from the flag, the environment and the file.
    for env in [("DEPLOYTRACK_DRY_RUN", "1"), ("DEPLOYTRACK_DRY_RUN", "yes")] {
        let out = with_env(&["report", "--image", PINNED], &[env]);
        assert!(out.status.success(), "{env:?}: {}", out.stderr);
        assert!(
            out.stderr.contains("dry run: deployment printed"),
            "{}",
            out.stderr
        );
    }
    let file = dir.join("config.toml");
    std::fs::write(&file, "dry_run = \"yes\"\n").unwrap();
    let out = Scope::command_only(&[
        "--config",
        file.to_str().unwrap(),
        "report",
        "--image",
        PINNED,
    ]);
    assert!(out.status.success(), "{}", out.stderr);
    let out = Scope::command_only(&["report", "--image", PINNED, "--dry-run", "No"]);
    assert_usage_error(&out, "invalid --url: report needs the endpoint");
    // The environment: no space at either end, from any source.
    let out = Scope::command_only(&[
        "report",
        "--dry-run",
        "--image",
        PINNED,
        "--environment",
        " prod ",
    ]);
    assert_usage_error(
        &out,
        "invalid --environment: \" prod \" begins or ends with a space",
    );
    let out = with_env(
        &["report", "--dry-run", "--image", PINNED],
        &[("DEPLOYTRACK_ENVIRONMENT", "prod ")],
    );
    assert_usage_error(
        &out,
        "invalid DEPLOYTRACK_ENVIRONMENT: \"prod \" begins or ends with a space",
    );
    std::fs::write(&file, "environment = \" prod\"\n").unwrap();
    let out = Scope::command_only(&[
        "--config",
        file.to_str().unwrap(),
        "report",
        "--dry-run",
        "--image",
        PINNED,
    ]);
    assert_usage_error(
        &out,
        "key environment: \" prod\" begins or ends with a space",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn one_authorization_header_a_password_in_the_url_beside_a_token_is_refused() {
    let out = with_env(
        &[
            "report",
            "--image",
            PINNED,
            "--url",
            "https://deploy:pa55word@example.com/hook",
        ],
        &[("DEPLOYTRACK_TOKEN", "tok")],
    );
    assert_usage_error(
        &out,
        "invalid --url: https://<redacted>@example.com/hook holds a user name and password (user:password@), and the token from DEPLOYTRACK_TOKEN is set: a request would carry both in two Authorization headers; remove user:password@ from the URL",
    );
    assert!(!out.stderr.contains("pa55word"), "{}", out.stderr);
}

#[test]
fn the_smaller_mistakes_name_their_fix() {
    let dir = scratch("hints");
    // A URL without its scheme.
    let out = Scope::command_only(&[
        "report",
        "--image",
        PINNED,
        "--url",
        "webhook.example.com/atomist/resource/1",
    ]);
    assert_usage_error(
        &out,
        "invalid --url: \"webhook.example.com/atomist/resource/1\" is not a URL: it has no scheme; an endpoint's URL starts with https:// (or http://), as in https://webhook.example.com/atomist/resource/1",
    );
    // The token in the config file.
    let file = dir.join("config.toml");
    std::fs::write(
        &file,
        "url = \"https://example.com/x\"\ntoken = \"s3cret\"\n",
    )
    .unwrap();
    let out = Scope::command_only(&["--config", file.to_str().unwrap(), "run"]);
    assert_usage_error(
        &out,
        "key token: there is no such setting: the token never goes in the config file; write it to a file of its own (mode 0600) and set token_file = ",
    );
    assert!(!out.stderr.contains("s3cret"), "{}", out.stderr);
    // A queue that is not there.
    let missing = dir.join("nowhere");
    let out = Scope::command_only(&["queue", "--state-dir", missing.to_str().unwrap(), "list"]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!(
            "deploytrack: no queue at {}/deploytrack.db: no agent has run with this state dir; give the agent's with --state-dir",
            missing.display()
        )),
        "{}",
        out.stderr
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The agent in a container as packaging/compose.yaml runs it (the host's /var/run at
/// /host/run, the token as a file secret), but without the socket's group: the errors name
/// the Compose fix (DOCKER_GID, group_add), not the host's (usermod); with the group, both
/// work. The binary under test runs in a Debian 12 container as the image's user 65532.
#[test]
fn in_a_container_permission_errors_name_the_compose_fix() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    ENGINE.ready();
    let dir = scratch("compose-fix");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let token = dir.join("token");
    std::fs::write(&token, "tok\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o440)).unwrap();
    let socket_gid = std::fs::metadata("/var/run/docker.sock").unwrap().gid();
    let binary = env!("CARGO_BIN_EXE_deploytrack");
    let in_container = |group: Option<u32>, command: &str| {
        let mount = |from: &str, to: &str| format!("{from}:{to}:ro");
        let mut args = vec![
            "run".to_string(),
            "--rm".into(),
            "--network".into(),
            "none".into(),
            "--label".into(),
            "deploytrack.enable=false".into(),
            "--user".into(),
            "65532:65532".into(),
            "-v".into(),
            mount(binary, "/usr/local/bin/deploytrack"),
            "-v".into(),
            mount("/var/run", "/host/run"),
            "-v".into(),
            mount(token.to_str().unwrap(), "/run/secrets/deploytrack_token"),
            "-e".into(),
            "DOCKER_HOST=unix:///host/run/docker.sock".into(),
            "-e".into(),
            "DEPLOYTRACK_TOKEN_FILE=/run/secrets/deploytrack_token".into(),
            "-e".into(),
            "DEPLOYTRACK_URL=http://127.0.0.1:9/x".into(),
            "-e".into(),
            "DEPLOYTRACK_STATE_DIR=/tmp/state".into(),
        ];
        if let Some(gid) = group {
            args.extend(["--group-add".into(), gid.to_string()]);
        }
        args.extend([
            "--entrypoint".into(),
            "/usr/local/bin/deploytrack".into(),
            "deploytrack-test/systemd:bookworm".into(),
            command.into(),
        ]);
        let out = ENGINE.docker_command().args(&args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // DOCKER_GID unset: neither the token (root's, 0440) nor the socket can be read.
    let (code, stdout, _) = in_container(None, "check");
    assert_eq!(code, Some(1), "{stdout}");
    let line = |prefix: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} in:\n{stdout}"))
            .to_string()
    };
    let token_line = line("FAIL token: invalid DEPLOYTRACK_TOKEN_FILE: cannot read /run/secrets/deploytrack_token: Permission denied");
    assert!(
        token_line.contains("(it is owned by 0:0 with mode 440); the agent runs in a container")
            && token_line.contains("DOCKER_GID")
            && token_line.contains("group_add"),
        "{token_line}"
    );
    let engine_line = line("FAIL engine: permission denied on the Docker socket /host/run/docker.sock: the agent runs in a container");
    assert!(
        engine_line.contains("set DOCKER_GID") && engine_line.contains("group_add"),
        "{engine_line}"
    );
    assert!(!stdout.contains("usermod"), "{stdout}");
    // The agent itself stops at the token, with the same sentence.
    let (code, _, stderr) = in_container(None, "run");
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains("DOCKER_GID") && stderr.contains("group_add"),
        "{stderr}"
    );
    // As INSTALL.md says: the token 0440 in the socket's group, and that group added.
    std::os::unix::fs::chown(&token, None, Some(socket_gid)).unwrap();
    let (_, stdout, _) = in_container(Some(socket_gid), "check");
    assert!(
        stdout
            .lines()
            .any(|l| l == "OK   token: from DEPLOYTRACK_TOKEN_FILE /run/secrets/deploytrack_token"),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("OK   engine: reachable at unix:///host/run/docker.sock")),
        "{stdout}"
    );
    // 0440 is what INSTALL.md prescribes: no warning about the token's mode.
    assert!(!stdout.contains("WARN token"), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The .deb's post-install script, run as dpkg runs it (`postinst configure`) in a fresh
/// Debian 12: it says what comes next until the token exists, and warns when the host has
/// no `docker` group, without which the unit cannot start.
#[test]
fn the_package_says_what_comes_next_and_warns_without_a_docker_group() {
    ENGINE.ready();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/debian/postinst");
    let configure = |before: &str| {
        let out = ENGINE
            .docker_command()
            .args([
                "run",
                "--rm",
                "--network",
                "none",
                "--label",
                "deploytrack.enable=false",
                "-v",
                &format!("{script}:/postinst:ro"),
                "--entrypoint",
                "/bin/sh",
                "deploytrack-test/systemd:bookworm",
                "-c",
                &format!("set -e; {before} sh /postinst configure"),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (stdout, stderr) = configure("");
    assert!(
        stderr.contains("deploytrack: warning: this host has no 'docker' group, which the service runs in to reach the Docker socket: it cannot start without it (status 216/GROUP)"),
        "{stderr}"
    );
    assert!(
        stdout.starts_with(
            "deploytrack is installed and enabled; the service starts once it has its token:\n  1. install -m 0600 /dev/stdin /etc/deploytrack/token"
        ) && stdout.contains("systemctl start deploytrack"),
        "{stdout}"
    );
    // With the group and the token (an upgrade of a configured host): nothing to say.
    let (stdout, stderr) = configure(
        "groupadd -r docker; install -d /etc/deploytrack; echo tok > /etc/deploytrack/token;",
    );
    assert!(!stderr.contains("warning"), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
}
