//! Bad input: one sentence naming the setting, exit 64, no panic.

use crate::common::*;

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
        ("bool-as-string.toml", b"dry_run = \"yes\"\n", "key dry_run"),
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
            &[("DEPLOYTRACK_DRY_RUN", "1")],
            "invalid value '1' for '--dry-run [<BOOL>]' (from the environment variable DEPLOYTRACK_DRY_RUN); [possible values: true, false]",
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
