//! Shared code of `postgres_source` and `postgres_sink`.
//!
//! - [`pg`]: connecting (with back-off), the connection task that forwards `NOTIFY`
//!   messages, error classification (transient / row-level / fatal) and identifier quoting.
//! - [`table`]: looking a table and its columns up in the catalog.
//! - [`source`]: the source's reader: cancel-safe reads of the rows above a position (woken
//!   by NOTIFY, polling as a fallback), the gap gate that keeps it from moving past a
//!   sequence id an open transaction may still commit, and the acknowledged position stored
//!   in `position_table`.
//! - [`sink`]: the sink's writer: one transaction per batch (`COPY` or `INSERT ... ON
//!   CONFLICT`), bisection of a failed batch down to the bad rows (refused), and the rows not
//!   committed when the connection failed marked for a retry.
//!
//! The bins implement the runtime's `SourceConnector` / `SinkConnector` on top of these;
//! delivery (acknowledgements, draining, retry back-off, dead letters) is the runtime's.

pub mod pg;
pub mod sink;
pub mod source;
pub mod table;
