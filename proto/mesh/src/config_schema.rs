//! JSON Schema pieces for configuration fields whose serde form the types do
//! not show: durations are read by `humantime_serde` as strings such as
//! `500ms` or `1m 30s`, not as the `{secs, nanos}` of `Duration`'s own
//! serde form. Configuration types name these with
//! `#[schemars(schema_with = "...")]` next to their `serde(with)`.

use schemars::{Schema, SchemaGenerator, json_schema};

/// What `humantime` parses: numbers (fractions allowed) with a unit,
/// concatenated, spaces allowed between them.
pub const DURATION_PATTERN: &str = r"^ *([0-9]+(\.[0-9]+)? *(nanos|nsec|ns|usec|us|µs|millis|msec|ms|seconds|second|secs|sec|s|minutes|minute|mins|min|m|hours|hour|hrs|hr|h|days|day|d|weeks|week|wks|wk|w|months|month|M|years|year|yrs|yr|y) *)+$";

/// A `Duration` read through `humantime_serde`.
pub fn duration(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "pattern": DURATION_PATTERN,
        "examples": ["500ms", "2s", "1m 30s"],
    })
}

/// An `Option<Duration>` read through `humantime_serde`: a duration or null.
pub fn optional_duration(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": ["string", "null"],
        "pattern": DURATION_PATTERN,
        "examples": ["500ms", "2s", "1m 30s"],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pattern accepts what `humantime` parses and refuses what it does not.
    #[test]
    fn the_pattern_agrees_with_humantime() {
        let re = regex::Regex::new(DURATION_PATTERN).unwrap();
        let pattern = |text: &str| re.is_match(text);
        for ok in [
            "500ms", "2s", "1m 30s", "1h30m", "1.5s", "10 min", "7days", "1M",
        ] {
            assert!(humantime::parse_duration(ok).is_ok(), "{ok}");
            assert!(pattern(ok), "{ok}");
        }
        for bad in ["", "2", "two minutes", "5 parsecs", "-1s", "1s,2s"] {
            assert!(humantime::parse_duration(bad).is_err(), "{bad}");
            assert!(!pattern(bad), "{bad}");
        }
    }
}
