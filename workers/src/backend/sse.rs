//! An incremental parser for server-sent events, as OpenAI-compatible engines stream them.
//!
//! Bytes arrive in arbitrary chunks; the parser buffers partial lines and yields
//! one [`SseEvent`] per blank-line-terminated event. It never panics and bounds
//! its buffer, so a peer that never sends a newline cannot grow it forever.

/// One complete event: its `data` lines joined with '\n'.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

/// The stream broke the SSE framing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    #[error("server-sent event line longer than {0} bytes")]
    LineTooLong(usize),
    #[error("server-sent event is not valid UTF-8")]
    NotUtf8,
}

#[derive(Debug)]
pub struct SseParser {
    pending: Vec<u8>,
    data: Option<String>,
    event: Option<String>,
    max_line: usize,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::new(1 << 20)
    }
}

impl SseParser {
    pub fn new(max_line: usize) -> Self {
        Self {
            pending: Vec::new(),
            data: None,
            event: None,
            max_line,
        }
    }

    /// Feed more bytes; returns the events they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, SseError> {
        let mut events = Vec::new();
        self.pending.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(offset) = self.pending[start..].iter().position(|b| *b == b'\n') {
            let end = start + offset;
            let mut line = &self.pending[start..end];
            if let [rest @ .., b'\r'] = line {
                line = rest;
            }
            let line = std::str::from_utf8(line)
                .map_err(|_| SseError::NotUtf8)?
                .to_owned();
            start = end + 1;
            if let Some(event) = self.line(&line) {
                events.push(event);
            }
        }
        self.pending.drain(..start);
        if self.pending.len() > self.max_line {
            return Err(SseError::LineTooLong(self.max_line));
        }
        Ok(events)
    }

    /// The stream ended: an event not yet terminated by a blank line still counts.
    pub fn finish(&mut self) -> Result<Option<SseEvent>, SseError> {
        if !self.pending.is_empty() {
            let line = std::str::from_utf8(&self.pending)
                .map_err(|_| SseError::NotUtf8)?
                .to_owned();
            self.pending.clear();
            if let Some(event) = self.line(&line) {
                return Ok(Some(event));
            }
        }
        Ok(self.dispatch())
    }

    fn line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            return self.dispatch();
        }
        if line.starts_with(':') {
            return None; // comment / keep-alive
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            },
            "event" => self.event = Some(value.to_owned()),
            _ => {} // id, retry and unknown fields do not matter here
        }
        None
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        let event = self.event.take();
        self.data.take().map(|data| SseEvent { event, data })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(chunks: &[&[u8]]) -> Result<Vec<String>, SseError> {
        let mut p = SseParser::new(64);
        let mut out = Vec::new();
        for c in chunks {
            out.extend(p.push(c)?.into_iter().map(|e| e.data));
        }
        out.extend(p.finish()?.map(|e| e.data));
        Ok(out)
    }

    #[test]
    fn splits_across_chunks_and_crlf() {
        let got = all(&[
            b"data: {\"a\"",
            b":1}\r\n\r\n: keep-alive\n\ndata: [DONE]\n\n",
        ]);
        assert_eq!(got, Ok(vec!["{\"a\":1}".to_string(), "[DONE]".to_string()]));
    }

    #[test]
    fn multi_line_data_and_unterminated_tail() {
        let got = all(&[b"event: x\ndata: a\ndata: b\n\ndata: tail"]);
        assert_eq!(got, Ok(vec!["a\nb".to_string(), "tail".to_string()]));
    }

    #[test]
    fn bounded_line_and_bad_utf8() {
        assert_eq!(all(&[&[b'x'; 100]]), Err(SseError::LineTooLong(64)));
        assert_eq!(all(&[b"data: \xff\xfe\n\n"]), Err(SseError::NotUtf8));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic sweep; the fuzz target goes further.
        let mut seed = 0x9e37_79b9_u32;
        for _ in 0..2000 {
            let mut p = SseParser::new(256);
            for _ in 0..8 {
                let len = (seed % 40) as usize;
                let chunk: Vec<u8> = (0..len)
                    .map(|i| {
                        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                        [b'd', b'a', b't', b':', b'\n', b'\r', b' ', 0xff][(seed as usize + i) % 8]
                    })
                    .collect();
                let _ = p.push(&chunk);
            }
            let _ = p.finish();
        }
    }
}

#[cfg(test)]
mod fuzz {
    //! Property tests: arbitrary bytes in arbitrary chunks never panic, and
    //! well-formed events survive any chunking unchanged.
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn arbitrary_chunks_never_panic(chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..16)) {
            let mut p = SseParser::new(512);
            for c in &chunks {
                let _ = p.push(c);
            }
            let _ = p.finish();
        }

        #[test]
        fn events_survive_any_chunking(
            datas in prop::collection::vec("[^\r\n]{0,40}", 1..8),
            cuts in prop::collection::vec(0usize..400, 0..10),
            crlf in any::<bool>(),
        ) {
            let nl = if crlf { "\r\n" } else { "\n" };
            let wire: String = datas.iter().map(|d| format!("data: {d}{nl}{nl}")).collect();
            let bytes = wire.as_bytes();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            cuts.sort_unstable();
            let mut p = SseParser::new(1 << 16);
            let mut got = Vec::new();
            let mut at = 0;
            for c in cuts.into_iter().chain([bytes.len()]) {
                got.extend(p.push(&bytes[at..c]).unwrap().into_iter().map(|e| e.data));
                at = c;
            }
            got.extend(p.finish().unwrap().map(|e| e.data));
            let expected = datas.clone();
            prop_assert_eq!(got, expected);
        }
    }
}
