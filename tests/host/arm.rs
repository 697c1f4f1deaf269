//! ARM edge nodes: the arm64 and armhf builds (packaging/build-cross.sh) and the
//! multi-platform image localhost:5000/deploytrack:<version> (linux/amd64, linux/arm64,
//! linux/arm/v7; packaging/build-image.sh --platforms), as `scripts/test-artifacts.sh --arm`
//! builds them, once per change. ARM code runs here under emulation: qemu-user through
//! binfmt_misc with the F flag, so that containers use it too (scripts/test-arm-env.sh).
//!
//! Emulation is slow, so these are few and short: the packages and the index are checked
//! without running anything; each ARM agent (arm64, arm/v7) runs once, as Compose runs it
//! with `platform:`, reports two containers of other platforms and stops; the arm64 .deb
//! installs with dpkg -i in Debian 12 arm64 and runs `--version` and `check` as its user.
//! Systemd is not booted under emulation: the unit is tested natively (packaging.rs).
//!
//! Like the other packaging tests these run on the classic engine (Docker 20.10), whose
//! containers share the host's network and so reach the test's receiver on loopback.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::{json, Value};

use deploytrack_test_support::*;

use crate::packaging::{
    admin_ready, assert_not_reported, build_artifacts, check_agent_container, docker_on,
    group_token_file, inspect, logs, socket_gid, succeed, ComposeProject, ImageFiles, CLASSIC,
    NONROOT, STATE,
};
use crate::ENGINE;

/// Debian 12 arm64 (minbase and adduser), made by scripts/test-arm-env.sh.
const DEBIAN_ARM64: &str = "localhost:5000/deploytrack-test/debian:bookworm-arm64";
/// The newest glibc the ARM builds may need: the floor README and INSTALL.md promise
/// (Debian 12, Ubuntu 22.04, Raspberry Pi OS bookworm).
const GLIBC_FLOOR: &str = "2.34";

/// What `scripts/test-artifacts.sh --arm` built.
struct ArmArtifacts {
    version: String,
    /// The classic engine's amd64 image (packaging/build-image.sh), the contract's reference.
    image: String,
    arm64_bin: PathBuf,
    arm64_deb: PathBuf,
    armhf_bin: PathBuf,
    armhf_deb: PathBuf,
    glibc: String,
    multi_image: String,
}

fn arm_artifacts() -> &'static ArmArtifacts {
    static BUILT: OnceLock<Result<ArmArtifacts, String>> = OnceLock::new();
    assert_eq!(
        ENGINE,
        Engine::Classic,
        "the ARM tests use the classic engine only (tests/host runs on it)"
    );
    ENGINE.ready();
    let built = BUILT.get_or_init(|| {
        let field = build_artifacts(&["--arm"])?;
        Ok(ArmArtifacts {
            version: field("version")?,
            image: field("image")?,
            arm64_bin: field("arm64_bin")?.into(),
            arm64_deb: field("arm64_deb")?.into(),
            armhf_bin: field("armhf_bin")?.into(),
            armhf_deb: field("armhf_deb")?.into(),
            glibc: field("glibc")?,
            multi_image: field("multi_image")?,
        })
    });
    match built {
        Ok(artifacts) => artifacts,
        Err(e) => panic!(
            "the ARM tests need the cross builds, qemu and the multi-platform image (CI={}): {e}",
            std::env::var("CI").unwrap_or_default()
        ),
    }
}

/// One platform of the index: what Docker calls it, and what it is made of.
struct Platform {
    docker: &'static str,
    architecture: &'static str,
    variant: Option<&'static str>,
    deb_arch: &'static str,
    /// ELF class (1: 32-bit, 2: 64-bit) and e_machine.
    elf: (u8, u16),
    /// The loader the binary names (PT_INTERP), under the link to usr/ that makes it so.
    loader: (&'static str, &'static str),
    /// The emulator that runs it here (the binfmt handler's interpreter).
    qemu: &'static str,
}

const AMD64: Platform = Platform {
    docker: "linux/amd64",
    architecture: "amd64",
    variant: None,
    deb_arch: "amd64",
    elf: (2, 0x3e),
    loader: ("lib64", "usr/lib64/ld-linux-x86-64.so.2"),
    qemu: "",
};
const ARM64: Platform = Platform {
    docker: "linux/arm64",
    architecture: "arm64",
    variant: None,
    deb_arch: "arm64",
    elf: (2, 0xb7),
    loader: ("lib", "usr/lib/ld-linux-aarch64.so.1"),
    qemu: "qemu-aarch64-static",
};
const ARMV7: Platform = Platform {
    docker: "linux/arm/v7",
    architecture: "arm",
    variant: Some("v7"),
    deb_arch: "armhf",
    elf: (1, 0x28),
    loader: ("lib", "usr/lib/ld-linux-armhf.so.3"),
    qemu: "qemu-arm-static",
};

/// An ELF file's class and machine, from its header.
fn elf_kind(bytes: &[u8]) -> (u8, u16) {
    assert!(
        bytes.len() > 20 && bytes[..4] == *b"\x7fELF",
        "not an ELF file"
    );
    (bytes[4], u16::from_le_bytes([bytes[18], bytes[19]]))
}

/// "2.34" < "2.36", numerically.
fn version_le(a: &str, b: &str) -> bool {
    let parts = |v: &str| -> Vec<u32> { v.split('.').map(|p| p.parse().unwrap()).collect() };
    parts(a) <= parts(b)
}

/// The index in the registry, as `docker buildx imagetools inspect --raw` prints it.
fn raw_index(image: &str) -> Value {
    let text = succeed(docker_on(
        CLASSIC,
        &["buildx", "imagetools", "inspect", "--raw", image],
    ));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{image}: {e}: {text}"))
}

/// The reference by digest of the manifest of `platform` in the index of `image`.
fn platform_reference(image: &str, platform: &Platform) -> String {
    let index = raw_index(image);
    let repository = image.rsplit_once(':').unwrap().0;
    let manifest = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| {
            m["platform"]["architecture"] == platform.architecture
                && m["platform"]["variant"].as_str() == platform.variant
        })
        .unwrap_or_else(|| panic!("{image} has no {} manifest: {index}", platform.docker));
    format!("{repository}@{}", manifest["digest"].as_str().unwrap())
}

// ------------------------------------------------------------------------ without emulation

#[test]
fn cross_packages_are_for_their_architecture_and_glibc_floor() {
    let artifacts = arm_artifacts();
    assert!(
        version_le(&artifacts.glibc, GLIBC_FLOOR),
        "the ARM binaries need glibc {}, newer than the documented floor {GLIBC_FLOOR}",
        artifacts.glibc
    );
    for (deb, bin, platform) in [
        (&artifacts.arm64_deb, &artifacts.arm64_bin, &ARM64),
        (&artifacts.armhf_deb, &artifacts.armhf_bin, &ARMV7),
    ] {
        let field = |name: &str| {
            let mut command = Command::new("dpkg-deb");
            command.arg("-f").arg(deb).arg(name);
            succeed(command)
        };
        assert_eq!(field("Package"), "deploytrack");
        assert_eq!(field("Version"), format!("{}-1", artifacts.version));
        assert_eq!(
            field("Architecture"),
            platform.deb_arch,
            "{}",
            deb.display()
        );
        let depends = field("Depends");
        let libc = depends
            .split(", ")
            .find_map(|d| d.strip_prefix("libc6 (>= "))
            .and_then(|v| v.strip_suffix(')'))
            .unwrap_or_else(|| {
                panic!("{}: no libc6 (>= ...) in Depends: {depends}", deb.display())
            });
        assert!(
            version_le(libc, GLIBC_FLOOR),
            "{}: Depends {depends}",
            deb.display()
        );
        assert!(depends.contains("adduser"), "{depends}");
        // The binary in the package is the cross build, for the right machine.
        let mut extract = Command::new("sh");
        extract.arg("-c").arg(format!(
            "dpkg-deb --fsys-tarfile '{}' | tar -xOf - ./usr/bin/deploytrack | sha256sum",
            deb.display()
        ));
        let mut sum = Command::new("sha256sum");
        sum.arg(bin);
        assert_eq!(
            succeed(extract).split_whitespace().next(),
            succeed(sum).split_whitespace().next(),
            "the binary in {} is not {}",
            deb.display(),
            bin.display()
        );
        assert_eq!(elf_kind(&std::fs::read(bin).unwrap()), platform.elf);
    }
}

#[test]
fn multi_platform_image_is_one_index_whose_images_keep_the_contract() {
    let artifacts = arm_artifacts();
    let scope = Scope::new(ENGINE, "arm-index");
    let index = raw_index(&artifacts.multi_image);
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    let mut platforms: Vec<String> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let p = &m["platform"];
            let variant = p["variant"].as_str().map(|v| format!("/{v}"));
            format!(
                "{}/{}{}",
                p["os"].as_str().unwrap(),
                p["architecture"].as_str().unwrap(),
                variant.unwrap_or_default()
            )
        })
        .collect();
    platforms.sort();
    assert_eq!(platforms, ["linux/amd64", "linux/arm/v7", "linux/arm64"]);
    // As a person would read it.
    let shown = succeed(docker_on(
        CLASSIC,
        &["buildx", "imagetools", "inspect", &artifacts.multi_image],
    ));
    for platform in [&AMD64, &ARM64, &ARMV7] {
        assert!(
            shown.lines().any(|l| l.split_whitespace().collect::<Vec<_>>()
                == ["Platform:", platform.docker]),
            "imagetools inspect does not list {}:\n{shown}",
            platform.docker
        );
    }

    // The amd64 image of the classic engine is the contract's reference.
    let reference = inspect(CLASSIC, &artifacts.image)["Config"].clone();
    for platform in [&AMD64, &ARM64, &ARMV7] {
        let image = platform_reference(&artifacts.multi_image, platform);
        succeed(docker_on(
            CLASSIC,
            &["pull", "-q", "--platform", platform.docker, &image],
        ));
        let inspected = inspect(CLASSIC, &image);
        assert_eq!(inspected["Os"], "linux", "{image}");
        assert_eq!(inspected["Architecture"], platform.architecture, "{image}");
        assert_eq!(
            inspected["Variant"].as_str().filter(|v| !v.is_empty()),
            platform.variant,
            "{image}"
        );
        let config = &inspected["Config"];
        for key in [
            "User",
            "Entrypoint",
            "Cmd",
            "Volumes",
            "ExposedPorts",
            "Labels",
        ] {
            assert_eq!(config[key], reference[key], "{}: {key}", platform.docker);
        }
        let env = |c: &Value| -> Vec<String> {
            let mut env: Vec<String> = c["Env"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .filter(|v| !v.starts_with("PATH="))
                .collect();
            env.sort();
            env
        };
        assert_eq!(env(config), env(&reference), "{}: Env", platform.docker);
        assert_eq!(config["User"], format!("{NONROOT}:{NONROOT}"));
        assert!(config["Volumes"].get(STATE).is_some());

        // Its files: the contract's, and its own architecture's binary and packages.
        let files = ImageFiles::export(CLASSIC, &image, &scope.dir);
        files.keep_the_contract();
        assert_eq!(
            elf_kind(&files.read("usr/bin/deploytrack")),
            platform.elf,
            "{}: the binary",
            platform.docker
        );
        let (link, loader) = platform.loader;
        assert!(
            files.entry(loader).is_some()
                && files
                    .entry(link)
                    .is_some_and(|(mode, _)| mode.starts_with('l')),
            "{}: no loader /{loader} behind the link /{link}",
            platform.docker
        );
        for package in ["libc6", "libgcc-s1"] {
            let status =
                String::from_utf8(files.read(&format!("var/lib/dpkg/status.d/{package}"))).unwrap();
            assert!(
                status.lines().any(|l| l == format!("Package: {package}"))
                    && status.lines().any(|l| l == "Status: install ok installed")
                    && status.lines().any(|l| l.starts_with("Version: ")),
                "{}: {package}'s status entry:\n{status}",
                platform.docker
            );
            assert!(
                status
                    .lines()
                    .any(|l| l == format!("Architecture: {}", platform.deb_arch)),
                "{}: {package} is not the {} package:\n{status}",
                platform.docker,
                platform.deb_arch
            );
        }
        let certs = files.read("var/lib/dpkg/status.d/ca-certificates");
        assert!(String::from_utf8_lossy(&certs).contains("Architecture: all"));
        if platform.deb_arch == "arm64" {
            assert_eq!(
                files.read("usr/bin/deploytrack"),
                std::fs::read(&artifacts.arm64_bin).unwrap()
            );
        } else if platform.deb_arch == "armhf" {
            assert_eq!(
                files.read("usr/bin/deploytrack"),
                std::fs::read(&artifacts.armhf_bin).unwrap()
            );
        }
    }
}

// ---------------------------------------------------------------------------- emulated

/// The platform's image of the index, run as Compose runs it with `platform:` set (the
/// packaged compose.yaml with the test's override: the host's network, to reach the
/// receiver). It reports an amd64 container and an arm64/v8 one with their own platforms,
/// not its own, and stops on SIGTERM with exit status 0.
async fn agent_reports_what_runs_beside_it(platform: &Platform) {
    let artifacts = arm_artifacts();
    let scope = Scope::new(ENGINE, &format!("arm-{}", platform.deb_arch));
    let image = platform_reference(&artifacts.multi_image, platform);
    let receiver = Receiver::start().await;
    let gid = socket_gid(Path::new("/var/run/docker.sock"));
    let token = group_token_file(&scope, gid);
    let listen = unused_addr();
    let agent_hostname = scope.name("agent-host");
    let environment = format!("{}-test", platform.deb_arch);
    let project = ComposeProject::new(
        &scope,
        CLASSIC,
        &format!(
            r#"services:
  deploytrack:
    platform: {platform}
    network_mode: host
    hostname: {agent_hostname}
    ports: !reset []
    environment:
      DEPLOYTRACK_LISTEN: "{listen}"
      DEPLOYTRACK_LABEL_SELECTOR: "{selector}"
      DEPLOYTRACK_RETRY_INITIAL: 200ms
    labels:
      {RUN_LABEL}: "{id}"
"#,
            platform = platform.docker,
            selector = scope.selector(),
            id = scope.id
        ),
        &[
            ("DEPLOYTRACK_IMAGE", &image),
            ("DEPLOYTRACK_URL", &receiver.url()),
            ("DEPLOYTRACK_ENVIRONMENT", &environment),
            ("DEPLOYTRACK_TOKEN_PATH", token.to_str().unwrap()),
            ("DOCKER_GID", &gid.to_string()),
        ],
    );
    project.up(&[]);
    let agent = project.container(None).await;
    admin_ready(listen).await;

    // It is that platform's image, and its process is that platform's code under qemu.
    let container = inspect(CLASSIC, &agent);
    assert_eq!(
        container["Image"],
        inspect(CLASSIC, &image)["Id"],
        "the agent does not run {image}"
    );
    let pid = container["State"]["Pid"].as_u64().unwrap();
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert!(
        exe.to_string_lossy().ends_with(platform.qemu),
        "the agent's process is {}, not {}",
        exe.display(),
        platform.qemu
    );

    // Two containers of other platforms: each is reported with its own.
    let host = ENGINE.host_name();
    for (short, image, want) in [
        (
            "amd64",
            APP1,
            json!({"os": "linux", "architecture": "amd64"}),
        ),
        (
            "arm64",
            ARM1,
            json!({"os": "linux", "architecture": "arm64", "variant": "v8"}),
        ),
    ] {
        let name = scope.name(short);
        scope.run(&["--name", &name], image);
        let report = receiver
            .accepted_report(
                &format!("the {short} container, from the {} agent", platform.docker),
                &format!("{host}/{name}"),
            )
            .await;
        let repository = image.rsplit_once(':').unwrap().0;
        assert_eq!(report.url(), ENGINE.repo_digest(image, repository));
        assert_eq!(report.body["platform"], want, "{}", report.body);
        assert_eq!(report.environment(), environment);
        assert_eq!(
            report.authorization.as_deref(),
            Some(format!("Bearer {TOKEN}").as_str())
        );
    }
    let own_name = container["Name"].as_str().unwrap().to_string();
    assert_not_reported(&receiver, &own_name);
    check_agent_container(CLASSIC, &agent, gid, &project.volume());

    // SIGTERM (docker stop), and a clean exit well within the grace period.
    succeed(docker_on(CLASSIC, &["stop", "-t", "30", &agent]));
    let state = &inspect(CLASSIC, &agent)["State"];
    assert_eq!(
        (state["ExitCode"].as_i64(), state["OOMKilled"].as_bool()),
        (Some(0), Some(false)),
        "{state}\n{}",
        logs(CLASSIC, &agent)
    );
    assert!(
        logs(CLASSIC, &agent).contains("stopped"),
        "{}",
        logs(CLASSIC, &agent)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn arm64_image_reports_the_platform_of_what_runs_beside_it() {
    agent_reports_what_runs_beside_it(&ARM64).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn armv7_image_reports_the_platform_of_what_runs_beside_it() {
    agent_reports_what_runs_beside_it(&ARMV7).await;
}

/// Debian 12 arm64 in a container (no systemd): the .deb installs with dpkg -i, and the
/// binary runs as the package's user, which reaches the engine through the docker group.
#[tokio::test(flavor = "multi_thread")]
async fn arm64_deb_installs_and_checks_in_debian_12_arm64() {
    let artifacts = arm_artifacts();
    let scope = Scope::new(ENGINE, "arm-deb");
    let receiver = Receiver::start().await;
    let gid = socket_gid(Path::new("/var/run/docker.sock"));
    let name = scope.name("debian-arm64");
    succeed(docker_on(
        CLASSIC,
        &[
            "run",
            "-d",
            "--name",
            &name,
            "--platform",
            "linux/arm64",
            "--label",
            &scope.selector(),
            "--label",
            "deploytrack.enable=false",
            "--network",
            "host",
            "-v",
            "/var/run/docker.sock:/var/run/docker.sock",
            DEBIAN_ARM64,
            "sleep",
            "infinity",
        ],
    ));
    let sh = |script: &str| -> String {
        succeed(docker_on(CLASSIC, &["exec", &name, "sh", "-c", script]))
    };
    assert_eq!(sh("dpkg --print-architecture; uname -m"), "arm64\naarch64");
    assert!(sh("cat /etc/debian_version").starts_with("12."));

    sh(&format!("groupadd -g {gid} docker"));
    let mut put = docker_on(
        CLASSIC,
        &[
            "exec",
            "-i",
            &name,
            "sh",
            "-c",
            "cat > /root/deploytrack.deb",
        ],
    );
    put.stdin(std::fs::File::open(&artifacts.arm64_deb).unwrap());
    succeed(put);
    sh("dpkg -i /root/deploytrack.deb");
    assert_eq!(
        sh("dpkg-query -W -f '${Architecture} ${Version} ${db:Status-Status}' deploytrack"),
        format!("arm64 {}-1 installed", artifacts.version)
    );
    assert_eq!(
        sh("runuser -u deploytrack -- deploytrack --version"),
        format!("deploytrack {}", artifacts.version)
    );

    // `check` as the service would run it: the package's config file with the endpoint, the
    // token as the credential `token` (systemd's $CREDENTIALS_DIRECTORY, made by hand here),
    // the user's own state directory, the engine through the docker group.
    sh(&format!(
        "cat >> /etc/deploytrack/config.toml <<'EOF'
url = \"{url}\"
environment = \"arm64-deb-test\"
label_selector = [\"{selector}\"]
EOF
install -d -m 0500 -o deploytrack /run/credentials/deploytrack.service
printf '%s\\n' '{TOKEN}' | install -m 0400 -o deploytrack /dev/stdin /run/credentials/deploytrack.service/token",
        url = receiver.url(),
        selector = scope.selector(),
    ));
    let check = sh(
        "runuser -u deploytrack -- env CREDENTIALS_DIRECTORY=/run/credentials/deploytrack.service \
         deploytrack --config /etc/deploytrack/config.toml check",
    );
    // It exits 0 (succeed) with a line per check and none failed. Warnings (a host name
    // that looks like a default, say) are about this test machine.
    let lines: Vec<&str> = check.lines().collect();
    assert!(
        lines.iter().filter(|l| l.starts_with("OK")).count() >= 5
            && !lines.iter().any(|l| l.starts_with("FAIL")),
        "{check}"
    );
    for what in [
        "/etc/deploytrack/config.toml",
        "credential",
        "unix:///var/run/docker.sock",
        "/var/lib/deploytrack",
        &receiver.url(),
    ] {
        assert!(check.contains(what), "check does not name {what}:\n{check}");
    }
    assert!(
        receiver
            .received()
            .iter()
            .any(|r| r.authorization.as_deref() == Some(format!("Bearer {TOKEN}").as_str())),
        "check did not reach the endpoint with the token"
    );
}
