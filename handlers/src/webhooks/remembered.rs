//! Look-ups the webhook processor keeps from one chunk to the next.

use std::{collections::HashMap, hash::Hash, sync::Mutex};

/// Past this many entries everything is forgotten (a bound, not a working size: a
/// deployment has one route per number and one consent setting per workspace).
const MAX_ENTRIES: usize = 100_000;

/// Read-model look-ups that hold while one log sequence stays where it was: the
/// last change of the routing table (every claim, release and WABA assignment is
/// on its one subject), or the sequence covering the last change of the consent
/// settings of the workspaces looked up.
///
/// Each chunk confirms that sequence against the log anyway (that is how it knows
/// its read models are fresh enough to decide on). While the sequence has not
/// moved, no event that could change those entries was appended since they were
/// read (any new one would have a later sequence), so what the read model said
/// then is what it would say now, and the read is skipped: a chunk for fifty
/// client businesses made fifty routing reads and fifty settings reads, one after
/// another, each a round trip to the database's thread. When the sequence moves,
/// everything is forgotten and read again.
pub(super) struct Remembered<K, V> {
    inner: Mutex<(Option<u64>, HashMap<K, V>)>,
}

impl<K, V> Default for Remembered<K, V> {
    fn default() -> Self {
        Remembered {
            inner: Mutex::new((None, HashMap::new())),
        }
    }
}

impl<K: Eq + Hash, V> Remembered<K, V> {
    /// The entries that hold at `seq` (none when it moved since they were read),
    /// to be filled and given back with [`Remembered::keep`] once the chunk is done.
    /// A chunk that fails drops them: they are read again.
    pub(super) fn take(&self, seq: u64) -> HashMap<K, V> {
        let mut inner = self.lock();
        if inner.0 == Some(seq) {
            std::mem::take(&mut inner.1)
        } else {
            *inner = (None, HashMap::new());
            HashMap::new()
        }
    }

    /// Keeps `entries` as read with the log confirmed at `seq`.
    pub(super) fn keep(&self, seq: u64, entries: HashMap<K, V>) {
        let mut inner = self.lock();
        *inner = if entries.len() <= MAX_ENTRIES {
            (Some(seq), entries)
        } else {
            (None, HashMap::new())
        };
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Option<u64>, HashMap<K, V>)> {
        // Nothing is left half-written under the lock: take it as it is.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_hold_while_their_sequence_does() {
        let r: Remembered<&str, u32> = Remembered::default();
        assert!(r.take(0).is_empty());
        r.keep(7, HashMap::from([("a", 1)]));
        let mut held = r.take(7);
        assert_eq!(held.get("a"), Some(&1));
        held.insert("b", 2);
        r.keep(7, held);
        assert_eq!(r.take(7).len(), 2);
        // Taken and not given back (a failed chunk): read again.
        assert!(r.take(7).is_empty());
        r.keep(7, HashMap::from([("a", 1)]));
        // The sequence moved: forgotten, and not back when it is asked for again.
        assert!(r.take(8).is_empty());
        assert!(r.take(7).is_empty());
        // Too many: forgotten.
        let big: Remembered<usize, ()> = Remembered::default();
        big.keep(9, (0..MAX_ENTRIES).map(|i| (i, ())).collect());
        assert_eq!(big.take(9).len(), MAX_ENTRIES);
        big.keep(9, (0..=MAX_ENTRIES).map(|i| (i, ())).collect());
        assert!(big.take(9).is_empty());
    }
}
