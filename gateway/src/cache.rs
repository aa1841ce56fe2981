//! Bounded concurrent caches (quick_cache's S3-FIFO): the router's
//! predictions by prompt and the requests remembered for feedback.

/// A cache of at most `capacity` items that allocates as it fills rather
/// than up front (`Cache::new` sizes its tables for the full capacity: tens
/// of MiB for the default feedback window before any request).
pub(crate) fn bounded<K, V>(capacity: usize) -> quick_cache::sync::Cache<K, V>
where
    K: Eq + std::hash::Hash,
    V: Clone,
{
    let capacity = capacity.max(1);
    quick_cache::sync::Cache::with_weighter(
        capacity.min(1024),
        capacity as u64,
        quick_cache::UnitWeighter,
    )
}
