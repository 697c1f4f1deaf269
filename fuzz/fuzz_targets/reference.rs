//! `ImageRef::parse` and `validate_digest` on arbitrary text.
//!
//! Never panics; a digest is accepted exactly when it is `sha256:` and 64 lowercase hex
//! digits; a parsed reference is normalised: its parts re-parse to the same `ImageRef`,
//! `pinned()` round-trips, and normalising again changes nothing.

#![no_main]

use deploytrack::reference::{validate_digest, ImageRef};
use libfuzzer_sys::fuzz_target;

fn is_sha256_digest(text: &str) -> bool {
    text.len() == 71
        && text.starts_with("sha256:")
        && text[7..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn reparse(text: &str) -> ImageRef {
    ImageRef::parse(text).unwrap_or_else(|e| panic!("{text:?} no longer parses: {e}"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };

    assert_eq!(
        validate_digest(text).is_ok(),
        is_sha256_digest(text),
        "validate_digest({text:?})"
    );

    let Ok(r) = ImageRef::parse(text) else {
        return;
    };

    // The parts are what they say they are.
    assert!(
        !r.repository.is_empty() && !r.repository.contains('@'),
        "{text:?} -> {r:?}"
    );
    let (registry, path) = r
        .repository
        .split_once('/')
        .unwrap_or_else(|| panic!("{text:?} -> repository without a registry: {r:?}"));
    assert!(
        !registry.is_empty() && !path.is_empty(),
        "{text:?} -> {r:?}"
    );
    assert!(
        !path.contains(':'),
        "{text:?} -> a colon in the repository path: {r:?}"
    );
    if registry == "docker.io" {
        assert!(
            path.contains('/'),
            "{text:?} -> docker.io without a namespace: {r:?}"
        );
    }
    assert_ne!(registry, "index.docker.io", "{text:?} -> {r:?}");
    if let Some(tag) = &r.tag {
        assert!(
            !tag.is_empty() && !tag.contains([':', '/', '@']),
            "{text:?} -> tag {tag:?}"
        );
    }
    if let Some(digest) = &r.digest {
        assert!(is_sha256_digest(digest), "{text:?} -> digest {digest:?}");
    }
    assert_eq!(r.digest.is_some(), text.contains('@'), "{text:?} -> {r:?}");

    // Normalised: the repository alone, with its tag, and with its digest re-parse to the
    // same parts, so normalising again changes nothing.
    let bare = reparse(&r.repository);
    assert_eq!(
        bare,
        ImageRef {
            repository: r.repository.clone(),
            tag: None,
            digest: None,
        },
        "{text:?} -> {r:?}: the repository is not normalised"
    );
    let mut full = r.repository.clone();
    if let Some(tag) = &r.tag {
        full.push(':');
        full.push_str(tag);
        assert_eq!(
            reparse(&full),
            ImageRef {
                digest: None,
                ..r.clone()
            },
            "{text:?} -> {r:?}: repository:tag"
        );
    }
    if let Some(digest) = &r.digest {
        full.push('@');
        full.push_str(digest);
    }
    assert_eq!(reparse(&full), r, "{text:?} -> {r:?}: re-parsing {full:?}");

    // `pinned()` is `repository@digest`, and it parses back to the same repository and digest.
    match r.pinned() {
        None => assert!(r.digest.is_none()),
        Some(pinned) => {
            assert_eq!(
                pinned,
                format!(
                    "{}@{}",
                    r.repository,
                    r.digest.as_deref().unwrap_or_default()
                )
            );
            let back = reparse(&pinned);
            assert_eq!(
                back,
                ImageRef {
                    tag: None,
                    ..r.clone()
                },
                "{text:?} -> pinned {pinned:?}"
            );
            assert_eq!(back.pinned(), Some(pinned));
        }
    }
});
