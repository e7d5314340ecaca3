//! In-order acknowledgement from out-of-order confirmations.
//!
//! The protocol acknowledges a point per stream ("every id up to here is done"), but many
//! external systems confirm writes individually and out of order (Kafka delivery reports,
//! AMQP publisher confirms, Kinesis per-record results). [`InOrderAcks`] remembers the order
//! messages were taken in and releases a point only once everything before it is confirmed.

use std::collections::VecDeque;

/// Tracks messages of one stream in arrival order; `complete` them in any order and
/// `advance` returns the highest id whose predecessors are all complete.
#[derive(Debug, Default)]
pub struct InOrderAcks {
    base: u64,
    ids: VecDeque<u64>,
    done: VecDeque<bool>,
}

impl InOrderAcks {
    /// Records the next message (ids in arrival order); returns its ticket for `complete`.
    pub fn push(&mut self, id: u64) -> u64 {
        self.ids.push_back(id);
        self.done.push_back(false);
        self.base + self.ids.len() as u64 - 1
    }

    /// Marks a ticket (from `push`) complete. Unknown or old tickets are ignored.
    pub fn complete(&mut self, ticket: u64) {
        if ticket >= self.base {
            if let Some(d) = self.done.get_mut((ticket - self.base) as usize) {
                *d = true;
            }
        }
    }

    /// Pops the complete prefix and returns the id of its last message, if any.
    pub fn advance(&mut self) -> Option<u64> {
        let mut last = None;
        while self.done.front() == Some(&true) {
            self.done.pop_front();
            last = self.ids.pop_front();
            self.base += 1;
        }
        last
    }

    /// Messages pushed but not yet released.
    pub fn pending(&self) -> usize {
        self.ids.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_only_contiguous_prefix() {
        let mut a = InOrderAcks::default();
        let t: Vec<u64> = [10, 20, 30, 40].iter().map(|id| a.push(*id)).collect();
        a.complete(t[1]);
        assert_eq!(a.advance(), None);
        a.complete(t[0]);
        assert_eq!(a.advance(), Some(20));
        a.complete(t[3]);
        assert_eq!(a.advance(), None);
        a.complete(t[2]);
        assert_eq!(a.advance(), Some(40));
        assert_eq!(a.pending(), 0);
        a.complete(t[0]);
        assert_eq!(a.advance(), None);
    }
}
