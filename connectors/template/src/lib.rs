//! Two connector binaries to copy when you write your own: `src/bin/template_source.rs`
//! (sends the lines of a file to the engine, commits an offset file on acknowledgement) and
//! `src/bin/template_sink.rs` (appends every message to a file, acknowledging after the
//! write). `docs/write-your-own-connector.md` walks through both. This library is empty.
