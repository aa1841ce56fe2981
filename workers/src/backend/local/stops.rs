//! Stop sequences on a token stream: text is released as soon as it cannot
//! be the start of a stop, and cut where one begins.

/// Cuts the text at stop sequences, holding back what might be the start of
/// one until it is known not to be.
#[derive(Debug)]
pub(super) struct StopFilter {
    stops: Vec<String>,
    hold: usize,
    text: String,
    emitted: usize,
}

impl StopFilter {
    pub(super) fn new(stops: &[String]) -> Self {
        let stops: Vec<String> = stops.iter().filter(|s| !s.is_empty()).cloned().collect();
        Self {
            hold: stops
                .iter()
                .map(String::len)
                .max()
                .unwrap_or(1)
                .saturating_sub(1),
            stops,
            text: String::new(),
            emitted: 0,
        }
    }

    /// Adds text; returns what may be sent now and whether a stop was hit.
    pub(super) fn push(&mut self, piece: &str) -> (String, bool) {
        self.text.push_str(piece);
        // A match cannot start before `emitted`: it would have been whole, and
        // found, by the time that text was released.
        if let Some(kept) = crate::backend::cut_at_stop(&self.text[self.emitted..], &self.stops) {
            let out = kept.to_owned();
            self.emitted = self.text.len();
            return (out, true);
        }
        let mut safe = self.text.len().saturating_sub(self.hold).max(self.emitted);
        while !self.text.is_char_boundary(safe) {
            safe -= 1;
        }
        let out = self.text[self.emitted..safe].to_owned();
        self.emitted = safe;
        (out, false)
    }

    /// The held-back rest, at the end of a completion without a stop.
    pub(super) fn finish(&mut self) -> String {
        let out = self.text[self.emitted..].to_owned();
        self.emitted = self.text.len();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_filter_holds_back_and_cuts() {
        let mut f = StopFilter::new(&["\n\n".into(), "END".into()]);
        assert_eq!(f.push("Hello"), ("Hel".into(), false));
        assert_eq!(f.push(" wor"), ("lo w".into(), false));
        assert_eq!(f.push("ld\n"), ("orl".into(), false));
        assert_eq!(f.push("\nmore"), ("d".into(), true));
        let mut f = StopFilter::new(&[]);
        assert_eq!(f.push("héllo"), ("héllo".into(), false));
        let mut f = StopFilter::new(&["xyz".into()]);
        assert_eq!(f.push("aé"), ("a".into(), false));
        assert_eq!(f.finish(), "é");
    }
}
