//! Live telemetry that every gateway replica shares: per-request latency,
//! tokens, cost and outcome, aggregated per worker, model and tenant into
//! windowed counters and latency histograms; spend per tenant and model per
//! hour and day; quality feedback per model. Stored in memory (the embedded
//! default) or in Redis, behind one store interface that both pass one
//! conformance suite.

pub mod histogram;
pub mod record;
pub mod recorder;
pub mod store;
pub mod telemetry;
mod totals;

pub use record::{FeedbackEvent, Outcome, RequestRecord};
pub use recorder::{LiveSnapshot, Recorder, RecorderConfig, RecorderStats};
pub use store::{HashStore, MemoryStore, RedisStore, StoreError};
pub use telemetry::{QualityFeedback, ReadCache, Series, Snapshot, SpendRow, Stats, Telemetry};
