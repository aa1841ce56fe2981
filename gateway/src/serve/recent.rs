//! Recently served requests, remembered so Feedback can attribute a score to
//! the model and worker that answered. Bounded: the oldest are forgotten.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

#[derive(Debug, Clone, PartialEq)]
pub struct Served {
    pub model: String,
    pub worker_id: String,
    pub tenant: String,
    /// The prompt's region (router only), where its feedback counts.
    pub region: String,
}

#[derive(Debug)]
pub struct Recent {
    capacity: usize,
    inner: Mutex<(HashMap<String, Served>, VecDeque<String>)>,
}

impl Recent {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            inner: Mutex::default(),
        }
    }

    pub fn remember(&self, request_id: &str, served: Served) {
        let Ok(mut guard) = self.inner.lock() else {
            return;
        };
        let (map, order) = &mut *guard;
        if map.insert(request_id.to_string(), served).is_none() {
            order.push_back(request_id.to_string());
        }
        while order.len() > self.capacity {
            if let Some(old) = order.pop_front() {
                map.remove(&old);
            }
        }
    }

    pub fn lookup(&self, request_id: &str) -> Option<Served> {
        self.inner
            .lock()
            .ok()
            .and_then(|g| g.0.get(request_id).cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forgets_the_oldest() {
        let r = Recent::new(2);
        let s = |m: &str| Served {
            model: m.into(),
            worker_id: "w".into(),
            tenant: "t".into(),
            region: String::new(),
        };
        r.remember("a", s("1"));
        r.remember("b", s("2"));
        r.remember("c", s("3"));
        assert_eq!(r.lookup("a"), None);
        assert_eq!(r.lookup("c").map(|s| s.model), Some("3".into()));
    }
}
