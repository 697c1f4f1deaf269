//! `NameTemplate::parse` and `render` with arbitrary facts.
//!
//! Never panics; a template parses only if it names a known placeholder; rendering with each
//! fact spelled as its own placeholder gives the template's text back (so literal text is
//! kept as written and every placeholder is replaced once, in place); `{id}` is at most 12
//! characters of the id; a template naming Compose facts falls back to `{host}/{container}`
//! for a container without them, and one that names none ignores the labels.
//!
//! Input: UTF-8 lines: the template, the host, the container name, the container id, then
//! one `key=value` label a line; without a fifth line the container has no labels at all.

#![no_main]

use std::collections::HashMap;

use deploytrack::deployment::{NameFacts, NameTemplate, DEFAULT_NAME_TEMPLATE};
use libfuzzer_sys::fuzz_target;

const COMPOSE_PROJECT: &str = "com.docker.compose.project";
const COMPOSE_SERVICE: &str = "com.docker.compose.service";
const COMPOSE_NUMBER: &str = "com.docker.compose.container-number";
const PLACEHOLDERS: [&str; 6] = [
    "{host}",
    "{container}",
    "{id}",
    "{compose_project}",
    "{compose_service}",
    "{compose_number}",
];

/// The expected rendering when every fact the template names is present.
fn substitute(text: &str, facts: &NameFacts<'_>) -> String {
    let label = |k: &str| {
        facts
            .labels
            .and_then(|l| l.get(k))
            .cloned()
            .unwrap_or_default()
    };
    let mut out = String::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = open
            + rest[open..]
                .find('}')
                .expect("a parsed template closes its braces");
        out.push_str(&match &rest[open + 1..close] {
            "host" => facts.host.to_string(),
            "container" => facts.container.to_string(),
            "id" => facts.id.chars().take(12).collect(),
            "compose_project" => label(COMPOSE_PROJECT),
            "compose_service" => label(COMPOSE_SERVICE),
            "compose_number" => label(COMPOSE_NUMBER),
            other => panic!("a parsed template names {{{other}}}"),
        });
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

struct Input {
    template: String,
    host: String,
    container: String,
    id: String,
    labels: Option<Vec<(String, String)>>,
}

impl Input {
    fn read(text: &str) -> Self {
        let mut parts = text.splitn(5, '\n');
        let mut next = || parts.next().unwrap_or_default().to_string();
        let (template, host, container, id) = (next(), next(), next(), next());
        let labels = parts.next().map(|labels| {
            labels
                .split('\n')
                .map(|l| match l.split_once('=') {
                    Some((k, v)) => (k.to_string(), v.to_string()),
                    None => (l.to_string(), String::new()),
                })
                .collect()
        });
        Input {
            template,
            host,
            container,
            id,
            labels,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let input = Input::read(text);
    let Ok(template) = NameTemplate::parse(&input.template) else {
        return;
    };
    let text = input.template.as_str();
    assert!(
        PLACEHOLDERS.iter().any(|p| text.contains(p)),
        "{text:?} parsed without a placeholder"
    );
    let names_compose = text.contains("{compose_");

    // Each fact spelled as its placeholder: rendering gives the text back.
    let spelled: HashMap<String, String> = [
        (COMPOSE_PROJECT, "{compose_project}"),
        (COMPOSE_SERVICE, "{compose_service}"),
        (COMPOSE_NUMBER, "{compose_number}"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let identity = NameFacts {
        host: "{host}",
        container: "{container}",
        id: "{id}",
        labels: Some(&spelled),
    };
    assert_eq!(template.render(&identity), text);

    // Arbitrary facts: no panic, and the fallbacks hold.
    let labels: Option<HashMap<String, String>> = input.labels.map(|l| l.into_iter().collect());
    let facts = NameFacts {
        host: &input.host,
        container: &input.container,
        id: &input.id,
        labels: labels.as_ref(),
    };
    let rendered = template.render(&facts);
    let default = NameTemplate::parse(DEFAULT_NAME_TEMPLATE).unwrap();
    assert_eq!(
        default.render(&facts),
        format!("{}/{}", input.host, input.container)
    );
    // A Compose placeholder whose label the container lacks: the default name instead.
    let missing = [
        ("{compose_project}", COMPOSE_PROJECT),
        ("{compose_service}", COMPOSE_SERVICE),
        ("{compose_number}", COMPOSE_NUMBER),
    ]
    .iter()
    .any(|(p, k)| text.contains(p) && !labels.as_ref().is_some_and(|l| l.contains_key(*k)));
    if missing {
        assert_eq!(rendered, default.render(&facts), "{text:?}: the fallback");
    } else {
        // Each placeholder replaced by its fact, in one pass over the text.
        assert_eq!(rendered, substitute(text, &facts), "{text:?}");
    }
    if !names_compose {
        let without_labels = NameFacts {
            labels: None,
            ..facts.clone()
        };
        assert_eq!(rendered, template.render(&without_labels), "{text:?}");
    }

    let id_text: String = input.id.chars().take(12).collect();
    let id_only = NameTemplate::parse("{id}").unwrap().render(&facts);
    assert_eq!(id_only, id_text, "{{id}} of {:?}", input.id);
});
