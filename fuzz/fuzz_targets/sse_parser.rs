//! The SSE parser never panics, bounds its buffer, and does not depend on
//! how the bytes were split into chunks: fed the same bytes whole or in
//! fuzzer-chosen pieces, it yields the same events whenever both succeed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use routemesh_worker::backend::sse::{SseEvent, SseParser};

fn parse<'a>(max_line: usize, chunks: impl Iterator<Item = &'a [u8]>) -> Option<Vec<SseEvent>> {
    let mut parser = SseParser::new(max_line);
    let mut events = Vec::new();
    for chunk in chunks {
        events.extend(parser.push(chunk).ok()?);
    }
    events.extend(parser.finish().ok()?);
    Some(events)
}

fuzz_target!(|data: &[u8]| {
    let [max_line, split, body @ ..] = data else {
        return;
    };
    let max_line = usize::from(*max_line) + 1;
    let split = usize::from(*split % 16) + 1;
    let whole = parse(max_line, std::iter::once(body));
    let pieces = parse(max_line, body.chunks(split));
    if let (Some(whole), Some(pieces)) = (whole, pieces) {
        assert_eq!(whole, pieces, "chunking changed the events");
    }
});
