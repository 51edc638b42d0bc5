//! One structure for every connection's timeout: a min-heap of (deadline, slot, generation),
//! deadlines in milliseconds since the endpoint's epoch (16 bytes an entry).
//!
//! Each connection keeps its own current deadline and at most one live heap entry. Activity that
//! pushes the deadline later (every message on a busy connection) touches only the connection:
//! when its old entry comes due, the loop sees the later deadline and re-arms once. So a busy
//! connection costs nothing per message and an idle one costs nothing until its deadline.
use std::{cmp::Reverse, collections::BinaryHeap};

/// The heap.
#[derive(Debug, Default)]
pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<(u64, u32, u32)>>,
}

impl Timers {
    /// Arms an entry for `slot` (of `generation`) at `at`.
    pub(crate) fn push(&mut self, at: u64, slot: usize, generation: u32) {
        // Slots come from a slab bounded by `max_connections`, far below 2^32.
        self.heap.push(Reverse((at, slot as u32, generation)));
    }

    /// The earliest armed instant.
    pub(crate) fn next(&self) -> Option<u64> {
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Removes and returns one entry due at `now`.
    pub(crate) fn pop_due(&mut self, now: u64) -> Option<(u64, usize, u32)> {
        match self.heap.peek() {
            Some(Reverse((at, _, _))) if *at <= now => self
                .heap
                .pop()
                .map(|Reverse((at, slot, generation))| (at, slot as usize, generation)),
            _ => None,
        }
    }

    /// How many entries are armed (live and stale).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_in_deadline_order_only_when_due() {
        let t0 = 1000;
        let mut t = Timers::default();
        t.push(t0 + 3000, 3, 0);
        t.push(t0 + 1000, 1, 0);
        t.push(t0 + 2000, 2, 7);
        assert_eq!(t.next(), Some(t0 + 1000));
        assert_eq!(t.pop_due(t0), None);
        let due: Vec<_> = std::iter::from_fn(|| t.pop_due(t0 + 2000)).map(|e| (e.1, e.2)).collect();
        assert_eq!(due, [(1, 0), (2, 7)]);
        assert_eq!(t.len(), 1);
    }
}
