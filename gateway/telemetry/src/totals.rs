//! This process's running totals of the slots it is still writing. A slot's
//! hash holds one set of fields per writer (`<writer>\x1f<field>`), which
//! only that writer touches, so each flush replaces them whole: one `HSET`
//! per series and slot instead of one `HINCRBYFLOAT` per field, and readers
//! sum the writers. Replacing is idempotent: a flush retried after a lost
//! reply, or after Redis lost its data, leaves the right totals.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::store::{Apply, HashUpdate};

/// Separates a writer from its field (never part of a slot field's name).
pub(crate) const SEP: char = '\u{1f}';
/// Slots kept open behind the newest one written: a record that arrives
/// later than this for its slot opens it again under a new writer name.
const KEEP_OPEN_SLOTS: u64 = 2;

#[derive(Debug)]
struct Open {
    slot: u64,
    /// This slot's writer name: the process and a generation, so a slot
    /// opened again never replaces what it wrote the first time.
    writer: String,
    fields: HashMap<String, f64>,
}

/// The totals, by slot key.
#[derive(Debug)]
pub(crate) struct SlotTotals {
    process: String,
    generation: u64,
    open: HashMap<String, Open>,
}

/// Totals written but not yet known to be stored.
#[derive(Debug, Default)]
pub(crate) struct Uncommitted(Vec<(String, HashMap<String, f64>)>);

impl SlotTotals {
    pub(crate) fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // Random per process (RandomState is seeded by the OS): containers
        // all run as pid 1 and may start in the same millisecond.
        let random = RandomState::new().hash_one((crate::record::now_ms(), std::process::id(), n));
        Self {
            process: format!("{:012x}", random & 0xffff_ffff_ffff),
            generation: 0,
            open: HashMap::new(),
        }
    }

    /// The updates that store each slot's totals once `increments` (by slot
    /// key and slot) are added: the whole of this writer's fields, replaced.
    /// Kept as the new totals only by [`Self::commit`] once stored.
    pub(crate) fn updates(
        &mut self,
        increments: HashMap<(String, u64), HashMap<String, f64>>,
        ttl: Duration,
    ) -> (Vec<HashUpdate>, Uncommitted) {
        let mut updates = Vec::with_capacity(increments.len());
        let mut pending = Uncommitted::default();
        for ((key, slot), added) in increments {
            let open = match self.open.get(&key) {
                Some(open) => open,
                None => {
                    self.generation += 1;
                    let writer = format!("{}.{}", self.process, self.generation);
                    self.open.entry(key.clone()).or_insert(Open {
                        slot,
                        writer,
                        fields: HashMap::new(),
                    })
                }
            };
            let mut totals = open.fields.clone();
            for (field, by) in added {
                *totals.entry(field).or_insert(0.0) += by;
            }
            updates.push(HashUpdate {
                key: key.clone(),
                ttl,
                fields: totals
                    .iter()
                    .map(|(f, v)| (format!("{}{SEP}{f}", open.writer), *v))
                    .collect(),
                apply: Apply::Replace,
            });
            pending.0.push((key, totals));
        }
        (updates, pending)
    }

    /// The updates were stored: they are the totals now. Slots more than
    /// [`KEEP_OPEN_SLOTS`] behind `newest_slot` are closed.
    pub(crate) fn commit(&mut self, stored: Uncommitted, newest_slot: u64) {
        for (key, totals) in stored.0 {
            if let Some(open) = self.open.get_mut(&key) {
                open.fields = totals;
            }
        }
        self.open
            .retain(|_, open| open.slot + KEEP_OPEN_SLOTS >= newest_slot);
    }
}

/// A slot field's name without its writer (fields written by increments,
/// as older versions did, have none).
pub(crate) fn field_name(field: &str) -> &str {
    field.rsplit_once(SEP).map_or(field, |(_, name)| name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adds(key: &str, slot: u64, n: f64) -> HashMap<(String, u64), HashMap<String, f64>> {
        HashMap::from([(
            (key.to_string(), slot),
            HashMap::from([("n".to_string(), n), ("cost".to_string(), n / 10.0)]),
        )])
    }

    fn stored(updates: &[HashUpdate]) -> HashMap<String, f64> {
        updates
            .iter()
            .flat_map(|u| {
                u.fields
                    .iter()
                    .map(|(f, v)| (field_name(f).to_string(), *v))
            })
            .collect()
    }

    #[test]
    fn each_flush_replaces_the_running_totals() {
        let mut t = SlotTotals::new();
        let ttl = Duration::from_secs(60);
        let (u, p) = t.updates(adds("k", 7, 3.0), ttl);
        assert_eq!((u.len(), u[0].apply), (1, Apply::Replace));
        assert_eq!(stored(&u)["n"], 3.0);
        t.commit(p, 7);
        let (u, p) = t.updates(adds("k", 7, 2.0), ttl);
        assert_eq!(stored(&u)["n"], 5.0, "the running total, not the increment");
        // Not stored (Redis down): the retry writes the same totals again.
        drop(p);
        let (again, p) = t.updates(adds("k", 7, 2.0), ttl);
        let sorted = |u: &[HashUpdate]| {
            let mut f = u[0].fields.clone();
            f.sort_by(|a, b| a.0.cmp(&b.0));
            f
        };
        assert_eq!(sorted(&again), sorted(&u), "a retry is the same write");
        t.commit(p, 7);
        let (u, _) = t.updates(adds("k", 7, 1.0), ttl);
        assert_eq!(stored(&u)["n"], 6.0);
    }

    #[test]
    fn a_slot_opened_again_writes_under_a_new_name() {
        let mut t = SlotTotals::new();
        let ttl = Duration::from_secs(60);
        let (first, p) = t.updates(adds("old", 1, 4.0), ttl);
        t.commit(p, 1);
        // Three slots on, "old" is closed; a late record for it must not
        // replace the 4 already stored.
        let (_, p) = t.updates(adds("new", 4, 1.0), ttl);
        t.commit(p, 4);
        let (late, _) = t.updates(adds("old", 1, 1.0), ttl);
        assert_eq!(stored(&late)["n"], 1.0);
        let writer = |u: &[HashUpdate]| u[0].fields[0].0.split(SEP).next().map(str::to_string);
        assert_ne!(writer(&first), writer(&late));
        // Another process (or Telemetry) is another writer too.
        let (other, _) = SlotTotals::new().updates(adds("old", 1, 1.0), ttl);
        assert_ne!(writer(&first), writer(&other));
    }
}
