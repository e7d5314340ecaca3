//! Exponential back-off: the one retry policy of the workspace (the engine reconnecting to
//! a sink, connectors reconnecting to the engine or their external system, sink retries).
//! I/O-free: sleep for [`Backoff::next_delay`] with your runtime's timer.

use std::time::Duration;

/// Doubling delays from `min` to `max`, reset after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
    attempts: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
    }
}

impl Backoff {
    /// Delays start at `min` and double up to `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            next: min,
            attempts: 0,
        }
    }

    /// The delay to wait before the next attempt (and advances).
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        self.attempts += 1;
        d
    }

    /// Failed attempts since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Back to the shortest delay after a success.
    pub fn reset(&mut self) {
        self.next = self.min;
        self.attempts = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_max_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(35));
        let d: Vec<u128> = (0..4).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(d, vec![10, 20, 35, 35]);
        assert_eq!(b.attempts(), 4);
        b.reset();
        assert_eq!(b.next_delay().as_millis(), 10);
    }
}
