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
    assert_usage_error(&out, "--config");
    let cases: &[(&str, &[u8], &str)] = &[
        ("not-toml.toml", b"this is not = = toml [", "--config"),
        ("binary.toml", b"\x00\xff\xfe\x01garbage", "--config"),
        ("bool-as-string.toml", b"dry_run = \"yes\"\n", "--config"),
        (
            "string-not-list.toml",
            b"label_selector = \"a=b\"\n",
            "--config",
        ),
        ("negative.toml", b"concurrency = -4\n", "--config"),
        ("empty-url.toml", b"url = \"\"\n", "--url"),
        (
            "absurd.toml",
            b"retry_initial = \"1000000h\"\n",
            "--retry-initial",
        ),
        ("table.toml", b"[url]\nhost = \"x\"\n", "--config"),
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
    // The file's bad value is named when nothing overrides it...
    let out = Scope::command_only(&["--config", file.to_str().unwrap(), "run"]);
    assert_usage_error(&out, "--retry-max");
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
    assert_usage_error(&out, "invalid name_template in the config file");
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
