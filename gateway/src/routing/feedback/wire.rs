//! The stored form of a feedback exemplar (what replicas share through Redis): a compact binary
//! record, about 450 bytes for a 384-dimension point. A record that does not decode is skipped by the
//! reader (counted), never trusted.

use super::{FeedbackEntry, PromptPoint, Scope};
use crate::routing::quality::RoutedPrompt;

/// Bumped when the layout changes; records of another version are skipped.
const FORMAT: u8 = 1;

fn put_str(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&bytes[..usize::from(len)]);
}

pub(super) fn encode(e: &FeedbackEntry) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + e.point.codes.len() + e.key.len() + e.model.len());
    out.push(FORMAT);
    put_str(&mut out, &e.key);
    match &e.scope {
        Scope::Global => out.push(0),
        Scope::Tenant(None) => out.push(1),
        Scope::Tenant(Some(t)) => {
            out.push(2);
            put_str(&mut out, t);
        }
    }
    match &e.source {
        None => out.push(0),
        Some(t) => {
            out.push(1);
            put_str(&mut out, t);
        }
    }
    put_str(&mut out, &e.model);
    out.extend_from_slice(&e.score.to_le_bytes());
    out.extend_from_slice(&e.base.to_le_bytes());
    put_str(&mut out, &e.space);
    out.extend_from_slice(&e.at_ms.to_le_bytes());
    put_point(&mut out, &e.point);
    match &e.embedding {
        None => out.push(0),
        Some(p) => {
            out.push(1);
            put_point(&mut out, p);
        }
    }
    out
}

fn put_point(out: &mut Vec<u8>, p: &PromptPoint) {
    out.extend_from_slice(&p.scale.to_le_bytes());
    let dim = u16::try_from(p.codes.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&dim.to_le_bytes());
    out.extend(
        p.codes
            .iter()
            .take(usize::from(dim))
            .map(|c| c.to_le_bytes()[0]),
    );
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2)?.try_into().ok().map(u16::from_le_bytes)
    }
    fn f32(&mut self) -> Option<f32> {
        self.take(4)?.try_into().ok().map(f32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)?.try_into().ok().map(u64::from_le_bytes)
    }
    fn point(&mut self) -> Option<PromptPoint> {
        let scale = self.f32()?;
        let dim = usize::from(self.u16()?);
        let codes: Box<[i8]> = self
            .take(dim)?
            .iter()
            .map(|b| i8::from_le_bytes([*b]))
            .collect();
        // -128 never comes out of quantisation (codes are within ±127), and the dot product's i16
        // pairs rely on that.
        let in_range = codes.iter().all(|&c| c != i8::MIN);
        // A unit vector's scale is its largest component / 127: at most 1/127. A larger one
        // would make the record near every prompt.
        let unit = scale.is_finite() && scale > 0.0 && scale <= 1.0 / 127.0 + f32::EPSILON;
        (in_range && unit).then_some(PromptPoint { codes, scale })
    }
    fn str(&mut self) -> Option<String> {
        let len = usize::from(self.u16()?);
        String::from_utf8(self.take(len)?.to_vec()).ok()
    }
}

pub(super) fn decode(bytes: &[u8]) -> Option<FeedbackEntry> {
    let mut r = Reader(bytes);
    if r.u8()? != FORMAT {
        return None;
    }
    let key = r.str()?;
    let scope = match r.u8()? {
        0 => Scope::Global,
        1 => Scope::Tenant(None),
        2 => Scope::Tenant(Some(r.str()?)),
        _ => return None,
    };
    let source = match r.u8()? {
        0 => None,
        1 => Some(r.str()?),
        _ => return None,
    };
    let model = r.str()?;
    let score = r.f32()?;
    let base = r.f32()?;
    let space = r.str()?;
    let at_ms = r.u64()?;
    let point = r.point()?;
    let embedding = match r.u8()? {
        0 => None,
        1 => Some(r.point()?),
        _ => return None,
    };
    let valid = r.0.is_empty() && (0.0..=1.0).contains(&score) && (0.0..=1.0).contains(&base);
    valid.then_some(FeedbackEntry {
        key,
        scope,
        source,
        model,
        score,
        base,
        space,
        point,
        embedding,
        at_ms,
    })
}

/// Bumped when the served-request layout changes.
const SERVED_FORMAT: u8 = 1;

/// The stored form of a served request (what another replica needs to take
/// feedback on it): the model and worker that answered, and what the router
/// said about the prompt (its scores per model, its point and embedding).
/// About 500 bytes with a 384-dimension point and embedding.
pub(crate) fn encode_served(model: &str, worker: &str, prompt: Option<&RoutedPrompt>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.push(SERVED_FORMAT);
    put_str(&mut out, model);
    put_str(&mut out, worker);
    let Some(p) = prompt else {
        out.push(0);
        return out;
    };
    out.push(1);
    put_str(&mut out, &p.space);
    let n = u16::try_from(p.scores.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&n.to_le_bytes());
    for (name, score) in p.scores.iter().take(usize::from(n)) {
        put_str(&mut out, name);
        out.extend_from_slice(&(*score as f32).to_le_bytes());
    }
    for point in [&p.point, &p.embedding] {
        match point {
            None => out.push(0),
            Some(point) => {
                out.push(1);
                put_point(&mut out, point);
            }
        }
    }
    out
}

/// A served request read back: `(model, worker, prompt)`; `None` for a
/// record that does not decode (never trusted half-read).
pub(crate) fn decode_served(bytes: &[u8]) -> Option<(String, String, Option<RoutedPrompt>)> {
    let mut r = Reader(bytes);
    if r.u8()? != SERVED_FORMAT {
        return None;
    }
    let model = r.str()?;
    let worker = r.str()?;
    let prompt = match r.u8()? {
        0 => None,
        1 => {
            let space = r.str()?;
            let n = r.u16()?;
            let mut scores = std::collections::HashMap::with_capacity(usize::from(n));
            for _ in 0..n {
                let name = r.str()?;
                let score = r.f32()?;
                if !(0.0..=1.0).contains(&score) {
                    return None;
                }
                scores.insert(name, f64::from(score));
            }
            let mut points = [None, None];
            for slot in &mut points {
                *slot = match r.u8()? {
                    0 => None,
                    1 => Some(r.point()?),
                    _ => return None,
                };
            }
            let [point, embedding] = points;
            Some(RoutedPrompt {
                scores,
                point,
                space: space.into(),
                embedding,
            })
        }
        _ => return None,
    };
    r.0.is_empty().then_some((model, worker, prompt))
}

#[cfg(test)]
mod served_tests {
    use super::*;

    #[test]
    fn a_served_request_round_trips_and_garbage_is_refused() {
        let point = PromptPoint::new(&[0.6, 0.8, 0.0], None).unwrap();
        let prompt = RoutedPrompt {
            scores: [("a".to_string(), 0.25), ("b".to_string(), 0.75)].into(),
            point: Some(point.clone()),
            space: "fast:abc".into(),
            embedding: Some(point),
        };
        let bytes = encode_served("m", "w-0", Some(&prompt));
        let (model, worker, back) = decode_served(&bytes).unwrap();
        assert_eq!((model.as_str(), worker.as_str()), ("m", "w-0"));
        let back = back.unwrap();
        assert_eq!(back.scores, prompt.scores);
        assert_eq!(back.point, prompt.point);
        assert_eq!(&*back.space, "fast:abc");
        assert_eq!(
            decode_served(&encode_served("m", "w", None)).unwrap().2,
            None
        );
        assert!(decode_served(&bytes[..bytes.len() - 1]).is_none());
        assert!(decode_served(b"\x07junk").is_none());
    }
}
