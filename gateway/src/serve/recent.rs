//! Recently served requests, remembered so Feedback can attribute a score to
//! the model and worker that answered. Bounded: the least useful are
//! forgotten first (S3-FIFO), so a flood of requests never grows it.

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Served {
    pub model: String,
    pub worker_id: String,
    pub tenant: String,
    /// The prompt's region (router only), where its feedback counts.
    pub region: String,
}

#[derive(Debug)]
pub(crate) struct Recent {
    served: quick_cache::sync::Cache<String, Served>,
}

impl Recent {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            served: crate::cache::bounded(capacity),
        }
    }

    pub(crate) fn remember(&self, request_id: &str, served: Served) {
        self.served.insert(request_id.to_string(), served);
    }

    pub(crate) fn lookup(&self, request_id: &str) -> Option<Served> {
        self.served.get(request_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(model: &str) -> Served {
        Served {
            model: model.into(),
            worker_id: "w".into(),
            tenant: "t".into(),
            region: String::new(),
        }
    }

    #[test]
    fn remembers_recent_requests_and_stays_bounded() {
        let r = Recent::new(100);
        r.remember("a", served("1"));
        assert_eq!(r.lookup("a").map(|s| s.model), Some("1".into()));
        assert_eq!(r.lookup("b"), None);
        for i in 0..10_000 {
            r.remember(&format!("req-{i}"), served("x"));
        }
        let kept = (0..10_000)
            .filter(|i| r.lookup(&format!("req-{i}")).is_some())
            .count();
        assert!(kept <= 100, "{kept} of 10000 kept with a capacity of 100");
        assert!(
            r.lookup("req-9999").is_some(),
            "the newest request is remembered"
        );
    }
}
