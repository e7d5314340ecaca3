//! `--check`: one line per check, with what to fix, and an exit code that says whether
//! everything passed.

/// The outcome of one check.
#[derive(Debug, Clone)]
pub struct Check {
    /// What was checked, e.g. "topic `orders` exists".
    pub what: String,
    /// `Ok` or what is wrong and how to fix it.
    pub result: Result<(), String>,
}

impl Check {
    /// A passed check.
    pub fn ok(what: impl Into<String>) -> Check {
        Check {
            what: what.into(),
            result: Ok(()),
        }
    }

    /// A failed check with the fix.
    pub fn fail(what: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            what: what.into(),
            result: Err(fix.into()),
        }
    }

    /// A check from any result, its error rendered with its causes.
    pub fn from_result<T>(what: impl Into<String>, r: anyhow::Result<T>) -> Check {
        match r {
            Ok(_) => Check::ok(what),
            Err(e) => Check::fail(what, format!("{e:#}")),
        }
    }

    /// Prints the line (`ok`/`FAIL`) and returns whether it passed.
    pub fn report(&self) -> bool {
        match &self.result {
            Ok(()) => {
                println!("ok    {}", self.what);
                true
            }
            Err(fix) => {
                println!("FAIL  {}: {}", self.what, fix);
                false
            }
        }
    }
}
