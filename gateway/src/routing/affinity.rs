//! Session affinity: a conversation (an agent loop, a multi-turn chat) stays
//! on the model, and where it can the worker, that served its first turn,
//! so it does not change voice mid-conversation and the worker's prefix
//! cache keeps its earlier turns.
//!
//! A session is named by the client (`session_id`, the `x-session-id`
//! header) or recognised by its opening (its system turns and first user
//! turn, hashed), scoped to the tenant. Each replica keeps the sessions it
//! has seen in a bounded cache; with `registry.redis` they are shared in
//! time-bucketed hashes (see `redis_writes`), read only for a later turn
//! this replica has not seen (one pipelined lookup, bounded by
//! `redis_timeout`) and written off the request path by one writer task,
//! a flush's sessions in one `HSET`.

use std::time::Duration;

use routemesh_mesh::RedisConn;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::redis_writes::{Buckets, RedisCost, WriteBehind};

use routemesh_proto::v1::ChatMessage;

/// `gateway.session_affinity`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionAffinityConfig {
    /// Off: every turn is routed afresh.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// A session is forgotten this long after its last turn.
    #[serde(default = "default_ttl", with = "humantime_serde")]
    #[schemars(schema_with = "routemesh_mesh::config_schema::duration")]
    pub ttl: Duration,
    /// Sessions each replica keeps in memory (the oldest go first).
    #[serde(default = "default_max_sessions")]
    pub max_sessions: usize,
    /// Recognise a conversation without a session id by its opening turns.
    #[serde(default = "yes")]
    pub by_prefix: bool,
    /// Longest wait for the shared store on a turn this replica has not
    /// seen; past it the turn is routed afresh.
    #[serde(default = "default_redis_timeout", with = "humantime_serde")]
    #[schemars(schema_with = "routemesh_mesh::config_schema::duration")]
    pub redis_timeout: Duration,
}

fn yes() -> bool {
    true
}
fn default_ttl() -> Duration {
    Duration::from_secs(30 * 60)
}
fn default_max_sessions() -> usize {
    100_000
}
fn default_redis_timeout() -> Duration {
    Duration::from_millis(50)
}

impl Default for SessionAffinityConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            ttl: default_ttl(),
            max_sessions: default_max_sessions(),
            by_prefix: true,
            redis_timeout: default_redis_timeout(),
        }
    }
}

/// Where a session's earlier turns were served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sticky {
    pub(crate) model: String,
    pub(crate) worker: String,
}

impl Sticky {
    fn encode(&self) -> String {
        format!("{}\t{}", self.model, self.worker)
    }

    fn decode(text: &str) -> Option<Self> {
        let (model, worker) = text.split_once('\t')?;
        Some(Self {
            model: model.to_string(),
            worker: worker.to_string(),
        })
    }
}

/// One request's session.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    /// As explanations show it: the client's id, or `prefix:<hash>`.
    pub(crate) label: String,
    /// The key in the caches (tenant-scoped).
    key: String,
    /// The conversation's first turn: nothing to follow yet.
    pub(crate) opening: bool,
}

/// How affinity acted on one decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AffinityOutcome {
    Kept,
    Started,
    Moved,
}

impl AffinityOutcome {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            AffinityOutcome::Kept => "kept",
            AffinityOutcome::Started => "started",
            AffinityOutcome::Moved => "moved",
        }
    }
}

/// The sessions this gateway knows, and the shared store when configured.
pub(crate) struct Sessions {
    config: SessionAffinityConfig,
    local: quick_cache::sync::Cache<String, (Sticky, Instant)>,
    shared: Option<Shared>,
}

struct Shared {
    sessions: Buckets,
    writes: WriteBehind,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("shared", &self.shared.is_some())
            .finish()
    }
}

impl Sessions {
    /// Sessions kept in this process only.
    pub(crate) fn local(config: SessionAffinityConfig) -> Self {
        Self {
            local: crate::cache::bounded(config.max_sessions),
            config,
            shared: None,
        }
    }

    /// Sessions shared through Redis, written at most once per `linger`;
    /// the writer task stops with `stop`.
    pub(crate) fn shared(
        config: SessionAffinityConfig,
        conn: RedisConn,
        linger: Duration,
        stop: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let sessions = Buckets::new(conn, "session", config.ttl);
        let (writes, writer) = WriteBehind::start(sessions.clone(), linger, "sessions", stop);
        (
            Self {
                local: crate::cache::bounded(config.max_sessions),
                config,
                shared: Some(Shared { sessions, writes }),
            },
            writer,
        )
    }

    /// What sharing sessions has cost Redis (`None` unshared).
    pub(crate) fn redis_cost(&self) -> Option<&RedisCost> {
        self.shared.as_ref().map(|s| &*s.sessions.cost)
    }

    /// A request's session, if it has one: the client's `session_id`, else
    /// (with `by_prefix`) the conversation's opening turns, within the
    /// `tenant`. `None` when affinity is off or the request pins its model.
    pub(crate) fn session_of(
        &self,
        tenant: &str,
        session_id: &str,
        pinned: bool,
        messages: &[ChatMessage],
    ) -> Option<Session> {
        if !self.config.enabled || pinned {
            return None;
        }
        let opening = !messages
            .iter()
            .any(|m| m.role == "assistant" || m.role == "tool");
        if !session_id.is_empty() {
            return Some(Session {
                label: session_id.to_string(),
                key: format!("id\u{1f}{tenant}\u{1f}{session_id}"),
                opening: false,
            });
        }
        if !self.config.by_prefix {
            return None;
        }
        let mut hash = Sha256::new();
        hash.update(tenant.as_bytes());
        let first_user = messages.iter().position(|m| m.role == "user")?;
        for m in &messages[..=first_user] {
            hash.update([0x1e]);
            hash.update(m.role.as_bytes());
            hash.update([0x1f]);
            hash.update(m.text_content().as_bytes());
            for part in &m.parts {
                if let Some(routemesh_proto::v1::content_part::Part::ImageUrl(image)) = &part.part {
                    hash.update(image.url.as_bytes());
                }
            }
        }
        let digest = hex::encode(&hash.finalize()[..8]);
        Some(Session {
            label: format!("prefix:{digest}"),
            key: format!("prefix\u{1f}{digest}"),
            opening,
        })
    }

    /// Where the session's earlier turns went, if anyone remembers: this
    /// replica, else the shared store (one bounded pipelined lookup).
    pub(crate) async fn lookup(&self, session: &Session) -> Option<Sticky> {
        if session.opening {
            return None;
        }
        if let Some((sticky, expires)) = self.local.get(&session.key)
            && Instant::now() < expires
        {
            return Some(sticky);
        }
        let shared = self.shared.as_ref()?;
        let read =
            tokio::time::timeout(self.config.redis_timeout, shared.sessions.get(&session.key))
                .await;
        match read {
            Ok(Ok(Some(bytes))) => {
                let sticky = Sticky::decode(std::str::from_utf8(&bytes).ok()?)?;
                self.local.insert(
                    session.key.clone(),
                    (sticky.clone(), Instant::now() + self.config.ttl),
                );
                Some(sticky)
            }
            Ok(Ok(None)) => None,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "session store unavailable; routing the turn afresh");
                None
            }
            Err(_) => {
                tracing::debug!("session store slow; routing the turn afresh");
                None
            }
        }
    }

    /// Remembers (or refreshes) where the session's turn was served.
    pub(crate) fn remember(&self, session: &Session, sticky: Sticky) {
        let fresh = self
            .local
            .get(&session.key)
            .is_some_and(|(known, expires)| {
                // Refreshing the shared key more often than this adds
                // nothing but writes.
                known == sticky && expires > Instant::now() + self.config.ttl / 2
            });
        if fresh {
            return;
        }
        let encoded = sticky.encode();
        self.local.insert(
            session.key.clone(),
            (sticky, Instant::now() + self.config.ttl),
        );
        if let Some(shared) = &self.shared
            && !shared.writes.set(session.key.clone(), encoded.into_bytes())
        {
            tracing::debug!("session write queue full; kept in this replica only");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `session_of` reads of a request.
    struct Req {
        messages: Vec<ChatMessage>,
        session_id: &'static str,
        tenant: &'static str,
    }

    fn request(messages: Vec<ChatMessage>, session_id: &'static str, tenant: &'static str) -> Req {
        Req {
            messages,
            session_id,
            tenant,
        }
    }

    impl Sessions {
        fn of(&self, r: &Req) -> Option<Session> {
            self.session_of(r.tenant, r.session_id, false, &r.messages)
        }
    }

    #[tokio::test]
    async fn a_conversation_is_known_by_its_opening_across_turns() {
        let sessions = Sessions::local(SessionAffinityConfig::default());
        let first = vec![
            ChatMessage::text("system", "you are terse"),
            ChatMessage::text("user", "plan a trip"),
        ];
        let opening = sessions.of(&request(first.clone(), "", "t")).unwrap();
        assert!(opening.opening);
        assert_eq!(sessions.lookup(&opening).await, None);
        let sticky = Sticky {
            model: "large".into(),
            worker: "large-0".into(),
        };
        sessions.remember(&opening, sticky.clone());
        let mut second = first.clone();
        second.push(ChatMessage::text("assistant", "where to?"));
        second.push(ChatMessage::text("user", "Lisbon"));
        let later = sessions.of(&request(second.clone(), "", "t")).unwrap();
        assert_eq!(later.label, opening.label);
        assert_eq!(sessions.lookup(&later).await, Some(sticky));
        // Another tenant's identical conversation is another session.
        let other = sessions.of(&request(second, "", "u")).unwrap();
        assert_ne!(other.label, opening.label);
        assert_eq!(sessions.lookup(&other).await, None);
    }

    #[tokio::test]
    async fn a_named_session_follows_from_its_first_turn() {
        let sessions = Sessions::local(SessionAffinityConfig::default());
        let s = sessions
            .of(&request(
                vec![ChatMessage::text("user", "hi")],
                "chat-1",
                "t",
            ))
            .unwrap();
        assert!(!s.opening);
        assert_eq!(s.label, "chat-1");
        sessions.remember(
            &s,
            Sticky {
                model: "small".into(),
                worker: "s-0".into(),
            },
        );
        let again = sessions
            .of(&request(
                vec![ChatMessage::text("user", "other")],
                "chat-1",
                "t",
            ))
            .unwrap();
        assert_eq!(
            sessions.lookup(&again).await.map(|s| s.model).as_deref(),
            Some("small")
        );
        let off = Sessions::local(SessionAffinityConfig {
            enabled: false,
            ..Default::default()
        });
        assert!(
            off.of(&request(
                vec![ChatMessage::text("user", "hi")],
                "chat-1",
                "t"
            ))
            .is_none()
        );
    }

    #[tokio::test]
    async fn a_flood_of_sessions_stays_bounded() {
        let sessions = Sessions::local(SessionAffinityConfig {
            max_sessions: 1000,
            ..Default::default()
        });
        let sticky = Sticky {
            model: "m".into(),
            worker: "w".into(),
        };
        let named = |i: usize| Session {
            label: String::new(),
            key: format!("id\u{1f}t\u{1f}s-{i}"),
            opening: false,
        };
        for i in 0..100_000 {
            sessions.remember(&named(i), sticky.clone());
        }
        let mut kept = 0;
        for i in 0..100_000 {
            kept += usize::from(sessions.lookup(&named(i)).await.is_some());
        }
        assert!(
            kept <= 1000,
            "{kept} of 100000 sessions kept with max_sessions 1000"
        );
        assert!(
            sessions.lookup(&named(99_999)).await.is_some(),
            "the newest is kept"
        );
    }
}
