//! `NameTemplate::parse`, `render` and `default_name` with arbitrary facts.
//!
//! Never panics; a template parses only if it has a placeholder; rendering with each fact
//! spelled as its placeholder gives the template's text back with each `{a|b|...}` as its
//! first alternative (so literal text is kept as written and every placeholder is replaced
//! once, in place); with arbitrary facts the result is the one-pass substitution of the text
//! where each placeholder takes its first alternative with a value (a missing or empty label
//! has none), else its quoted literal, else the render fails naming that placeholder as
//! written; `{id}` is at most 12 characters of the id; a template naming no label-borne fact
//! ignores the labels; the default name outside Swarm is `{host}/{container}`.
//!
//! Input: UTF-8 lines: the template, the host, the container name, the container id, then
//! one `key=value` label a line; without a fifth line the container has no labels at all.

#![no_main]

use std::collections::HashMap;

use deploytrack::deployment::{default_name, NameFacts, NameTemplate, Unfilled};
use libfuzzer_sys::fuzz_target;

const COMPOSE_PROJECT: &str = "com.docker.compose.project";
const COMPOSE_SERVICE: &str = "com.docker.compose.service";
const COMPOSE_NUMBER: &str = "com.docker.compose.container-number";
const SWARM_SERVICE: &str = "com.docker.swarm.service.name";
const SWARM_TASK: &str = "com.docker.swarm.task.name";
const SWARM_NODE: &str = "com.docker.swarm.node.id";
const STACK_NAMESPACE: &str = "com.docker.stack.namespace";
const RESERVED: [&str; 7] = [
    COMPOSE_PROJECT,
    COMPOSE_SERVICE,
    COMPOSE_NUMBER,
    SWARM_SERVICE,
    SWARM_TASK,
    SWARM_NODE,
    STACK_NAMESPACE,
];

/// The `{...}` bodies of a parsed template, in order.
fn slots(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let close = open
            + rest[open..]
                .find('}')
                .expect("a parsed template closes its braces");
        out.push(&rest[open + 1..close]);
        rest = &rest[close + 1..];
    }
    out
}

/// The value of one alternative, written out apart from the crate's own reading.
fn value(alternative: &str, facts: &NameFacts<'_>) -> Option<String> {
    let label = |k: &str| {
        facts
            .labels
            .and_then(|l| l.get(k))
            .filter(|v| !v.is_empty())
            .cloned()
    };
    let slot = || {
        let service = label(SWARM_SERVICE)?;
        let task = label(SWARM_TASK)?;
        if !task.starts_with(&format!("{service}.")) {
            return None;
        }
        let after = &task[service.len() + 1..];
        let middle = &after[..after.rfind('.')?];
        (!middle.is_empty() && Some(middle.to_string()) != label(SWARM_NODE))
            .then(|| middle.to_string())
    };
    match alternative {
        "host" => Some(facts.host.to_string()),
        "container" => Some(facts.container.to_string()),
        "id" => Some(facts.id.chars().take(12).collect()),
        "compose_project" => label(COMPOSE_PROJECT),
        "compose_service" => label(COMPOSE_SERVICE),
        "compose_number" => label(COMPOSE_NUMBER),
        "swarm_service" => label(SWARM_SERVICE),
        "swarm_slot" => slot(),
        "swarm_node" => label(SWARM_NODE),
        "swarm_stack" => label(STACK_NAMESPACE),
        quoted if quoted.starts_with('"') => Some(quoted[1..quoted.len() - 1].to_string()),
        other => match other.strip_prefix("label:") {
            Some(key) => label(key),
            None => panic!("a parsed template names {{{other}}}"),
        },
    }
}

/// The expected rendering: each placeholder its first alternative with a value.
fn substitute(text: &str, facts: &NameFacts<'_>) -> Result<String, Unfilled> {
    let mut out = String::new();
    let mut rest = text;
    for body in slots(text) {
        let open = rest.find('{').unwrap();
        out.push_str(&rest[..open]);
        let v = body
            .split('|')
            .find_map(|a| value(a, facts))
            .ok_or_else(|| Unfilled(format!("{{{body}}}")))?;
        out.push_str(&v);
        rest = &rest[open + body.len() + 2..];
    }
    out.push_str(rest);
    Ok(out)
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
    let bodies = slots(text);
    assert!(!bodies.is_empty(), "{text:?} parsed without a placeholder");
    let alternatives: Vec<&str> = bodies.iter().flat_map(|b| b.split('|')).collect();
    let label_keys: Vec<&str> = alternatives
        .iter()
        .filter_map(|a| a.strip_prefix("label:"))
        .collect();

    // Each fact spelled as its placeholder: the text back, each slot as its first alternative.
    if !label_keys.iter().any(|k| RESERVED.contains(k)) {
        let mut spelled: HashMap<String, String> = [
            (COMPOSE_PROJECT, "{compose_project}"),
            (COMPOSE_SERVICE, "{compose_service}"),
            (COMPOSE_NUMBER, "{compose_number}"),
            (SWARM_SERVICE, "{swarm_service}"),
            (SWARM_TASK, "{swarm_service}.{swarm_slot}.task"),
            (SWARM_NODE, "{swarm_node}"),
            (STACK_NAMESPACE, "{swarm_stack}"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for key in &label_keys {
            spelled.insert(key.to_string(), format!("{{label:{key}}}"));
        }
        let identity = NameFacts {
            host: "{host}",
            container: "{container}",
            id: "{id}",
            labels: Some(&spelled),
        };
        let mut want = String::new();
        let mut rest = text;
        for body in &bodies {
            let open = rest.find('{').unwrap();
            want.push_str(&rest[..open]);
            want.push_str(&format!("{{{}}}", body.split('|').next().unwrap()));
            rest = &rest[open + body.len() + 2..];
        }
        want.push_str(rest);
        assert_eq!(template.render(&identity), Ok(want), "{text:?}");
    }

    // Arbitrary facts: no panic, and the one-pass substitution with fallbacks.
    let labels: Option<HashMap<String, String>> = input.labels.map(|l| l.into_iter().collect());
    let facts = NameFacts {
        host: &input.host,
        container: &input.container,
        id: &input.id,
        labels: labels.as_ref(),
    };
    let rendered = template.render(&facts);
    assert_eq!(rendered, substitute(text, &facts), "{text:?}");
    let from_labels = alternatives.iter().any(|a| {
        a.starts_with("compose_") || a.starts_with("swarm_") || a.starts_with("label:")
    });
    if !from_labels {
        let without_labels = NameFacts {
            labels: None,
            ..facts.clone()
        };
        assert_eq!(rendered, template.render(&without_labels), "{text:?}");
    }
    let swarm_labelled = labels
        .as_ref()
        .is_some_and(|l| l.contains_key(SWARM_SERVICE) && l.contains_key(SWARM_TASK));
    if !swarm_labelled {
        assert_eq!(
            default_name(&facts),
            format!("{}/{}", input.host, input.container)
        );
    }

    let id_text: String = input.id.chars().take(12).collect();
    let id_only = NameTemplate::parse("{id}").unwrap().render(&facts);
    assert_eq!(id_only, Ok(id_text), "{{id}} of {:?}", input.id);
});
