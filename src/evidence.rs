//! Which repository may be named for a digest: the `image.url` of a report must name a
//! repository that really holds the digest, or the receiver records an image nobody can pull.
//! A wrong report is worse than a late one, so where the engine's RepoDigests prove nothing
//! (Docker's containerd image store and Podman give every local name one), a candidate is
//! named only with evidence:
//!
//! - the engine pulled the digest from that repository, or pushed it there, while the agent
//!   watched (its image `pull` and `push` events);
//! - the engine says it was pulled from there (`Identity.Pull`, Docker 29.3 and later);
//! - the registry confirmed it (`GET /distribution/{repository}@{digest}/json`).
//!
//! What was seen is kept in the queue file for as long as an image with the digest is on the
//! host, so a restart or an upgrade asks no registry again. A lookup costs the host a
//! manifest request at the registry (Docker Hub counts it as a pull against an hourly
//! budget), so refusals are asked again at a growing interval, up to a day, and the lookups
//! per registry are bounded per hour.
//!
//! This module holds the rules only; asking the engine and the registries is `engine/`'s.

use std::collections::{HashMap, VecDeque};

use crate::reference::ImageRef;

/// Why a repository may be named for a digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The engine pulled it from there while the agent watched.
    Pull,
    /// The engine pushed it there while the agent watched.
    Push,
    /// The registry confirmed it holds the digest.
    Lookup,
    /// The engine's image inspect names the repository among those it was pulled from.
    Identity,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Pull => "pull",
            Source::Push => "push",
            Source::Lookup => "lookup",
            Source::Identity => "identity",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "pull" => Some(Source::Pull),
            "push" => Some(Source::Push),
            "lookup" => Some(Source::Lookup),
            "identity" => Some(Source::Identity),
            _ => None,
        }
    }
}

/// Why a lookup did not confirm a candidate, as far as the answer tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The registry wants credentials the agent does not have (or refused those it sent).
    Credentials,
    /// The registry answered that it has no such manifest: built, imported or retagged here.
    Unknown,
    /// No answer: the registry or the network is down, or the lookup timed out.
    Unreachable,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Credentials => "credentials",
            Refusal::Unknown => "unknown",
            Refusal::Unreachable => "unreachable",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "credentials" => Some(Refusal::Credentials),
            "unknown" => Some(Refusal::Unknown),
            "unreachable" => Some(Refusal::Unreachable),
            _ => None,
        }
    }
}

/// A refused candidate and when it may be asked again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub why: Refusal,
    pub failures: u32,
    pub next_ms: i64,
}

/// One remembered pair, as the queue file keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub repository: String,
    pub digest: String,
    pub source: Source,
    pub seen_ms: i64,
}

/// One change to what is remembered, for the queue file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Hold(Held),
    Forget { repository: String, digest: String },
    Refuse { pinned: String, refused: Refused },
    Unrefuse { pinned: String },
}

/// A refusal is asked again after this, doubling per refusal...
pub const REFUSAL_FIRST_MS: i64 = 10 * 60 * 1000;
/// ...up to a day.
pub const REFUSAL_MAX_MS: i64 = 24 * 3600 * 1000;
/// Lookups per registry per hour. Docker Hub counts each as a pull against the anonymous
/// budget of 10 an hour per address, shared by every host behind one NAT: the agent takes
/// at most 2 of them.
pub const LOOKUPS_PER_HOUR: usize = 30;
pub const HUB_LOOKUPS_PER_HOUR: usize = 2;
const HOUR_MS: i64 = 3600 * 1000;
/// A lookup counts as under way for at most this long (it is bounded to 5 s).
const ASKING_MS: i64 = 30 * 1000;
/// Remembered pairs, at most (oldest first out); in practice bounded by the images on the
/// host, as pairs whose digest no local image has are forgotten.
pub const HELD_MAX: usize = 10_000;
const REFUSED_MAX: usize = 10_000;

/// Why a candidate may not be looked up now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Refused before; asked again at `next_ms`.
    Refused(Refused),
    /// Another resolution is asking now.
    Asking,
    /// The registry's hourly budget is spent until `until_ms`.
    Budget { until_ms: i64 },
}

/// What the agent knows about repositories and digests: the evidence, the refusals and the
/// hourly lookup budgets. Kept in memory and mirrored in the queue file through `Change`s.
#[derive(Debug, Default)]
pub struct Ledger {
    held: HashMap<(String, String), (Source, i64)>,
    refused: HashMap<String, Refused>,
    spent: HashMap<String, VecDeque<i64>>,
    /// Lookups under way, and until when they count as such: two containers of one image
    /// resolved at once ask the registry once.
    asking: HashMap<String, i64>,
}

impl Ledger {
    pub fn restore(held: Vec<Held>, refused: Vec<(String, Refused)>) -> Self {
        Ledger {
            held: held
                .into_iter()
                .map(|h| ((h.repository, h.digest), (h.source, h.seen_ms)))
                .collect(),
            refused: refused.into_iter().collect(),
            spent: HashMap::new(),
            asking: HashMap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// The evidence for `pinned` (`repository@digest`), if any.
    pub fn holds(&self, pinned: &str) -> Option<Source> {
        let (repository, digest) = split_pinned(pinned)?;
        self.held
            .get(&(repository.to_string(), digest.to_string()))
            .map(|(s, _)| *s)
    }

    /// Remember that `repository` holds `digest`. Returns the changes to keep: none when it
    /// was known already (a pull or push of the same digest again changes nothing).
    pub fn hold(
        &mut self,
        repository: &str,
        digest: &str,
        source: Source,
        now_ms: i64,
    ) -> Vec<Change> {
        let key = (repository.to_string(), digest.to_string());
        self.asking.remove(&format!("{repository}@{digest}"));
        if self.held.contains_key(&key) {
            return Vec::new();
        }
        let mut changes = Vec::new();
        if self.held.len() >= HELD_MAX {
            if let Some(oldest) = self
                .held
                .iter()
                .min_by_key(|(_, (_, seen))| *seen)
                .map(|(k, _)| k.clone())
            {
                self.held.remove(&oldest);
                changes.push(Change::Forget {
                    repository: oldest.0,
                    digest: oldest.1,
                });
            }
        }
        self.held.insert(key, (source, now_ms));
        let pinned = format!("{repository}@{digest}");
        if self.refused.remove(&pinned).is_some() {
            changes.push(Change::Unrefuse {
                pinned: pinned.clone(),
            });
        }
        changes.push(Change::Hold(Held {
            repository: repository.to_string(),
            digest: digest.to_string(),
            source,
            seen_ms: now_ms,
        }));
        changes
    }

    /// Whether `pinned` may be looked up at `now_ms`; when it may, the lookup is counted
    /// against its registry's hourly budget.
    pub fn may_look_up(&mut self, pinned: &str, now_ms: i64) -> Result<(), Wait> {
        if let Some(r) = self.refused.get(pinned).filter(|r| r.next_ms > now_ms) {
            return Err(Wait::Refused(*r));
        }
        if self.asking.get(pinned).is_some_and(|until| *until > now_ms) {
            return Err(Wait::Asking);
        }
        let registry = registry_of(pinned);
        let budget = if registry == "docker.io" {
            HUB_LOOKUPS_PER_HOUR
        } else {
            LOOKUPS_PER_HOUR
        };
        let spent = self.spent.entry(registry).or_default();
        while spent.front().is_some_and(|t| now_ms - t >= HOUR_MS) {
            spent.pop_front();
        }
        if spent.len() >= budget {
            let until_ms = spent.front().map_or(now_ms, |t| t + HOUR_MS);
            return Err(Wait::Budget { until_ms });
        }
        spent.push_back(now_ms);
        self.asking.retain(|_, until| *until > now_ms);
        self.asking
            .insert(pinned.to_string(), now_ms.saturating_add(ASKING_MS));
        Ok(())
    }

    /// A lookup refused `pinned`: asked again after 10 minutes, doubling per refusal, up to a
    /// day.
    pub fn refuse(&mut self, pinned: &str, why: Refusal, now_ms: i64) -> Vec<Change> {
        self.asking.remove(pinned);
        let failures = self
            .refused
            .get(pinned)
            .map_or(0, |r| r.failures)
            .saturating_add(1);
        let refused = Refused {
            why,
            failures,
            next_ms: now_ms.saturating_add(refusal_interval_ms(failures)),
        };
        let mut changes = Vec::new();
        if !self.refused.contains_key(pinned) && self.refused.len() >= REFUSED_MAX {
            if let Some(soonest) = self
                .refused
                .iter()
                .min_by_key(|(_, r)| r.next_ms)
                .map(|(k, _)| k.clone())
            {
                self.refused.remove(&soonest);
                changes.push(Change::Unrefuse { pinned: soonest });
            }
        }
        self.refused.insert(pinned.to_string(), refused);
        changes.push(Change::Refuse {
            pinned: pinned.to_string(),
            refused,
        });
        changes
    }

    pub fn refusal(&self, pinned: &str) -> Option<Refused> {
        self.refused.get(pinned).copied()
    }

    /// Every pinned reference remembered (evidence and refusals), to check against the
    /// images on the host.
    pub fn remembered(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .held
            .keys()
            .map(|(r, d)| format!("{r}@{d}"))
            .chain(self.refused.keys().cloned())
            .collect();
        all.sort();
        all.dedup();
        all
    }

    /// Forget what is known of `pinned`: no local image has it any more.
    pub fn forget(&mut self, pinned: &str) -> Vec<Change> {
        let mut changes = Vec::new();
        if let Some((repository, digest)) = split_pinned(pinned) {
            if self
                .held
                .remove(&(repository.to_string(), digest.to_string()))
                .is_some()
            {
                changes.push(Change::Forget {
                    repository: repository.to_string(),
                    digest: digest.to_string(),
                });
            }
        }
        if self.refused.remove(pinned).is_some() {
            changes.push(Change::Unrefuse {
                pinned: pinned.to_string(),
            });
        }
        changes
    }
}

/// The interval before the `failures`th refusal is asked again.
pub fn refusal_interval_ms(failures: u32) -> i64 {
    let doublings = failures.saturating_sub(1).min(20);
    REFUSAL_FIRST_MS
        .saturating_mul(1i64 << doublings)
        .min(REFUSAL_MAX_MS)
}

/// `repository@digest` split in two.
pub fn split_pinned(pinned: &str) -> Option<(&str, &str)> {
    pinned.rsplit_once('@')
}

/// The registry (domain) of a pinned reference or repository: `docker.io` for Docker Hub.
pub fn registry_of(reference: &str) -> String {
    let repository = split_pinned(reference).map_or(reference, |(r, _)| r);
    repository
        .split_once('/')
        .map_or("docker.io", |(domain, _)| domain)
        .to_string()
}

/// The pinned references an image could be reported as, best first: the reference's own
/// digest, then the repository it was started as, then the others in sorted order.
pub fn candidates(reference: &str, repo_digests: &[String]) -> Vec<String> {
    let wanted = ImageRef::parse(reference).ok();
    let mut all: Vec<String> = repo_digests
        .iter()
        .filter_map(|d| ImageRef::parse(d).ok())
        .filter_map(|r| r.pinned())
        .collect();
    all.sort();
    all.dedup();
    let mut out = Vec::with_capacity(all.len() + 1);
    if let Some(pinned) = wanted.as_ref().and_then(ImageRef::pinned) {
        out.push(pinned);
    }
    if let Some(wanted) = &wanted {
        let prefix = format!("{}@", wanted.repository);
        for c in all.iter().filter(|c| c.starts_with(&prefix)) {
            if !out.contains(c) {
                out.push(c.clone());
            }
        }
    }
    for c in all {
        if !out.contains(&c) {
            out.push(c);
        }
    }
    out
}

/// How many of `candidates` (as `candidates` orders them) name what the container was
/// started as: the reference's own digest and the repository it names. They are preferred
/// to a candidate of another repository, even one with evidence already.
pub fn preferred(reference: &str, candidates: &[String]) -> usize {
    let Ok(wanted) = ImageRef::parse(reference) else {
        return 0;
    };
    let prefix = format!("{}@", wanted.repository);
    candidates
        .iter()
        .take_while(|c| c.starts_with(&prefix))
        .count()
}

/// The first candidate with evidence, from what is remembered or from the repositories the
/// engine says the image was pulled from (`identity_pulls`, normalised repositories: see
/// `named_by_identity`).
pub fn named(
    candidates: &[String],
    ledger: &Ledger,
    identity_pulls: &[String],
) -> Option<(String, Source)> {
    let by_identity = named_by_identity(candidates, identity_pulls);
    candidates.iter().find_map(|c| {
        if let Some(source) = ledger.holds(c) {
            return Some((c.clone(), source));
        }
        (by_identity == Some(c)).then(|| (c.clone(), Source::Identity))
    })
}

/// The first of `candidates` that the engine says the image was pulled from.
///
/// containerd records `Identity.Pull` without the registry's port (it keys its
/// distribution-source label by the host name alone), so an image pulled from
/// `localhost:5000/team/app` says `localhost/team/app`. An identity entry whose registry has
/// a port names only the candidate of exactly that repository. One without a port names the
/// candidate whose repository, its port removed, is that entry, provided no other candidate
/// repository also is: when two candidates differ only by their port (`localhost:5000/app`
/// and `localhost:5001/app`, or `localhost/app` and `localhost:5000/app`), the entry could
/// stand for either, so neither is named by it (a registry lookup may still name one).
pub fn named_by_identity<'a>(
    candidates: &'a [String],
    identity_pulls: &[String],
) -> Option<&'a String> {
    /// The port of a repository's registry (`5000` in `localhost:5000/app`), if any.
    fn registry_port(repository: &str) -> Option<&str> {
        let (registry, _) = repository.split_once('/')?;
        let (_, port) = registry.rsplit_once(':')?;
        (!port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())).then_some(port)
    }
    /// The repository without its registry's port (`localhost:5000/app` is `localhost/app`).
    fn without_port(repository: &str) -> std::borrow::Cow<'_, str> {
        match (registry_port(repository), repository.split_once('/')) {
            (Some(port), Some((registry, path))) => {
                let host = &registry[..registry.len() - port.len() - 1];
                format!("{host}/{path}").into()
            }
            _ => repository.into(),
        }
    }
    let mut repositories: Vec<&str> = candidates
        .iter()
        .filter_map(|c| split_pinned(c).map(|(r, _)| r))
        .collect();
    repositories.sort_unstable();
    repositories.dedup();
    let names = |pulled: &str, repository: &str| match registry_port(pulled) {
        Some(_) => pulled == repository,
        None => {
            without_port(repository) == pulled
                && repositories
                    .iter()
                    .filter(|r| without_port(r) == pulled)
                    .count()
                    == 1
        }
    };
    candidates.iter().find(|c| {
        split_pinned(c).is_some_and(|(repository, _)| {
            identity_pulls
                .iter()
                .any(|pulled| names(pulled, repository))
        })
    })
}

/// From an image `pull` or `push` event and the image's RepoDigests: the pairs it proves.
///
/// `actor` is the event's `Actor.ID`: on Docker the reference as typed (`busybox:latest`), on
/// Podman the image's id. `name` is its `name` attribute: on Docker the repository
/// (`busybox`), on Podman the reference. Only repo digests of the repository named are
/// proved; a digest in the reference itself must be among them.
pub fn proved_by_event(actor: &str, name: Option<&str>, repo_digests: &[String]) -> Vec<String> {
    let named = name
        .and_then(|n| ImageRef::parse(n).ok())
        .or_else(|| ImageRef::parse(actor).ok().filter(|_| !is_image_id(actor)));
    let Some(named) = named else {
        return Vec::new();
    };
    let pinned_digest = [Some(actor), name]
        .into_iter()
        .flatten()
        .filter_map(|t| ImageRef::parse(t).ok())
        .find_map(|r| r.digest);
    let mut out: Vec<String> = repo_digests
        .iter()
        .filter_map(|d| ImageRef::parse(d).ok())
        .filter(|r| r.repository == named.repository)
        .filter(|r| pinned_digest.is_none() || r.digest == pinned_digest)
        .filter_map(|r| r.pinned())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// An image id (`sha256:…` or 64 hex digits, as Podman names images in events), not a
/// reference: Docker refuses 64-hex repository names for this reason.
pub fn is_image_id(text: &str) -> bool {
    let hex = text.strip_prefix("sha256:").unwrap_or(text);
    hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

#[derive(Debug, PartialEq, Eq)]
pub enum Picked {
    /// A repo digest of the repository the container was started as (or the reference's own digest).
    Matching(String),
    /// The image has a single repo digest.
    Only(String),
    /// Several digests, none of the started repository: the first in sorted order.
    Arbitrary(String),
}

/// Where the engine's RepoDigests prove the repository (Docker's classic image store): the
/// `image.url` for a container started as `reference`; `None` when the image has no repo
/// digest at all.
pub fn pick_repo_digest(reference: &str, repo_digests: &[String]) -> Option<Picked> {
    let wanted = ImageRef::parse(reference).ok();
    if let Some(pinned) = wanted.as_ref().and_then(ImageRef::pinned) {
        return Some(Picked::Matching(pinned));
    }
    let mut candidates: Vec<String> = repo_digests
        .iter()
        .filter_map(|d| ImageRef::parse(d).ok())
        .filter_map(|r| r.pinned())
        .collect();
    candidates.sort();
    candidates.dedup();
    if let Some(wanted) = &wanted {
        let prefix = format!("{}@", wanted.repository);
        if let Some(m) = candidates.iter().find(|c| c.starts_with(&prefix)) {
            return Some(Picked::Matching(m.clone()));
        }
    }
    match candidates.len() {
        0 => None,
        1 => Some(Picked::Only(candidates.remove(0))),
        _ => Some(Picked::Arbitrary(candidates.remove(0))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn candidates_best_first() {
        let digests = vec![
            format!("z.example/app@{A}"),
            format!("docker.io/library/app@{A}"),
            format!("a.example/app@{A}"),
        ];
        assert_eq!(
            candidates("app:prod", &digests),
            vec![
                format!("docker.io/library/app@{A}"),
                format!("a.example/app@{A}"),
                format!("z.example/app@{A}"),
            ]
        );
        assert_eq!(
            candidates(&format!("z.example/app@{B}"), &digests)[0],
            format!("z.example/app@{B}")
        );
        assert!(candidates("local/app:1", &[]).is_empty());
    }

    #[test]
    fn the_repository_started_as_is_preferred() {
        let digests = vec![
            format!("reg.example/mirror@{A}"),
            format!("reg.example/app@{A}"),
        ];
        let c = candidates("reg.example/mirror:1", &digests);
        assert_eq!(preferred("reg.example/mirror:1", &c), 1);
        assert_eq!(c[0], format!("reg.example/mirror@{A}"));
        let pinned = format!("reg.example/app@{A}");
        assert_eq!(preferred(&pinned, &candidates(&pinned, &digests)), 1);
        assert_eq!(preferred("other:1", &candidates("other:1", &digests)), 0);
    }

    #[test]
    fn only_a_repository_with_evidence_is_named() {
        let mut ledger = Ledger::default();
        // Retagged here: `docker tag reg.example/app:1 app:prod` gives app a repo digest.
        let c = candidates(
            "app:prod",
            &[format!("app@{A}"), format!("reg.example/app@{A}")],
        );
        assert_eq!(named(&c, &ledger, &[]), None);
        ledger.hold("reg.example/app", A, Source::Pull, 1);
        assert_eq!(
            named(&c, &ledger, &[]),
            Some((format!("reg.example/app@{A}"), Source::Pull))
        );
        // Evidence for another digest proves nothing about this one.
        let other = candidates("app:prod", &[format!("reg.example/app@{B}")]);
        assert_eq!(named(&other, &ledger, &[]), None);
    }

    #[test]
    fn identity_names_the_repository_pulled_from() {
        let c = candidates(
            "app:prod",
            &[format!("app@{A}"), format!("reg.example/app@{A}")],
        );
        let ledger = Ledger::default();
        assert_eq!(
            named(&c, &ledger, &["reg.example/app".to_string()]),
            Some((format!("reg.example/app@{A}"), Source::Identity))
        );
        assert_eq!(named(&c, &ledger, &["other.example/app".to_string()]), None);
    }

    fn ids(entries: &[&str]) -> Vec<String> {
        entries.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn an_identity_without_the_port_names_the_one_candidate_with_it() {
        // containerd drops the port: a pull from localhost:5000 says `localhost/…`.
        let ledger = Ledger::default();
        let c = candidates(
            "localhost:5000/team/app:1",
            &[
                format!("localhost:5000/team/app@{A}"),
                format!("reg.example/team/app@{A}"),
            ],
        );
        assert_eq!(
            named(&c, &ledger, &ids(&["localhost/team/app"])),
            Some((format!("localhost:5000/team/app@{A}"), Source::Identity))
        );
        // Started under another name: the candidate the identity names is still found.
        let c = candidates(
            "reg.example/team/app:1",
            &[
                format!("localhost:5000/team/app@{A}"),
                format!("reg.example/team/app@{A}"),
            ],
        );
        assert_eq!(
            named(&c, &ledger, &ids(&["localhost/team/app"])),
            Some((format!("localhost:5000/team/app@{A}"), Source::Identity))
        );
        // Another path, or a prefix of it, is not the same repository.
        assert_eq!(named(&c, &ledger, &ids(&["localhost/team/other"])), None);
        assert_eq!(named(&c, &ledger, &ids(&["localhost/team"])), None);
        assert_eq!(named(&c, &ledger, &ids(&["localhost:5000/team"])), None);
        // The same for an address with a port elsewhere than localhost.
        let c = candidates("10.0.0.7:8443/app:1", &[format!("10.0.0.7:8443/app@{A}")]);
        assert_eq!(
            named(&c, &ledger, &ids(&["10.0.0.7/app"])),
            Some((format!("10.0.0.7:8443/app@{A}"), Source::Identity))
        );
    }

    #[test]
    fn an_identity_that_fits_two_ports_names_neither() {
        let ledger = Ledger::default();
        // Two registries on one host, both candidates: the port-less entry could be either.
        let two_ports = candidates(
            "localhost:5000/team/app:1",
            &[
                format!("localhost:5000/team/app@{A}"),
                format!("localhost:5001/team/app@{A}"),
            ],
        );
        assert_eq!(
            named(&two_ports, &ledger, &ids(&["localhost/team/app"])),
            None
        );
        // One of them without a port: not named either, even the one that equals the entry.
        let with_and_without = candidates(
            "localhost/team/app:1",
            &[
                format!("localhost/team/app@{A}"),
                format!("localhost:5000/team/app@{A}"),
            ],
        );
        assert_eq!(
            named(&with_and_without, &ledger, &ids(&["localhost/team/app"])),
            None
        );
        // The same repository twice (the reference's own digest and a repo digest) is one
        // repository, not two.
        let pinned = candidates(
            &format!("localhost:5000/team/app@{B}"),
            &[format!("localhost:5000/team/app@{A}")],
        );
        assert_eq!(pinned.len(), 2);
        assert_eq!(
            named(&pinned, &ledger, &ids(&["localhost/team/app"])),
            Some((format!("localhost:5000/team/app@{B}"), Source::Identity))
        );
        // Other evidence still names one of the two.
        let mut ledger = Ledger::default();
        ledger.hold("localhost:5001/team/app", A, Source::Pull, 1);
        assert_eq!(
            named(&two_ports, &ledger, &ids(&["localhost/team/app"])),
            Some((format!("localhost:5001/team/app@{A}"), Source::Pull))
        );
    }

    #[test]
    fn an_identity_with_a_port_names_that_repository_only() {
        let ledger = Ledger::default();
        let c = candidates(
            "localhost:5000/team/app:1",
            &[
                format!("localhost:5000/team/app@{A}"),
                format!("localhost:5001/team/app@{A}"),
                format!("localhost/team/app@{A}"),
            ],
        );
        assert_eq!(
            named(&c, &ledger, &ids(&["localhost:5001/team/app"])),
            Some((format!("localhost:5001/team/app@{A}"), Source::Identity))
        );
        let c = candidates("localhost/team/app:1", &[format!("localhost/team/app@{A}")]);
        assert_eq!(named(&c, &ledger, &ids(&["localhost:5000/team/app"])), None);
        // Docker Hub's normal form, which has no port.
        let c = candidates("busybox:1", &[format!("docker.io/library/busybox@{A}")]);
        assert_eq!(
            named(&c, &ledger, &ids(&["docker.io/library/busybox"])),
            Some((format!("docker.io/library/busybox@{A}"), Source::Identity))
        );
    }

    #[test]
    fn a_pull_event_proves_its_repository_only() {
        let digests = vec![
            format!("docker.io/library/busybox@{A}"),
            format!("docker.io/library/mine@{A}"),
        ];
        // Docker: the reference as typed, the repository as `name`.
        assert_eq!(
            proved_by_event("busybox:latest", Some("busybox"), &digests),
            vec![format!("docker.io/library/busybox@{A}")]
        );
        // Podman: the image id, the reference as `name`.
        let id = &A[7..];
        assert_eq!(
            proved_by_event(id, Some("docker.io/library/mine:1"), &digests),
            vec![format!("docker.io/library/mine@{A}")]
        );
        // A digest in the reference must be the one proved.
        assert_eq!(
            proved_by_event(&format!("busybox@{B}"), Some("busybox"), &digests),
            Vec::<String>::new()
        );
        // Nothing named: nothing proved, even where the id parses as a name.
        assert!(proved_by_event(id, None, &digests).is_empty());
        assert!(proved_by_event("busybox:latest", Some("other"), &digests).is_empty());
    }

    #[test]
    fn refusals_are_asked_again_later_and_later_up_to_a_day() {
        let intervals: Vec<i64> = (1..=10).map(refusal_interval_ms).collect();
        assert_eq!(intervals[0], 10 * 60 * 1000);
        assert_eq!(intervals[1], 20 * 60 * 1000);
        assert_eq!(intervals[2], 40 * 60 * 1000);
        assert_eq!(*intervals.last().unwrap(), REFUSAL_MAX_MS);
        assert!(intervals.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(refusal_interval_ms(u32::MAX), REFUSAL_MAX_MS);

        let mut ledger = Ledger::default();
        let pinned = format!("reg.example/app@{A}");
        assert_eq!(ledger.may_look_up(&pinned, 0), Ok(()));
        ledger.refuse(&pinned, Refusal::Credentials, 0);
        let r = ledger.refusal(&pinned).unwrap();
        assert_eq!((r.failures, r.next_ms), (1, REFUSAL_FIRST_MS));
        assert_eq!(
            ledger.may_look_up(&pinned, REFUSAL_FIRST_MS - 1),
            Err(Wait::Refused(r))
        );
        assert_eq!(ledger.may_look_up(&pinned, REFUSAL_FIRST_MS), Ok(()));
        ledger.refuse(&pinned, Refusal::Credentials, REFUSAL_FIRST_MS);
        assert_eq!(
            ledger.refusal(&pinned).unwrap().next_ms,
            3 * REFUSAL_FIRST_MS
        );
        // Evidence ends the refusals.
        let changes = ledger.hold("reg.example/app", A, Source::Push, 5);
        assert!(changes.contains(&Change::Unrefuse {
            pinned: pinned.clone()
        }));
        assert_eq!(ledger.refusal(&pinned), None);
    }

    #[test]
    fn one_lookup_at_a_time_per_candidate() {
        let mut ledger = Ledger::default();
        let pinned = format!("reg.example/app@{A}");
        assert_eq!(ledger.may_look_up(&pinned, 0), Ok(()));
        assert_eq!(ledger.may_look_up(&pinned, 1), Err(Wait::Asking));
        ledger.refuse(&pinned, Refusal::Unreachable, 2);
        assert!(matches!(
            ledger.may_look_up(&pinned, 3),
            Err(Wait::Refused(_))
        ));
        // A lookup whose answer never came counts as under way for a bounded time only.
        let other = format!("reg.example/other@{A}");
        assert_eq!(ledger.may_look_up(&other, 0), Ok(()));
        assert_eq!(ledger.may_look_up(&other, ASKING_MS), Ok(()));
    }

    #[test]
    fn lookups_per_registry_are_bounded_per_hour() {
        let mut ledger = Ledger::default();
        let hub = |i: usize| format!("docker.io/library/app{i}@{A}");
        for i in 0..HUB_LOOKUPS_PER_HOUR {
            assert_eq!(ledger.may_look_up(&hub(i), i as i64), Ok(()));
        }
        assert_eq!(
            ledger.may_look_up(&hub(99), 1000),
            Err(Wait::Budget { until_ms: HOUR_MS })
        );
        // Another registry has its own budget.
        for i in 0..LOOKUPS_PER_HOUR {
            assert_eq!(
                ledger.may_look_up(&format!("reg.example/a{i}@{A}"), 0),
                Ok(())
            );
        }
        assert!(ledger
            .may_look_up(&format!("reg.example/x@{A}"), 0)
            .is_err());
        // An hour later the budget is back.
        assert_eq!(ledger.may_look_up(&hub(99), HOUR_MS), Ok(()));
    }

    #[test]
    fn forgetting_a_reference_forgets_its_pair_and_refusal() {
        let mut ledger = Ledger::default();
        ledger.hold("reg.example/app", A, Source::Pull, 1);
        ledger.hold("reg.example/other", A, Source::Push, 1);
        ledger.refuse(&format!("app@{A}"), Refusal::Unknown, 1);
        assert_eq!(
            ledger.remembered(),
            vec![
                format!("app@{A}"),
                format!("reg.example/app@{A}"),
                format!("reg.example/other@{A}")
            ]
        );
        assert_eq!(ledger.forget(&format!("reg.example/app@{A}")).len(), 1);
        assert_eq!(ledger.forget(&format!("app@{A}")).len(), 1);
        assert_eq!(ledger.refusal(&format!("app@{A}")), None);
        assert_eq!(ledger.holds(&format!("reg.example/app@{A}")), None);
        assert_eq!(
            ledger.holds(&format!("reg.example/other@{A}")),
            Some(Source::Push)
        );
        // Known already: nothing to keep.
        assert!(ledger
            .hold("reg.example/other", A, Source::Pull, 2)
            .is_empty());
    }

    #[test]
    fn registries_as_docker_names_them() {
        assert_eq!(
            registry_of(&format!("docker.io/library/busybox@{A}")),
            "docker.io"
        );
        assert_eq!(registry_of("127.0.0.1:5002/priv/app"), "127.0.0.1:5002");
        assert!(is_image_id(&A[7..]));
        assert!(is_image_id(A));
        assert!(!is_image_id("busybox:latest"));
    }

    #[test]
    fn picks_the_repository_started() {
        let digests = vec![format!("localhost:5000/mirror@{B}"), format!("nginx@{A}")];
        assert_eq!(
            pick_repo_digest("nginx:1.25", &digests),
            Some(Picked::Matching(format!("docker.io/library/nginx@{A}")))
        );
        assert_eq!(
            pick_repo_digest("localhost:5000/mirror:1", &digests),
            Some(Picked::Matching(format!("localhost:5000/mirror@{B}")))
        );
    }

    #[test]
    fn reference_digest_wins() {
        assert_eq!(
            pick_repo_digest(&format!("nginx@{B}"), &[format!("nginx@{A}")]),
            Some(Picked::Matching(format!("docker.io/library/nginx@{B}")))
        );
    }

    #[test]
    fn single_several_none() {
        let one = vec![format!("registry.example/x/app@{A}")];
        assert_eq!(
            pick_repo_digest("sha256:0123", &one),
            Some(Picked::Only(format!("registry.example/x/app@{A}")))
        );
        let two = vec![format!("z.example/app@{A}"), format!("a.example/app@{B}")];
        assert_eq!(
            pick_repo_digest("other", &two),
            Some(Picked::Arbitrary(format!("a.example/app@{B}")))
        );
        assert_eq!(pick_repo_digest("local/app:1", &[]), None);
    }
}
