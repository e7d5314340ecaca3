//! `engine`: runs the pass-through pipelines of an application file.

use std::process::ExitCode;

use clap::Parser;
use engine::{App, EngineArgs};

/// Runs the pass-through pipelines declared in an application file (`[[pipelines]]`):
/// listens for its source connectors, connects to its sink connectors and forwards every
/// message unchanged, acknowledging it to the source once the sinks have.
#[derive(Parser)]
#[command(name = "engine", version)]
struct Cli {
    #[command(flatten)]
    args: EngineArgs,
}

fn main() -> ExitCode {
    telemetry::init_logging();
    let cli = Cli::parse();
    let config = match cli.args.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("engine: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.args.check {
        let ok = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt.block_on(engine::check(&config)),
            Err(e) => {
                eprintln!("engine: cannot create the runtime: {e}");
                false
            }
        };
        return if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    let mut app = App::new();
    for p in &config.pipelines {
        let sinks: Vec<&str> = p.sinks.iter().map(|s| s.as_str()).collect();
        app.pass_through(&p.source, &sinks);
    }
    if config.pipelines.is_empty() {
        eprintln!(
            "engine: {} declares no [[pipelines]]: messages are acknowledged and dropped",
            config.file.display()
        );
    }
    match engine::run(app, config, cli.args.options()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("engine: {e}");
            ExitCode::FAILURE
        }
    }
}
