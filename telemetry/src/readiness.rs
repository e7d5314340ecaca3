//! What `/ready` answers: each part a process depends on (the engine link, the external
//! system, each sink) says whether it is up, and the process is ready only while all are.

use std::sync::{Arc, Mutex};

/// Each part, in the order it first reported, with the reason it is not ready (`None`: ready).
type Parts = Vec<(String, Option<String>)>;

/// The readiness of one process, shared by the parts that report and the HTTP endpoint.
/// A part that never reported does not count: register each part as not ready at start
/// (`not_ready`) so that `/ready` stays 503 until it connected.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    parts: Arc<Mutex<Parts>>,
}

impl Readiness {
    fn update(&self, part: &str, reason: Option<String>) {
        let mut parts = self.parts.lock().unwrap_or_else(|p| p.into_inner());
        match parts.iter_mut().find(|(p, _)| p == part) {
            Some((_, r)) => *r = reason,
            None => parts.push((part.to_string(), reason)),
        }
    }

    /// `part` is connected and working.
    pub fn ready(&self, part: &str) {
        self.update(part, None);
    }

    /// `part` is not usable, for `reason` (one line: what is down and what is being done).
    pub fn not_ready(&self, part: &str, reason: impl Into<String>) {
        self.update(part, Some(reason.into()));
    }

    /// `Ok` when every part is ready, else the first part's reason, as `part: reason`.
    pub fn check(&self) -> Result<(), String> {
        let parts = self.parts.lock().unwrap_or_else(|p| p.into_inner());
        match parts.iter().find_map(|(p, r)| r.as_ref().map(|r| (p, r))) {
            Some((part, reason)) => Err(format!("{part}: {reason}")),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_while_every_part_is() {
        let r = Readiness::default();
        assert!(r.check().is_ok());
        r.not_ready("engine", "not connected to 127.0.0.1:7100 yet");
        r.ready("redis");
        assert_eq!(
            r.check(),
            Err("engine: not connected to 127.0.0.1:7100 yet".to_string())
        );
        r.ready("engine");
        assert!(r.check().is_ok());
        r.not_ready("redis", "connection refused; reconnecting");
        assert_eq!(
            r.check(),
            Err("redis: connection refused; reconnecting".to_string())
        );
    }
}
