//! Following the Redis TLS files: read every `reload_interval` and compared
//! byte for byte with those of the connection in use (as the gateway's own
//! TLS files are, see [`crate::tls`]); a change opens a new connection with
//! the new files and swaps it in.

use std::sync::{RwLock, Weak};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::endpoint::TlsMaterial;
use super::{Patience, RedisEndpoint, RedisHandle, open};

/// What a watcher needs: where Redis is, how to connect, how often to
/// look, and the connection it replaces (weak: the clones own it).
pub(super) struct Watch {
    pub(super) endpoint: RedisEndpoint,
    pub(super) patience: Patience,
    pub(super) interval: Duration,
    pub(super) current: Weak<RwLock<RedisHandle>>,
}

/// What a reload is reported under.
const WHAT: &str = "registry.redis.tls";

/// Until `stop`: each tick, re-reads the files; when they differ from
/// `in_use`, connects with them and swaps the new connection in. A set that
/// cannot be read or does not connect keeps the current connection and is
/// tried again next tick (reported once per distinct error).
pub(super) async fn follow_tls_files(
    watch: Watch,
    mut in_use: TlsMaterial,
    stop: CancellationToken,
) {
    let mut last_error: Option<String> = None;
    let mut tick = tokio::time::interval(watch.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let outcome = match watch.endpoint.read_tls().await {
            Ok(Some(material)) if material == in_use => continue,
            Ok(Some(material)) => {
                let opened = tokio::select! {
                    () = stop.cancelled() => return,
                    opened = open(&watch.endpoint, Some(&material), watch.patience) => opened,
                };
                opened.map(|handle| (material, handle))
            }
            // Files removed from the configuration cannot happen while
            // running; treat it as nothing to do.
            Ok(None) => continue,
            Err(e) => Err(e),
        };
        match outcome {
            Ok((material, handle)) => {
                let Some(current) = watch.current.upgrade() else {
                    return;
                };
                match current.write() {
                    Ok(mut c) => *c = handle,
                    Err(poisoned) => *poisoned.into_inner() = handle,
                }
                in_use = material;
                last_error = None;
                tracing::info!(
                    what = WHAT,
                    "Redis TLS files changed; new commands use a connection made with them"
                );
                metrics::counter!(crate::tls::RELOADS, "what" => WHAT, "result" => "ok")
                    .increment(1);
            }
            Err(e) => {
                let e = e.to_string();
                if last_error.as_ref() != Some(&e) {
                    tracing::warn!(what = WHAT, error = %e, "new Redis TLS files not used; keeping the current connection");
                    metrics::counter!(crate::tls::RELOADS, "what" => WHAT, "result" => "error")
                        .increment(1);
                }
                last_error = Some(e);
            }
        }
    }
}
