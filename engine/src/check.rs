//! `--check`: validate the application and try every sink address.

use std::time::Duration;

use application::Application;

use crate::net;

/// Prints one line per check to stdout; returns true when every check passed.
pub async fn check(config: &Application) -> bool {
    println!(
        "ok   application file {}: {} source(s), {} sink(s), {} pipeline(s)",
        config.file.display(),
        config.source_connectors.len(),
        config.sink_connectors.len(),
        config.pipelines.len()
    );
    let mut all = true;
    for (name, c) in &config.sink_connectors {
        let Some(ep) = c.endpoint() else { continue };
        match tokio::time::timeout(Duration::from_secs(2), net::connect(&ep)).await {
            Ok(Ok(_)) => println!("ok   sink `{name}` reachable at {ep}"),
            Ok(Err(e)) => {
                all = false;
                println!("FAIL sink `{name}` at {ep}: {e} (is the sink connector running?)");
            }
            Err(_) => {
                all = false;
                println!("FAIL sink `{name}` at {ep}: no answer within 2 s");
            }
        }
    }
    all
}
