//! `decode_line` (and `decode_lenient`, its field-by-field fallback) on arbitrary bytes: one
//! line of the Engine's event stream.
//!
//! Never panics; a line that is not a JSON object yields nothing; an event's time is the
//! line's time (0 when the line has none); `name` and `image` become the hint, not labels;
//! the exit code is the one the attributes give; neither reading returns an event without an
//! id, of another type than `container`, nor a time that is not positive; the cursor of an
//! event encodes and decodes back to itself.

#![no_main]

use deploytrack::engine::events::{decode_lenient, decode_line, EventCursor, LenientEvent};
use libfuzzer_sys::fuzz_target;

fn check(line: &[u8], read: &LenientEvent) {
    if let Some(t) = read.time_nano {
        assert!(t > 0);
    }
    if let Some(event) = &read.event {
        assert!(!event.id.is_empty());
        assert_eq!(
            event.time_nano,
            read.time_nano.unwrap_or(0),
            "{:?}",
            String::from_utf8_lossy(line)
        );
        let labels = &event.hint.labels;
        assert!(!labels.contains_key("name") && !labels.contains_key("image"));
        let exit_code = labels
            .get("exitCode")
            .or(labels.get("containerExitCode"))
            .and_then(|c| c.parse::<i64>().ok());
        assert_eq!(event.exit_code, exit_code);

        let cursor = event.cursor();
        assert_eq!(cursor.action, event.action.name());
        if !cursor.id.contains(' ') {
            assert_eq!(EventCursor::decode(&cursor.encode()), Some(cursor));
        }
    }
}

fuzz_target!(|line: &[u8]| {
    // The typed model skips unknown fields without checking their text is UTF-8, so the
    // line's shape is judged with invalid bytes replaced.
    let value = serde_json::from_str::<serde_json::Value>(&String::from_utf8_lossy(line)).ok();
    let is_object = matches!(value, Some(serde_json::Value::Object(_)));
    // bollard's model, like any derived serde struct, also reads its fields from an array,
    // and it skips unknown fields without reading them (a number too large for a `Value`), so
    // only a line that does not even start like an object or array must yield nothing.
    let structured = line
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| matches!(b, b'{' | b'['));

    let read = decode_line(line);
    check(line, &read);
    if !is_object && !structured {
        assert!(read.event.is_none() && read.time_nano.is_none());
    }

    if let Some(serde_json::Value::Object(fields)) = &value {
        if fields.get("Type").is_some_and(|t| t != "container") {
            assert!(read.event.is_none(), "an event of another type");
        }
    }

    let lenient = decode_lenient(line);
    check(line, &lenient);
    if !is_object {
        assert!(lenient.event.is_none() && lenient.time_nano.is_none());
    }
});
