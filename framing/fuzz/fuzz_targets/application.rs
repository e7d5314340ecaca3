//! Fuzzes the application-file loader (`Application::parse`, what `Application::load` runs
//! on the file's text) with arbitrary text. Besides "never panics", it checks that an error
//! names the file, and that an accepted application holds what validation promises: every
//! connector has an endpoint and at least one credit, a refill mark within its credits, a
//! name that is not both a source and a sink and that `connector()` finds in the right
//! table, parameters that read back as strings, and pipelines that only name declared
//! connectors.
//!
//! Run with `scripts/fuzz.sh SECONDS application`.
#![no_main]

use std::path::Path;

use application::{Application, ConnectorConfig, Direction};
use libfuzzer_sys::fuzz_target;

const FILE: &str = "fuzz-app.toml";

fn check_connector(app: &Application, name: &str, c: &ConnectorConfig, dir: Direction) {
    let endpoint = c.endpoint().expect("a validated connector has an endpoint");
    let _ = endpoint.to_string();
    assert!(c.max_credits >= 1);
    assert!(c.refill_mark() <= c.max_credits);
    let (found_dir, found) = app.connector(name).expect("a declared connector is found");
    assert_eq!(found_dir, dir);
    assert!(std::ptr::eq(found, c));
    for param in c.param_names() {
        let values = c
            .param_values(param)
            .expect("a listed parameter has values");
        match &c.params[param] {
            toml::Value::Array(items) => assert_eq!(values.len(), items.len()),
            _ => assert_eq!(values.len(), 1),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // `Application::load` reads the file as UTF-8 text first.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Application::parse(text, Path::new(FILE)) {
        Ok(app) => {
            assert_eq!(app.file, Path::new(FILE));
            for (name, c) in &app.source_connectors {
                assert!(!app.sink_connectors.contains_key(name));
                check_connector(&app, name, c, Direction::Source);
            }
            for (name, c) in &app.sink_connectors {
                check_connector(&app, name, c, Direction::Sink);
            }
            for p in &app.pipelines {
                assert!(app.source_connectors.contains_key(&p.source));
                for s in &p.sinks {
                    assert!(app.sink_connectors.contains_key(s));
                }
            }
            // A name longer than every declared one is unknown, and the error names the file.
            let longest = app
                .source_connectors
                .keys()
                .chain(app.sink_connectors.keys())
                .map(String::len)
                .max()
                .unwrap_or(0);
            let unknown = "u".repeat(longest + 1);
            let e = app
                .connector(&unknown)
                .expect_err("an undeclared connector is an error");
            assert!(e.to_string().contains(FILE), "{e}");
            assert_eq!(
                app.max_frame(),
                app.max_frame_bytes.unwrap_or(framing::DEFAULT_MAX_FRAME)
            );
        }
        Err(e) => {
            let message = e.to_string();
            assert!(
                message.contains(FILE),
                "error does not name the file: {message}"
            );
        }
    }
});
