//! The domain's tests: keys, names and their templates, selection, environments, the report
//! body.

use super::*;

fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn body_matches_the_api() {
    let d = Deployment {
        key: DeploymentKey {
            environment: "production".into(),
            name: "edge-1/web".into(),
        },
        image_url: "docker.io/library/nginx@sha256:abc".into(),
        platform: Platform::new("linux", "arm64", Some("v8")),
        container: None,
    };
    assert_eq!(
        d.report_body(),
        r#"{"image":{"url":"docker.io/library/nginx@sha256:abc","name":"edge-1/web"},"environment":{"name":"production"},"platform":{"os":"linux","architecture":"arm64","variant":"v8"}}"#
    );
    let mut with = d.clone();
    with.container = Some(ContainerStatus {
        id: "c1".into(),
        state: ContainerState::Running,
        exit_code: None,
        since: None,
    });
    assert_eq!(
        Deployment::from_body(&with.report_body()),
        Some(with.clone())
    );
    let stopped = with.stopped(Some(137), None);
    assert!(stopped
        .report_body()
        .ends_with(r#""container":{"id":"c1","state":"stopped","exit_code":137}}"#));
    // The time is one more field, after the ones receivers already read.
    let at = with.stopped(Some(0), time_from_nanos(1_700_000_000_000_000_001));
    assert!(at.report_body().ends_with(
        r#""container":{"id":"c1","state":"stopped","exit_code":0,"since":"2023-11-14T22:13:20.000000001Z"}}"#
    ));
    assert_eq!(Deployment::from_body(&at.report_body()), Some(at));
}

fn facts<'a>(labels: &'a HashMap<String, String>) -> NameFacts<'a> {
    NameFacts {
        host: "edge-1",
        container: "shop-web-2",
        id: "0123456789abcdef",
        labels: Some(labels),
    }
}

/// The labels Swarm puts on a task's container; `middle` is the slot, or the node id.
fn swarm(service: &str, middle: &str) -> HashMap<String, String> {
    labels(&[
        (SWARM_SERVICE, service),
        (
            SWARM_TASK,
            &format!("{service}.{middle}.k3x9q1w2e3r4t5y6u7i8o9p0a"),
        ),
        (SWARM_NODE, "n0d3id0000000000000000000"),
        ("com.docker.swarm.task.id", "k3x9q1w2e3r4t5y6u7i8o9p0a"),
        ("com.docker.swarm.service.id", "s3rv1c3id0000000000000000"),
    ])
}

fn render(template: &str, facts: &NameFacts<'_>) -> Result<String, Unfilled> {
    NameTemplate::parse(template).unwrap().render(facts)
}

#[test]
fn templates() {
    let l = labels(&[
        (COMPOSE_PROJECT, "shop"),
        (COMPOSE_SERVICE, "web"),
        (COMPOSE_NUMBER, "2"),
    ]);
    let facts = facts(&l);
    let t = "{host}/{compose_project}/{compose_service}-{compose_number}";
    assert_eq!(render(t, &facts).unwrap(), "edge-1/shop/web-2");
    assert_eq!(
        render("{id}@{host}", &facts).unwrap(),
        "0123456789ab@edge-1"
    );
    // Without the labels: the placeholder that has no value, for the caller to log.
    let plain = NameFacts {
        labels: None,
        ..facts.clone()
    };
    assert_eq!(render(t, &plain), Err(Unfilled("{compose_project}".into())));
    assert_eq!(default_name(&plain), "edge-1/shop-web-2");
}

#[test]
fn bad_templates_are_refused() {
    use PlaceholderError as P;
    use TemplateError as T;
    let alone = |error| T::Placeholder {
        within: None,
        error,
    };
    let among = |within: &str, error| T::Placeholder {
        within: Some(within.into()),
        error,
    };
    let cases = [
        ("{host}/{nope}", alone(P::Unknown("nope".into()))),
        ("{host", T::UnclosedBrace("{host".into())),
        ("static", T::NoPlaceholder("static".into())),
        ("}{host}", T::UnopenedBrace("}{host}".into())),
        ("{host}}", T::UnopenedBrace("{host}}".into())),
        ("{}", alone(P::Empty)),
        ("{host|}", among("{host|}", P::Empty)),
        ("{|host}", among("{|host}", P::Empty)),
        ("{label:}", alone(P::NoLabelKey)),
        (
            "{label:a\nb}",
            alone(P::LabelKeyControlCharacters("a\nb".into())),
        ),
        (
            "{\"x\"}",
            T::LiteralNotLast {
                written: "{\"x\"}".into(),
            },
        ),
        (
            "{host|\"x\"|container}",
            T::LiteralNotLast {
                written: "{host|\"x\"|container}".into(),
            },
        ),
        (
            "{host|\"x}",
            T::UnquotedLiteral {
                written: "{host|\"x}".into(),
            },
        ),
        (
            "{host|\"a\"b\"}",
            T::UnquotedLiteral {
                written: "{host|\"a\"b\"}".into(),
            },
        ),
        (
            "{host|{container}}",
            T::BraceInPlaceholder {
                written: "{host|{container}".into(),
            },
        ),
        ("{ host }", alone(P::Unknown(" host ".into()))),
    ];
    for (bad, refusal) in cases {
        assert_eq!(NameTemplate::parse(bad), Err(refusal), "{bad:?}");
    }
    // A placeholder among alternatives is named with its slot; one alone, by itself.
    assert_eq!(
        NameTemplate::parse("{host|}").unwrap_err().to_string(),
        "{host|}: a placeholder or one of its alternatives is empty"
    );
    assert_eq!(
        NameTemplate::parse("{nope}").unwrap_err().to_string(),
        format!("unknown placeholder {{nope}} (known: {KNOWN_PLACEHOLDERS})")
    );
}

#[test]
fn labels_and_fallbacks() {
    let l = labels(&[("app", "shop"), ("empty", ""), (COMPOSE_SERVICE, "web")]);
    let facts = facts(&l);
    assert_eq!(render("{host}/{label:app}", &facts).unwrap(), "edge-1/shop");
    // The first alternative with a value wins; an empty label counts as missing.
    for (template, want) in [
        ("{label:team|label:app|container}", "shop"),
        ("{label:empty|container}", "shop-web-2"),
        ("{label:team|compose_service}", "web"),
        (
            "{swarm_stack|label:app}-{swarm_slot|compose_number|\"1\"}",
            "shop-1",
        ),
        ("{label:team|\"\"}{host}", "edge-1"),
        ("{label:com.docker.compose.service}", "web"),
    ] {
        assert_eq!(render(template, &facts).unwrap(), want, "{template}");
    }
    // No value and no fallback: the placeholder as written.
    assert_eq!(
        render("{host}/{label:team|swarm_service}", &facts),
        Err(Unfilled("{label:team|swarm_service}".into()))
    );
}

#[test]
fn swarm_names() {
    let replicated = swarm("shop_web", "2");
    let facts = facts(&replicated);
    assert_eq!(default_name(&facts), "shop_web.2");
    let t = "{swarm_service}|{swarm_slot}|{swarm_node}";
    assert_eq!(
        render(t, &facts).unwrap(),
        "shop_web|2|n0d3id0000000000000000000"
    );
    // A global task's name holds its node id where a replicated one's holds the slot.
    let global = swarm("agent", "n0d3id0000000000000000000");
    let facts = self::facts(&global);
    assert_eq!(default_name(&facts), "edge-1/agent");
    assert_eq!(render(t, &facts), Err(Unfilled("{swarm_slot}".into())));
    assert_eq!(
        render("{swarm_service}.{swarm_slot|host}", &facts).unwrap(),
        "agent.edge-1"
    );
    // A dot in the service name does not move the slot.
    let dotted = swarm("a.b", "7");
    assert_eq!(default_name(&self::facts(&dotted)), "a.b.7");
    // Stacks: the namespace label reaches the containers.
    let mut stacked = swarm("shop_web", "1");
    stacked.insert(STACK_NAMESPACE.into(), "shop".into());
    assert_eq!(
        render(
            "{swarm_stack}/{swarm_service}.{swarm_slot}",
            &self::facts(&stacked)
        )
        .unwrap(),
        "shop/shop_web.1"
    );
    // Outside Swarm, or with a task name that does not fit: the plain default.
    let none = labels(&[]);
    assert_eq!(default_name(&self::facts(&none)), "edge-1/shop-web-2");
    assert_eq!(
        render("{swarm_service}", &self::facts(&none)),
        Err(Unfilled("{swarm_service}".into()))
    );
    let odd = labels(&[(SWARM_SERVICE, "web"), (SWARM_TASK, "other.1.x")]);
    assert_eq!(default_name(&self::facts(&odd)), "edge-1/shop-web-2");
    assert_eq!(
        render("{swarm_service}", &self::facts(&odd)).unwrap(),
        "web"
    );
}

#[test]
fn two_swarms_qualified_by_a_literal() {
    // The README's template for the agents of one of two swarms reporting into one
    // environment: every kind of task gets the prefix.
    let t = NameTemplate::parse("eu/{swarm_service}.{swarm_slot|host}").unwrap();
    let replicated = swarm("web", "1");
    assert_eq!(t.render(&facts(&replicated)).unwrap(), "eu/web.1");
    let global = swarm("agent", "n0d3id0000000000000000000");
    assert_eq!(t.render(&facts(&global)).unwrap(), "eu/agent.edge-1");
}

#[test]
fn event_and_engine_times() {
    assert_eq!(
        time_from_nanos(1_700_000_000_123_456_789).as_deref(),
        Some("2023-11-14T22:13:20.123456789Z")
    );
    assert_eq!(time_from_nanos(0), None);
    assert_eq!(
        time_from_engine("2023-11-14T22:13:20.123456789Z").as_deref(),
        Some("2023-11-14T22:13:20.123456789Z")
    );
    assert_eq!(
        time_from_engine("2023-11-15T00:13:20.5+02:00").as_deref(),
        Some("2023-11-14T22:13:20.500000000Z")
    );
    assert_eq!(
        time_from_engine("2023-11-14T20:13:20-02:00").as_deref(),
        Some("2023-11-14T22:13:20.000000000Z")
    );
    // The engine's clock (`/info`'s SystemTime) as its events carry times.
    assert_eq!(
        nanos_from_engine("2023-11-15T00:13:20.5+02:00"),
        Some(1_700_000_000_500_000_000)
    );
    assert_eq!(nanos_from_engine("0001-01-01T00:00:00Z"), None);
    // The zero time of a container never started, and nonsense.
    assert_eq!(time_from_engine("0001-01-01T00:00:00Z"), None);
    assert_eq!(time_from_engine("yesterday"), None);
    assert_eq!(time_from_engine("2023-11-14T22:13:2ŋ"), None);
    assert_eq!(time_from_engine("2023-11-14T22:13:20+ŋ:00"), None);
    assert_eq!(time_from_engine(""), None);
}

#[test]
fn the_short_id_is_twelve_characters_of_any_id() {
    let t = NameTemplate::parse("{id}").unwrap();
    let render = |id| {
        t.render(&NameFacts {
            id,
            ..NameFacts::default()
        })
        .unwrap()
    };
    assert_eq!(render("0123456789abcdef"), "0123456789ab");
    assert_eq!(render("short"), "short");
    // A multi-byte character across the twelfth byte used to panic the resolver.
    assert_eq!(render("aaaaaaaaaaaŋb"), "aaaaaaaaaaaŋ");
    assert_eq!(render("ŋŋŋŋŋŋŋŋŋŋŋŋŋ"), "ŋŋŋŋŋŋŋŋŋŋŋŋ");
}

#[test]
fn selection_rules() {
    let mut s = Selection::default();
    assert_eq!(
        s.check(&labels(&[(LABEL_ENABLE, "false")])),
        Err(SkipReason::OptedOut)
    );
    assert_eq!(s.check(&labels(&[])), Ok(()));
    s.require_label = true;
    assert_eq!(s.check(&labels(&[])), Err(SkipReason::NotOptedIn));
    assert_eq!(s.check(&labels(&[(LABEL_ENABLE, "true")])), Ok(()));
    s.selector = LabelSelector::parse(&["team=a".into(), "tier".into()]).unwrap();
    assert_eq!(
        s.check(&labels(&[
            (LABEL_ENABLE, "true"),
            ("team", "b"),
            ("tier", "x")
        ])),
        Err(SkipReason::OutOfScope)
    );
    assert_eq!(
        s.check(&labels(&[
            (LABEL_ENABLE, "true"),
            ("team", "a"),
            ("tier", "")
        ])),
        Ok(())
    );
}

#[test]
fn platforms() {
    assert_eq!(
        Platform::parse("linux/arm64/v8").unwrap(),
        Platform::new("linux", "arm64", Some("v8"))
    );
    for bad in ["linux", "linux//x"] {
        assert_eq!(
            Platform::parse(bad),
            Err(PlatformError::NotOsArch(bad.into()))
        );
    }
}

#[test]
fn one_rule_for_environment_names() {
    for good in ["production", "staging-ü", "eu west"] {
        assert_eq!(validate_environment(good), Ok(()), "{good:?}");
    }
    let err = validate_environment(" prod ").unwrap_err();
    assert_eq!(
        err,
        EnvironmentError::Spaces {
            name: " prod ".into()
        }
    );
    assert_eq!(
        err.to_string(),
        "\" prod \" begins or ends with a space (the receiver would keep it as another environment than \"prod\")"
    );
    assert_eq!(
        validate_environment("prod\t"),
        Err(EnvironmentError::ControlCharacters("prod\t".into()))
    );
    assert_eq!(validate_environment("  "), Err(EnvironmentError::Empty));
    assert_eq!(
        EnvironmentError::Empty.to_string(),
        "the environment name is empty"
    );
}

#[test]
fn one_rule_for_booleans() {
    for word in ["true", "1", "yes", "YES", " True "] {
        assert_eq!(parse_bool(word), Some(true), "{word:?}");
    }
    for word in ["false", "0", "no", "No"] {
        assert_eq!(parse_bool(word), Some(false), "{word:?}");
    }
    for word in ["maybe", "on", "", "2"] {
        assert_eq!(parse_bool(word), None, "{word:?}");
    }
    assert!(BOOL_WORDS.iter().all(|w| parse_bool(w).is_some()));
}
