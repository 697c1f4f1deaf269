//! The dispatcher's rules, in-process: a scripted sink, a queue in memory and paused time
//! (tokio moves the clock to the next timer whenever every task waits), so each timing is
//! asserted exactly, in milliseconds of test time.

use tokio::task::JoinHandle;
use tracing::subscriber::DefaultGuard;

use super::*;
use crate::deliver::script::{ms_since, ok, unavailable, Logs, MemoryQueue, ScriptedSink};

const S: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);

/// A dispatcher as the agent makes one, but with a steady backoff (1 s doubling up to 60 s)
/// so that every wait is exact.
fn dispatcher(
    queue: &MemoryQueue,
    sink: &Arc<ScriptedSink>,
    concurrency: usize,
) -> Dispatcher<MemoryQueue> {
    let (_reconciled, reconciled) = watch::channel(true);
    Dispatcher {
        outbox: queue.clone(),
        reconciled,
        sink: sink.clone(),
        concurrency,
        retry: Backoff::steady(S, 60 * S),
        telemetry: Arc::new(Telemetry::new()),
        reminder: REMINDER_FIRST,
        token_reload: None,
    }
}

/// Test time's start, the log lines from then on (until the guard drops), and an empty
/// queue on that clock.
fn begin() -> (Instant, Logs, DefaultGuard, MemoryQueue) {
    let start = Instant::now();
    let (logs, guard) = Logs::capture(start);
    (start, logs, guard, MemoryQueue::new(start))
}

/// The dispatcher running as the agent runs it; a shutdown gives `grace` to the requests
/// in flight.
struct Running {
    shutdown: watch::Sender<bool>,
    task: JoinHandle<Result<(), Error>>,
}

fn run(dispatcher: Dispatcher<MemoryQueue>, grace: Duration) -> Running {
    let (shutdown, stop) = watch::channel(false);
    let task = tokio::spawn(dispatcher.run(stop, grace, false));
    Running { shutdown, task }
}

impl Running {
    /// Shut down, and wait until the dispatcher returns.
    async fn stop(self) {
        self.shutdown.send(true).unwrap();
        self.task.await.unwrap().unwrap();
    }
}

#[test]
fn backoff_escalates_once_per_failed_probe() {
    let mut hold = Hold::default();
    // Four requests in flight when the endpoint goes down: one step, not four.
    hold.count_failure(false);
    hold.until = Some(Instant::now());
    for _ in 0..3 {
        hold.count_failure(false);
    }
    assert_eq!(hold.failures, 1);
    // Then each failed probe is one more step.
    hold.count_failure(true);
    hold.count_failure(true);
    assert_eq!(hold.failures, 3);
}

/// When each reminder of a hold falls, from its start, over `over`.
fn reminder_times(first: Duration, over: Duration) -> Vec<Duration> {
    let (mut at, mut every, mut times) = (first, first, Vec::new());
    while at <= over {
        times.push(at);
        every = next_reminder_interval(every);
        at += every;
    }
    times
}

#[test]
fn a_day_long_outage_writes_a_few_dozen_reminders() {
    let day = reminder_times(REMINDER_FIRST, Duration::from_secs(24 * 3600));
    assert!((20..=40).contains(&day.len()), "{} reminders", day.len());
    let secs: Vec<u64> = day.iter().take(4).map(Duration::as_secs).collect();
    assert_eq!(secs, [60, 180, 420, 900]);
    let gaps: Vec<Duration> = day.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.iter().all(|g| *g <= REMINDER_MAX));
    assert_eq!(gaps.last(), Some(&REMINDER_MAX));
}

#[tokio::test(start_paused = true)]
async fn one_probe_at_a_time_while_held_and_the_backoff_escalates_once_per_failed_probe() {
    let (start, logs, _guard, queue) = begin();
    for name in ["a", "b", "c", "d"] {
        queue.push(name);
    }
    // Each answer takes 100 ms: four fail at once, then three probes; then it works.
    let fail = (100 * MS, unavailable(None));
    let sink = ScriptedSink::new(start, vec![fail; 7], (100 * MS, ok()));
    let running = run(dispatcher(&queue, &sink, 4), 5 * S);
    tokio::time::sleep(60 * S).await;

    // The four failures in flight together count once: the probe comes 2 s after them
    // (the backoff after one failure); then 2, 4 and 8 s after each failed probe. The
    // probe that works drains the rest at once.
    assert_eq!(
        sink.times(),
        [0, 0, 0, 0, 2100, 4200, 8300, 16400, 16500, 16500, 16500]
    );
    assert_eq!(
        sink.bodies(),
        ["a v1", "b v2", "c v3", "d v4", "a v1", "b v2", "c v3", "d v4", "a v1", "b v2", "c v3"]
    );
    let calls = sink.calls();
    for probe in calls[4..8].windows(2) {
        assert!(probe[0].ended.unwrap() <= probe[1].at, "{probe:?}");
    }
    assert_eq!(sink.most_in_flight(), 4);
    assert_eq!(
        logs.times("cannot deliver; holding the queue and retrying with backoff"),
        [100]
    );
    let back = logs.find("the endpoint accepts reports again; draining the queue");
    assert_eq!(back.len(), 1, "{back:?}");
    assert_eq!(
        (back[0].at, back[0].text.ends_with(" after_failures=4")),
        (16500, true)
    );
    assert_eq!(queue.pending_names(), Vec::<String>::new());
    assert_eq!(queue.memory().delivered.len(), 4);
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_a_floor_under_the_backoff() {
    let (start, _logs, _guard, queue) = begin();
    queue.push("a");
    let sink = ScriptedSink::new(
        start,
        [
            // Longer than the backoff (1 s): waited.
            (Duration::ZERO, unavailable(Some(30 * S))),
            // Shorter than the backoff (2 s): the backoff.
            (Duration::ZERO, unavailable(Some(S))),
            // Past the backoff's maximum (60 s): waited too.
            (Duration::ZERO, unavailable(Some(300 * S))),
        ],
        (Duration::ZERO, ok()),
    );
    let running = run(dispatcher(&queue, &sink, 4), 5 * S);
    tokio::time::sleep(3600 * S).await;
    assert_eq!(sink.times(), [0, 30_000, 32_000, 332_000]);
    assert_eq!(queue.memory().delivered, [("a".to_string(), 1)]);
    running.stop().await;
}

/// A hold whose time is up while a request sent before it is still in flight: the probe
/// waits for that request to end, and the loop sleeps meanwhile (it does not spin).
#[tokio::test(start_paused = true)]
async fn a_hold_over_while_a_request_is_in_flight_waits_for_it() {
    let (start, _logs, _guard, queue) = begin();
    queue.push("a");
    queue.push("b");
    queue.push("c");
    let sink = ScriptedSink::new(
        start,
        [
            // a: 503 at 100 ms; b: delivered at 30 s; c: the probe.
            (100 * MS, unavailable(None)),
            (30 * S, ok()),
        ],
        (100 * MS, ok()),
    );
    let running = run(dispatcher(&queue, &sink, 2), 5 * S);
    tokio::time::sleep(60 * S).await;
    // The hold (1 s from 100 ms) is over at 1.1 s, but b is in flight until 30 s: b's
    // delivery ends the hold, and a and c go then.
    assert_eq!(sink.times(), [0, 0, 30_000, 30_000]);
    assert_eq!(queue.pending_names(), Vec::<String>::new());
    running.stop().await;
}

/// Retry-After is a floor for the whole endpoint: a request sent before the endpoint asked
/// for the pause, and delivered after, does not end the hold; the probe, when the hold's
/// time is up, does.
#[tokio::test(start_paused = true)]
async fn a_request_sent_before_a_retry_after_does_not_end_its_hold() {
    let (start, logs, _guard, queue) = begin();
    queue.push("a");
    queue.push("b");
    let sink = ScriptedSink::new(
        start,
        [
            // a: 503 at 100 ms, asking for 10 s.
            (100 * MS, unavailable(Some(10 * S))),
            // b, sent with a: delivered at 300 ms.
            (300 * MS, ok()),
        ],
        (Duration::ZERO, ok()),
    );
    let running = run(dispatcher(&queue, &sink, 4), 5 * S);
    tokio::time::sleep(200 * MS).await;
    // c comes while held: it waits for the Retry-After, b's success notwithstanding.
    queue.push("c");
    tokio::time::sleep(60 * S).await;
    // The probe (c, due first) at 10.1 s ends the hold; then a.
    assert_eq!(sink.times(), [0, 0, 10_100, 10_100]);
    assert_eq!(sink.bodies(), ["a v1", "b v2", "c v3", "a v1"]);
    assert_eq!(
        logs.times("the endpoint accepts reports again; draining the queue"),
        [10_100]
    );
    assert_eq!(queue.pending_names(), Vec::<String>::new());
    running.stop().await;
}

/// A hold without Retry-After that another request in flight asks to extend with one: the
/// floor holds for the rest of the hold.
#[tokio::test(start_paused = true)]
async fn a_retry_after_in_a_hold_already_begun_is_a_floor_too() {
    let (start, _logs, _guard, queue) = begin();
    for name in ["a", "b", "c"] {
        queue.push(name);
    }
    let sink = ScriptedSink::new(
        start,
        [
            // a: 503 at 100 ms, the hold begins (1 s of backoff).
            (100 * MS, unavailable(None)),
            // b: 429 at 200 ms, asking for 10 s.
            (200 * MS, unavailable(Some(10 * S))),
            // c: delivered at 300 ms.
            (300 * MS, ok()),
        ],
        (Duration::ZERO, ok()),
    );
    let running = run(dispatcher(&queue, &sink, 4), 5 * S);
    tokio::time::sleep(60 * S).await;
    // Not at 1.1 s nor at 300 ms: the probe (a) at 10.2 s, then b.
    assert_eq!(sink.times(), [0, 0, 0, 10_200, 10_200]);
    assert_eq!(sink.bodies(), ["a v1", "b v2", "c v3", "a v1", "b v2"]);
    assert_eq!(queue.pending_names(), Vec::<String>::new());
    running.stop().await;
}

/// Without Retry-After (a 5xx, a rejected token, a wrong URL), a success of a request sent
/// before the hold proves the endpoint takes reports: the hold ends at once and what waits
/// is sent.
#[tokio::test(start_paused = true)]
async fn without_retry_after_a_success_in_flight_ends_the_hold() {
    for failure in [
        unavailable(None),
        Outcome::Unauthorized { status: 401 },
        Outcome::Misconfigured {
            reason: "no endpoint at this URL (404): is --url mistyped?".into(),
        },
    ] {
        let (start, logs, guard, queue) = begin();
        queue.push("a");
        queue.push("b");
        let sink = ScriptedSink::new(
            start,
            [(100 * MS, failure.clone()), (300 * MS, ok())],
            (Duration::ZERO, ok()),
        );
        let running = run(dispatcher(&queue, &sink, 4), 5 * S);
        tokio::time::sleep(200 * MS).await;
        queue.push("c");
        tokio::time::sleep(60 * S).await;
        // b delivered at 300 ms: a (its backoff reset) and c are sent at once.
        assert_eq!(sink.times(), [0, 0, 300, 300], "{failure:?}");
        assert_eq!(
            sink.bodies(),
            ["a v1", "b v2", "a v1", "c v3"],
            "{failure:?}"
        );
        assert_eq!(
            logs.times("the endpoint accepts reports again; draining the queue"),
            [300],
            "{failure:?}"
        );
        assert_eq!(queue.pending_names(), Vec::<String>::new());
        running.stop().await;
        drop(guard);
    }
}

/// 401 and 403 (the token), 404 and 410 (the URL, as `classify` reads them): every report
/// stays queued, one probe at a time tests the endpoint, one error line says why, and
/// nothing is dead-lettered.
#[tokio::test(start_paused = true)]
async fn credentials_and_wrong_urls_hold_the_queue_without_dead_letters() {
    let no_headers = reqwest::header::HeaderMap::new();
    let wrong_url = |status| {
        super::super::classify(
            reqwest::StatusCode::from_u16(status).unwrap(),
            &no_headers,
            b"",
        )
    };
    let token_rejected = "the endpoint rejected the API token; every report stays queued and is retried; the token came from DEPLOYTRACK_TOKEN";
    let url_wrong = "the endpoint cannot take reports until the configuration is fixed; every report stays queued and is retried";
    for (refusal, said, detail) in [
        (Outcome::Unauthorized { status: 401 }, token_rejected, " status=401 retry_in=1s"),
        (Outcome::Unauthorized { status: 403 }, token_rejected, " status=403 retry_in=1s"),
        (wrong_url(404), url_wrong, " reason=no endpoint at this URL (404): is --url mistyped? retry_in=1s"),
        (wrong_url(410), url_wrong, " reason=the endpoint at this URL is gone (410): was it deleted? set --url to the new one retry_in=1s"),
    ] {
        let (start, logs, guard, queue) = begin();
        for name in ["a", "b", "c"] {
            queue.push(name);
        }
        // Three refused at once, then two refused probes; then it works.
        let sink = ScriptedSink::new(start, vec![(Duration::ZERO, refusal.clone()); 5], (Duration::ZERO, ok()));
        let running = run(dispatcher(&queue, &sink, 4), 5 * S);
        tokio::time::sleep(7 * S).await;
        assert_eq!(queue.pending_names(), ["a", "b", "c"], "{refusal:?}");
        assert_eq!(queue.memory().dead, [], "{refusal:?}");
        tokio::time::sleep(60 * S).await;
        assert_eq!(sink.times(), [0, 0, 0, 2000, 4000, 8000, 8000, 8000], "{refusal:?}");
        assert_eq!(
            sink.bodies(),
            ["a v1", "b v2", "c v3", "a v1", "b v2", "c v3", "a v1", "b v2"],
            "{refusal:?}"
        );
        let errors = logs.find(said);
        assert_eq!(errors.len(), 1, "{refusal:?}: {errors:?}");
        assert_eq!(errors[0].level, tracing::Level::ERROR);
        assert!(errors[0].text.ends_with(detail), "{:?}", errors[0]);
        assert_eq!(queue.pending_names(), Vec::<String>::new());
        assert_eq!(queue.memory().dead, []);
        running.stop().await;
        drop(guard);
    }
}

/// While held, a reminder at 1, 3, 7 and 15 minutes (the interval doubles), with the queue
/// depth, the oldest report's age and the last error; none once the endpoint is back.
#[tokio::test(start_paused = true)]
async fn a_held_queue_is_reminded_at_doubling_intervals_until_the_endpoint_is_back() {
    let (start, logs, _guard, queue) = begin();
    queue.push("a");
    queue.push("b");
    let refused = (Duration::ZERO, Outcome::Unauthorized { status: 401 });
    let sink = ScriptedSink::new(start, vec![refused; 22], (Duration::ZERO, ok()));
    let running = run(dispatcher(&queue, &sink, 4), 5 * S);
    tokio::time::sleep(4000 * S).await;

    // Probes at the backoff (up to its maximum, 60 s); the 23rd attempt works, at 964 s.
    let mut probes = vec![0, 0, 2000, 4000, 8000, 16_000, 32_000, 64_000];
    probes.extend((1..=15).map(|n| 64_000 + n * 60_000));
    probes.push(964_000);
    assert_eq!(sink.times(), probes);
    let reminder = "the endpoint still does not accept reports; they stay queued and are retried";
    assert_eq!(logs.times(reminder), [60_000, 180_000, 420_000, 900_000]);
    let first = &logs.find(reminder)[0];
    assert_eq!(first.level, tracing::Level::WARN);
    assert_eq!(
        first.text,
        format!("{reminder} queued=2 oldest=1m last_error=the endpoint answered 401: credentials rejected")
    );
    assert_eq!(logs.times("the endpoint accepts reports again"), [964_000]);
    running.stop().await;
}

#[tokio::test(start_paused = true)]
async fn requests_run_concurrently_up_to_the_limit() {
    let (start, _logs, _guard, queue) = begin();
    for name in ["a", "b", "c", "d", "e", "f", "g"] {
        queue.push(name);
    }
    let sink = ScriptedSink::new(start, [], (S, ok()));
    let running = run(dispatcher(&queue, &sink, 3), 5 * S);
    tokio::time::sleep(10 * S).await;
    assert_eq!(sink.times(), [0, 0, 0, 1000, 1000, 1000, 2000]);
    assert_eq!(sink.most_in_flight(), 3);
    assert_eq!(queue.memory().delivered.len(), 7);
    running.stop().await;
}

/// A newer report for a key whose request is in flight waits for that request to end,
/// while a report for another key goes at once.
#[tokio::test(start_paused = true)]
async fn never_two_requests_for_one_key_at_once() {
    let (start, _logs, _guard, queue) = begin();
    queue.push("a");
    let sink = ScriptedSink::new(start, [(10 * S, ok())], (S, ok()));
    let running = run(dispatcher(&queue, &sink, 4), 5 * S);
    tokio::time::sleep(S).await;
    queue.push("a");
    queue.push("b");
    tokio::time::sleep(30 * S).await;
    let calls: Vec<(String, u64, Option<u64>)> = sink
        .calls()
        .into_iter()
        .map(|c| (c.body, c.at, c.ended))
        .collect();
    assert_eq!(
        calls,
        [
            ("a v1".to_string(), 0, Some(10_000)),
            ("b v3".to_string(), 1000, Some(2000)),
            ("a v2".to_string(), 10_000, Some(11_000)),
        ]
    );
    assert_eq!(sink.same_key_at_once(), Vec::<String>::new());
    // The first request's answer does not settle the newer report.
    assert_eq!(
        queue.memory().delivered,
        [("b".to_string(), 3), ("a".to_string(), 2)]
    );
    running.stop().await;
}

/// At shutdown nothing new starts; a request in flight that ends within the grace period
/// is recorded, one still in flight at its end is abandoned and stays queued.
#[tokio::test(start_paused = true)]
async fn shutdown_lets_requests_in_flight_finish_within_the_grace_and_keeps_the_rest() {
    let (start, logs, _guard, queue) = begin();
    for name in ["a", "b", "c"] {
        queue.push(name);
    }
    let sink = ScriptedSink::new(start, [(3 * S, ok()), (20 * S, ok())], (S, ok()));
    let running = run(dispatcher(&queue, &sink, 2), 5 * S);
    tokio::time::sleep(S).await;
    running.shutdown.send(true).unwrap();
    running.task.await.unwrap().unwrap();
    assert_eq!(
        ms_since(start),
        6000,
        "the dispatcher returned at the grace's end"
    );
    let calls: Vec<(String, u64, Option<u64>)> = sink
        .calls()
        .into_iter()
        .map(|c| (c.body, c.at, c.ended))
        .collect();
    assert_eq!(
        calls,
        [
            ("a v1".to_string(), 0, Some(3000)),
            ("b v2".to_string(), 0, None)
        ]
    );
    assert_eq!(queue.memory().delivered, [("a".to_string(), 1)]);
    assert_eq!(queue.pending_names(), ["b", "c"]);
    let abandoned =
        logs.find("shutdown grace period over; abandoning requests in flight (they stay queued)");
    assert_eq!(abandoned.len(), 1, "{abandoned:?}");
    assert_eq!(
        (abandoned[0].at, abandoned[0].text.ends_with(" in_flight=1")),
        (6000, true)
    );
}

/// When the requests in flight end before the grace period does, the dispatcher returns
/// then, not at its end.
#[tokio::test(start_paused = true)]
async fn shutdown_waits_no_longer_than_the_requests_in_flight() {
    let (start, logs, _guard, queue) = begin();
    queue.push("a");
    let sink = ScriptedSink::new(start, [], (2 * S, ok()));
    let running = run(dispatcher(&queue, &sink, 2), 5 * S);
    tokio::time::sleep(S).await;
    running.stop().await;
    assert_eq!(ms_since(start), 2000);
    assert_eq!(queue.memory().delivered, [("a".to_string(), 1)]);
    assert_eq!(logs.times("shutdown grace period over"), Vec::<u64>::new());
}

/// A refused report (another 4xx) is dead-lettered and never sent again, and holds nothing:
/// the others go on at once.
#[tokio::test(start_paused = true)]
async fn a_refused_report_is_dead_lettered_and_never_sent_again() {
    let (start, logs, _guard, queue) = begin();
    queue.push("bad");
    queue.push("good");
    let refused = Outcome::Rejected {
        status: 400,
        response: "image.url is not pinned by digest".into(),
    };
    let sink = ScriptedSink::new(start, [(Duration::ZERO, refused)], (Duration::ZERO, ok()));
    let running = run(dispatcher(&queue, &sink, 4), 5 * S);
    tokio::time::sleep(10 * S).await;
    queue.push("later");
    tokio::time::sleep(3600 * S).await;
    assert_eq!(sink.bodies(), ["bad v1", "good v2", "later v3"]);
    assert_eq!(sink.times(), [0, 0, 10_000]);
    assert_eq!(
        queue.memory().dead,
        [(
            "bad".to_string(),
            400,
            "image.url is not pinned by digest".to_string()
        )]
    );
    assert_eq!(queue.pending_names(), Vec::<String>::new());
    assert_eq!(
        logs.times("the endpoint refused this report; moved it to the dead letters"),
        [0]
    );
    assert_eq!(logs.times("cannot deliver"), Vec::<u64>::new());
    running.stop().await;
}

/// `sync --once`: the dispatcher returns once nothing is pending, not before.
#[tokio::test(start_paused = true)]
async fn until_empty_returns_once_everything_is_delivered() {
    let (start, _logs, _guard, queue) = begin();
    queue.push("a");
    let sink = ScriptedSink::new(
        start,
        [(Duration::ZERO, unavailable(Some(5 * S)))],
        (S, ok()),
    );
    let (_shutdown, stop) = watch::channel(false);
    dispatcher(&queue, &sink, 4)
        .run(stop, Duration::ZERO, true)
        .await
        .unwrap();
    // Refused at 0 s; the probe after the Retry-After (5 s) takes 1 s and is delivered.
    assert_eq!(sink.times(), [0, 5000]);
    assert_eq!(ms_since(start), 6000);
    assert_eq!(queue.memory().delivered, [("a".to_string(), 1)]);
}

/// While the endpoint rejects the token, the token's file is read again before each probe:
/// a new token is sent from the next probe on (said once), an unreadable file leaves the
/// one read before in use (said once per hold).
#[tokio::test(start_paused = true)]
async fn a_rejected_token_is_read_again_before_each_probe() {
    let start = Instant::now();
    let (logs, _guard) = Logs::capture(start);
    let path = std::env::temp_dir().join(format!(
        "deploytrack-token-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::write(&path, "first\n").unwrap();
    let source = format!("--token-file {}", path.display());
    let queue = MemoryQueue::new(start);
    queue.push("a");
    let refused = (Duration::ZERO, Outcome::Unauthorized { status: 401 });
    let sink = ScriptedSink::new(start, vec![refused; 4], (Duration::ZERO, ok()));
    let mut d = dispatcher(&queue, &sink, 4);
    d.token_reload = Some(TokenFile {
        path: path.clone(),
        source: source.clone(),
        credential: false,
    });
    let running = run(d, 5 * S);
    tokio::time::sleep(2 * S).await;
    std::fs::write(&path, "second\n").unwrap();
    tokio::time::sleep(3 * S).await;
    std::fs::remove_file(&path).unwrap();
    tokio::time::sleep(60 * S).await;

    let calls: Vec<(u64, String)> = sink.calls().into_iter().map(|c| (c.at, c.token)).collect();
    let sent = |at: u64, token: &str| (at, token.to_string());
    assert_eq!(
        calls,
        [
            sent(0, "first"),
            sent(1000, "first"),
            sent(3000, "second"),
            sent(7000, "second"),
            sent(15_000, "second")
        ]
    );
    let rejected = logs.find("the endpoint rejected the API token");
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert!(
        rejected[0].text.contains(&format!("the token is read again from {source} before the next attempt: write the new token there, no restart needed")),
        "{:?}",
        rejected[0]
    );
    assert_eq!(
        logs.times(&format!(
            "read a new API token from {source}; the next attempt sends it"
        )),
        [3000]
    );
    assert_eq!(
        logs.times("cannot read the API token again; the next attempts send the one read before"),
        [7000]
    );
    assert_eq!(queue.memory().delivered, [("a".to_string(), 1)]);
    running.stop().await;
}
