//! Shared code of `postgres_source` and `postgres_sink`.
//!
//! - [`pg`]: connecting (with back-off), the connection task that forwards `NOTIFY`
//!   messages, error classification (transient / row-level / fatal) and identifier quoting.
//! - [`table`]: looking a table and its columns up in the catalog.
//! - [`source`]: the source's reader: batches of rows above a position, and the gap gate
//!   that keeps it from moving past a sequence id an open transaction may still commit.
//! - [`sink`]: the sink's writer: one transaction per batch (`COPY` or `INSERT ... ON
//!   CONFLICT`), bisection of a failed batch down to the bad rows.

pub mod pg;
pub mod sink;
pub mod source;
pub mod table;
