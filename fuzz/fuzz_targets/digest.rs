//! `pick_repo_digest`: which `repository@digest` is reported for a container started as
//! `reference` whose image has `repo_digests`.
//!
//! `None` exactly when neither the reference nor any repo digest parses to a pinned
//! reference; a returned url parses, is pinned, and is the reference's own pin or one of the
//! candidates; the choice does not depend on the order of the repo digests.
//!
//! Input: UTF-8 lines, the reference first, then one repo digest a line.

#![no_main]

use deploytrack::evidence::{pick_repo_digest, Picked};
use deploytrack::reference::ImageRef;
use libfuzzer_sys::fuzz_target;

fn pinned(text: &str) -> Option<String> {
    ImageRef::parse(text).ok()?.pinned()
}

fn url(picked: &Picked) -> &str {
    match picked {
        Picked::Matching(u) | Picked::Only(u) | Picked::Arbitrary(u) => u,
    }
}

/// A deterministic permutation of `items` driven by `seed` (xorshift Fisher-Yates).
fn shuffled(items: &[String], mut seed: u64) -> Vec<String> {
    let mut out = items.to_vec();
    for i in (1..out.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.swap(i, (seed % (i as u64 + 1)) as usize);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let reference = lines.next().unwrap_or_default().to_string();
    let repo_digests: Vec<String> = lines.map(str::to_string).collect();
    // The reordering is drawn from the input itself (FNV-1a), so a run replays exactly.
    let shuffle = data.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    let picked = pick_repo_digest(&reference, &repo_digests);

    let wanted = ImageRef::parse(&reference).ok();
    let own_pin = wanted.as_ref().and_then(ImageRef::pinned);
    let mut candidates: Vec<String> = repo_digests.iter().filter_map(|d| pinned(d)).collect();
    candidates.sort();
    candidates.dedup();

    assert_eq!(
        picked.is_none(),
        own_pin.is_none() && candidates.is_empty(),
        "{reference:?} {repo_digests:?} -> {picked:?}"
    );

    if let Some(p) = &picked {
        let u = url(p);
        let parsed = ImageRef::parse(u)
            .unwrap_or_else(|e| panic!("{reference:?} {repo_digests:?} -> {u:?}: {e}"));
        assert!(parsed.tag.is_none(), "{u:?} carries a tag");
        assert_eq!(parsed.pinned().as_deref(), Some(u), "{u:?} is not pinned");
        match p {
            Picked::Matching(u) => match &own_pin {
                Some(own) => assert_eq!(u, own, "the reference's own digest wins"),
                None => {
                    let repo = &wanted
                        .as_ref()
                        .expect("a match needs a reference")
                        .repository;
                    assert_eq!(&parsed.repository, repo, "{reference:?} -> {u:?}");
                    assert!(candidates.contains(u));
                }
            },
            Picked::Only(u) => {
                assert!(own_pin.is_none());
                assert_eq!(candidates, vec![u.clone()]);
            }
            Picked::Arbitrary(u) => {
                assert!(own_pin.is_none());
                assert!(candidates.len() > 1);
                assert_eq!(u, &candidates[0], "the first in sorted order");
                if let Some(w) = &wanted {
                    assert!(
                        candidates
                            .iter()
                            .all(|c| ImageRef::parse(c).unwrap().repository != w.repository),
                        "a candidate of {} was passed over: {candidates:?}",
                        w.repository
                    );
                }
            }
        }
    }

    // The engine lists RepoDigests in no promised order.
    let mut reversed = repo_digests.clone();
    reversed.reverse();
    assert_eq!(pick_repo_digest(&reference, &reversed), picked);
    assert_eq!(
        pick_repo_digest(&reference, &shuffled(&repo_digests, shuffle | 1)),
        picked
    );
});
