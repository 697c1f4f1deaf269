//! The source revision a run measured or tested: HEAD, and whether the files the binary is
//! built from have changes not committed.

use std::process::Command;

pub struct Revision {
    /// `git rev-parse --short=12 HEAD`; none outside a git checkout.
    pub head: Option<String>,
    /// src/ or Cargo.* differ from HEAD: the binary is the working tree's.
    pub dirty: bool,
}

/// The revision of the checkout this library is part of (the project's root).
pub fn revision() -> Revision {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let head = git(&["-C", dir, "rev-parse", "--short=12", "HEAD"]).filter(|h| !h.is_empty());
    let dirty = git(&[
        "-C",
        dir,
        "status",
        "--porcelain",
        "--",
        "src",
        "Cargo.toml",
        "Cargo.lock",
    ])
    .is_some_and(|s| !s.is_empty());
    Revision { head, dirty }
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}
