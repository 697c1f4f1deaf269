//! Docker image references: `nginx` is `docker.io/library/nginx`, a registry is the first
//! component only when it looks like a host, and a digest is `sha256:` plus 64 hex digits.
//!
//! The rules are the Docker CLI's (`ParseNormalizedNamed` in github.com/distribution/reference).
//! The parser is more lenient than that grammar about the characters of a name: it reads
//! references the engine has already accepted, and only has to split and normalise them.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// Fully qualified repository, e.g. `docker.io/library/nginx` or `localhost:5000/demo/app`.
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    #[error("{0:?} is not an image reference")]
    Malformed(String),
    #[error("{0:?} is not a sha256 digest (sha256: followed by 64 lowercase hex digits)")]
    BadDigest(String),
    /// A reference to report must name one image: `report --image` takes no tag alone.
    #[error("{0:?} is not pinned by digest (REPOSITORY[:TAG]@sha256:...)")]
    Unpinned(String),
    /// The repository's path (after the registry) as written.
    #[error("the repository name {0:?} must be lowercase, as Docker requires")]
    UppercaseRepository(String),
    #[error("{0:?} is not a repository name component (lowercase letters and digits, separated by ., _, __ or -)")]
    BadComponent(String),
    #[error("{0:?} is not a tag")]
    BadTag(String),
}

impl ImageRef {
    pub fn parse(text: &str) -> Result<Self, ReferenceError> {
        let malformed = || ReferenceError::Malformed(text.to_string());
        if text.is_empty() || text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(malformed());
        }
        let (name_tag, digest) = match text.split_once('@') {
            Some((n, d)) => {
                validate_digest(d)?;
                (n, Some(d.to_string()))
            }
            None => (text, None),
        };
        // A colon after the last slash separates the tag; one before it is a registry port.
        let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_tag[last_slash..].rfind(':') {
            Some(i) => (
                &name_tag[..last_slash + i],
                Some(name_tag[last_slash + i + 1..].to_string()),
            ),
            None => (name_tag, None),
        };
        if name.is_empty()
            || name.starts_with('/')
            || name.ends_with('/')
            || tag.as_deref() == Some("")
        {
            return Err(malformed());
        }
        // Only a registry holds a colon (its port): one in the path would be read as a tag
        // once the repository is written out again (`a:b:c` is not `docker.io/library/a:b`).
        if split_registry(name).1.contains(':') {
            return Err(malformed());
        }
        Ok(ImageRef {
            repository: normalize_repository(name),
            tag,
            digest,
        })
    }

    /// `repository@digest`, the form reported as `image.url`.
    pub fn pinned(&self) -> Option<String> {
        self.digest
            .as_ref()
            .map(|d| format!("{}@{d}", self.repository))
    }
}

pub fn validate_digest(digest: &str) -> Result<(), ReferenceError> {
    let ok = digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    });
    if ok {
        Ok(())
    } else {
        Err(ReferenceError::BadDigest(digest.to_string()))
    }
}

/// The first component is a registry when it looks like a host (a `.` or a `:`, or
/// `localhost`) or holds uppercase letters, which Docker Hub namespaces never do.
fn split_registry(name: &str) -> (Option<&str>, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.to_lowercase() != first =>
        {
            (Some(first), rest)
        }
        _ => (None, name),
    }
}

fn normalize_repository(name: &str) -> String {
    let (registry, path) = split_registry(name);
    let registry = match registry {
        None | Some("index.docker.io" | "registry-1.docker.io") => "docker.io",
        Some(registry) => registry,
    };
    if registry == "docker.io" && !path.contains('/') {
        format!("docker.io/library/{path}")
    } else {
        format!("{registry}/{path}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn normalizes_docker_hub_names() {
        assert_eq!(
            ImageRef::parse("nginx").unwrap().repository,
            "docker.io/library/nginx"
        );
        assert_eq!(
            ImageRef::parse("nginx:1.25").unwrap().tag.as_deref(),
            Some("1.25")
        );
        assert_eq!(
            ImageRef::parse("user/app").unwrap().repository,
            "docker.io/user/app"
        );
        assert_eq!(
            ImageRef::parse("docker.io/nginx").unwrap().repository,
            "docker.io/library/nginx"
        );
        assert_eq!(
            ImageRef::parse("index.docker.io/library/nginx:latest")
                .unwrap()
                .repository,
            "docker.io/library/nginx"
        );
    }

    #[test]
    fn registry_with_port_is_not_a_tag() {
        let r = ImageRef::parse("localhost:5000/demo/app").unwrap();
        assert_eq!(r.repository, "localhost:5000/demo/app");
        assert_eq!(r.tag, None);
        let r = ImageRef::parse("localhost:5000/demo/app:2").unwrap();
        assert_eq!(r.tag.as_deref(), Some("2"));
    }

    #[test]
    fn a_colon_in_the_path_is_malformed() {
        // `nginx::1` once normalised to `docker.io/library/nginx:`, which does not parse back,
        // and `a:b:c@digest` to a url that parses back as another repository.
        for text in [
            "nginx::1.2z5",
            "a:b:c",
            "user/app:x:y",
            "localhost:5000/a:b/c",
            &format!("a:b:c@{D}"),
        ] {
            assert!(
                matches!(ImageRef::parse(text), Err(ReferenceError::Malformed(_))),
                "{text}"
            );
        }
        let r = ImageRef::parse("[::1]:5000/app:v1").unwrap();
        assert_eq!(r.repository, "[::1]:5000/app");
        assert_eq!(r.tag.as_deref(), Some("v1"));
    }

    #[test]
    fn an_uppercase_first_component_is_a_registry() {
        // Docker Hub namespaces are lowercase, so Docker reads `MyRegistry/app` as a host.
        let r = ImageRef::parse("MyRegistry/app:1").unwrap();
        assert_eq!(r.repository, "MyRegistry/app");
        assert_eq!(
            ImageRef::parse("myuser/app").unwrap().repository,
            "docker.io/myuser/app"
        );
    }

    #[test]
    fn digests() {
        let r = ImageRef::parse(&format!("nginx:1@{D}")).unwrap();
        assert_eq!(r.pinned().unwrap(), format!("docker.io/library/nginx@{D}"));
        assert!(matches!(
            ImageRef::parse("nginx@sha256:abc"),
            Err(ReferenceError::BadDigest(_))
        ));
        assert!(ImageRef::parse("").is_err());
        assert!(ImageRef::parse("a b").is_err());
        assert!(ImageRef::parse("app:").is_err());
    }
}

/// Property tests against the Docker CLI's rules, from references generated by the grammar
/// of github.com/distribution/reference. `PROPTEST_CASES` sets how many (default 256).
#[cfg(test)]
mod docker_rules {
    use super::*;
    use proptest::prelude::*;

    /// `splitDockerDomain` of distribution/reference (normalize.go), written out on its own,
    /// plus the one alias the agent adds: `registry-1.docker.io` is Docker Hub's API host.
    fn docker_repository(name: &str) -> String {
        let (domain, remainder) = match name.split_once('/') {
            None => ("docker.io", name),
            Some(("localhost", rest)) => ("localhost", rest),
            Some(("index.docker.io" | "registry-1.docker.io", rest)) => ("docker.io", rest),
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first.to_lowercase() != first =>
            {
                (first, rest)
            }
            Some(_) => ("docker.io", name),
        };
        if domain == "docker.io" && !remainder.contains('/') {
            format!("{domain}/library/{remainder}")
        } else {
            format!("{domain}/{remainder}")
        }
    }

    /// `domain-component (. domain-component)* [: port-number]`, with the names that have a
    /// rule of their own mixed in.
    fn domain() -> impl Strategy<Value = String> {
        let component = "[a-zA-Z0-9]([a-zA-Z0-9-]{0,8}[a-zA-Z0-9])?";
        let generic = (
            prop::collection::vec(component, 1..4),
            prop::option::of("[0-9]{1,5}"),
        )
            .prop_map(|(components, port)| {
                let mut d = components.join(".");
                if let Some(port) = port {
                    d.push(':');
                    d.push_str(&port);
                }
                d
            });
        prop_oneof![
            6 => generic,
            1 => prop::sample::select(vec![
                "docker.io",
                "index.docker.io",
                "registry-1.docker.io",
                "localhost",
                "localhost:5000",
                "127.0.0.1:5000",
                "ghcr.io",
                "Registry",
            ])
            .prop_map(String::from),
        ]
    }

    /// `path-component (/ path-component)*`, with `[a-z0-9]+ (separator [a-z0-9]+)*` and the
    /// separators `.`, `_`, `__` and `-*`.
    fn path() -> impl Strategy<Value = String> {
        let component = "[a-z0-9]{1,6}(([._]|__|-*)[a-z0-9]{1,6}){0,2}";
        prop::collection::vec(component, 1..4).prop_map(|c| c.join("/"))
    }

    fn tag() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,127}"
    }

    fn digest() -> impl Strategy<Value = String> {
        "[0-9a-f]{64}".prop_map(|hex| format!("sha256:{hex}"))
    }

    /// A valid reference and its parts: `[domain/]path[:tag][@digest]`.
    fn reference() -> impl Strategy<Value = (String, String, Option<String>, Option<String>)> {
        (
            prop::option::of(domain()),
            path(),
            prop::option::of(tag()),
            prop::option::of(digest()),
        )
            .prop_map(|(domain, path, tag, digest)| {
                let name = match domain {
                    Some(d) => format!("{d}/{path}"),
                    None => path,
                };
                let mut text = name.clone();
                if let Some(t) = &tag {
                    text.push(':');
                    text.push_str(t);
                }
                if let Some(d) = &digest {
                    text.push('@');
                    text.push_str(d);
                }
                (text, name, tag, digest)
            })
    }

    /// Names Docker refuses but the agent reads anyway: it only splits and normalises what
    /// the engine has accepted, so it does not re-check the grammar's characters and lengths.
    #[test]
    fn lenient_where_docker_is_strict() {
        for (text, repository) in [
            ("Nginx", "docker.io/library/Nginx"),
            ("user/App", "docker.io/user/App"),
            ("a__-b/c", "docker.io/a__-b/c"),
            ("example.com/ünïcode", "example.com/ünïcode"),
        ] {
            assert_eq!(ImageRef::parse(text).unwrap().repository, repository);
        }
        let long_tag = "t".repeat(200);
        let r = ImageRef::parse(&format!("nginx:{long_tag}")).unwrap();
        assert_eq!(r.tag, Some(long_tag));
    }

    proptest! {
        #[test]
        fn normalises_as_docker_does((text, name, tag, digest) in reference()) {
            let r = ImageRef::parse(&text).unwrap();
            prop_assert_eq!(&r.repository, &docker_repository(&name));
            prop_assert_eq!(&r.tag, &tag);
            prop_assert_eq!(&r.digest, &digest);
        }

        #[test]
        fn normalising_is_idempotent((text, _name, _tag, _digest) in reference()) {
            let r = ImageRef::parse(&text).unwrap();
            let again = ImageRef::parse(&r.repository).unwrap();
            prop_assert_eq!(&again.repository, &r.repository);
            prop_assert_eq!(docker_repository(&r.repository), r.repository.clone());
            if let Some(pinned) = r.pinned() {
                let back = ImageRef::parse(&pinned).unwrap();
                prop_assert_eq!(back.pinned(), Some(pinned));
                prop_assert_eq!(back.repository, r.repository);
            }
        }

        #[test]
        fn familiar_and_full_names_agree((_text, name, tag, _digest) in reference()) {
            // What `docker inspect` shows (`nginx`) and what it means (`docker.io/library/nginx`).
            let familiar = ImageRef::parse(&name).unwrap();
            let full = ImageRef::parse(&docker_repository(&name)).unwrap();
            prop_assert_eq!(&familiar.repository, &full.repository);
            if let Some(tag) = tag {
                let tagged = ImageRef::parse(&format!("{}:{tag}", full.repository)).unwrap();
                prop_assert_eq!(tagged.tag, Some(tag));
                prop_assert_eq!(tagged.repository, full.repository);
            }
        }

        #[test]
        fn digests_are_sha256_lowercase_hex(hex in "[0-9a-fA-F]{60,68}") {
            let digest = format!("sha256:{hex}");
            let valid = hex.len() == 64 && !hex.chars().any(|c| c.is_ascii_uppercase());
            prop_assert_eq!(validate_digest(&digest).is_ok(), valid);
            prop_assert_eq!(ImageRef::parse(&format!("nginx@{digest}")).is_ok(), valid);
        }
    }
}
