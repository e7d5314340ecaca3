//! `alerts_stateful`: the seed's stateful Alerts application.
//!
//! - `alerts_stateful run --application-module app.toml [--resilience-dir DIR]`: the engine
//!   with the alerts pipeline (all the engine's options apply).
//! - `alerts_stateful generate --application-module app.toml --users N --count M`: a
//!   generator source connector (like the seed's GenSource).
//! - `alerts_stateful print-sink --application-module app.toml`: a sink connector printing
//!   the alerts.
//! - `alerts_stateful bench --users N --count M [--state-scope stream] [--checkpoint-store URL]`:
//!   throughput with checkpoints, in process (engine scope: snapshots in a temporary
//!   directory; stream scope: slices in that directory or in the store given).

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use alerts_stateful::{build_app, feed, generated_transaction, print_sink, SINK, SOURCE};
use application::{Application, Endpoint};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "alerts_stateful",
    version,
    about = "Per-user running totals with alerts past +/-2000"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the engine with the alerts pipeline.
    Run {
        #[command(flatten)]
        args: engine::EngineArgs,
    },
    /// Generate transactions into the engine (a source connector).
    Generate {
        /// The application description.
        #[arg(long = "application-module")]
        application_module: std::path::PathBuf,
        /// Number of distinct users.
        #[arg(long, default_value_t = 1000)]
        users: u64,
        /// Number of transactions.
        #[arg(long, default_value_t = 100_000)]
        count: u64,
        /// Seed of the generator (same seed, same transactions).
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Print the alerts that arrive (a sink connector).
    PrintSink {
        /// The application description.
        #[arg(long = "application-module")]
        application_module: std::path::PathBuf,
    },
    /// Measure transactions/s with checkpoints, and the checkpoint time.
    Bench {
        /// Number of distinct users (= keys).
        #[arg(long, default_value_t = 1000)]
        users: u64,
        /// Number of transactions.
        #[arg(long, default_value_t = 5_000_000)]
        count: u64,
        /// Time between checkpoints.
        #[arg(long, default_value = "1s", value_parser = engine::options::parse_duration)]
        checkpoint_interval: Duration,
        /// Keyed state per engine (snapshots) or per source stream (slices).
        #[arg(long, default_value = "engine", value_parser = ["engine", "stream"])]
        state_scope: String,
        /// Stream scope: where the slices go (a directory or s3://BUCKET/PREFIX?...; the
        /// bucket must exist); default: a temporary directory.
        #[arg(long, value_name = "URL")]
        checkpoint_store: Option<String>,
    },
}

fn endpoint(config: &Application, name: &str) -> Result<Endpoint, String> {
    let (_, c) = config.connector(name).map_err(|e| e.to_string())?;
    c.endpoint()
        .ok_or_else(|| format!("connector `{name}` has no address"))
}

fn main() -> ExitCode {
    telemetry::init_logging();
    match real_main(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("alerts_stateful: {e}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> Result<(), String> {
    match cli.cmd {
        Cmd::Run { args } => {
            let config = args.load().map_err(|e| e.to_string())?;
            if args.check {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                return if rt.block_on(engine::check(&config)) {
                    Ok(())
                } else {
                    Err("checks failed".into())
                };
            }
            let mut app = engine::App::new();
            build_app(&mut app);
            engine::run(app, config, args.options()).map_err(|e| e.to_string())
        }
        Cmd::Generate {
            application_module,
            users,
            count,
            seed,
        } => {
            let config = Application::load(&application_module).map_err(|e| e.to_string())?;
            let ep = endpoint(&config, SOURCE)?;
            let progress = feed::Progress::default();
            let t0 = Instant::now();
            feed::feed(
                &ep,
                &config.cookie,
                &format!("generator-{seed}"),
                count,
                &|i| generated_transaction(seed, users, i),
                &progress,
                Duration::from_secs(30),
            )?;
            eprintln!(
                "generate: {count} transactions for {users} users acknowledged in {:.2} s",
                t0.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Cmd::PrintSink { application_module } => {
            let config = Application::load(&application_module).map_err(|e| e.to_string())?;
            print_sink::run(&endpoint(&config, SINK)?, false)
        }
        Cmd::Bench {
            users,
            count,
            checkpoint_interval,
            state_scope,
            checkpoint_store,
        } => bench(
            users,
            count,
            checkpoint_interval,
            &state_scope,
            checkpoint_store,
        ),
    }
}

/// `in_flight_bytes` of the bench's source: above what it sends in one checkpoint interval
/// (`ALERTS_BENCH_IN_FLIGHT_BYTES` overrides it).
const BENCH_IN_FLIGHT_BYTES: u64 = 512 * 1024 * 1024;

fn bench(
    users: u64,
    count: u64,
    interval: Duration,
    scope: &str,
    store: Option<String>,
) -> Result<(), String> {
    if store.is_some() && scope != "stream" {
        return Err("--checkpoint-store goes with --state-scope stream".into());
    }
    let dir = std::env::temp_dir().join(format!("alerts-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let app_file = dir.join("app.toml");
    std::fs::write(
        &app_file,
        format!(
            // Acknowledgements wait for the checkpoint: what is sent in one interval is in
            // flight, so the bound is raised above the default (16 MiB: ~0.35 M transactions).
            "name = \"alerts bench\"\nstate_scope = \"{scope}\"\n[source_connectors.{SOURCE}]\npath = \"{}\"\nmax_credits = 65536\nin_flight_bytes = {}\n[sink_connectors.{SINK}]\npath = \"{}\"\n",
            dir.join("in.sock").display(),
            std::env::var("ALERTS_BENCH_IN_FLIGHT_BYTES")
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(BENCH_IN_FLIGHT_BYTES),
            dir.join("out.sock").display()
        ),
    )
    .map_err(|e| e.to_string())?;
    let config = Application::load(&app_file).map_err(|e| e.to_string())?;
    let sink_ep = endpoint(&config, SINK)?;
    std::thread::spawn(move || print_sink::run(&sink_ep, true));
    let registry = telemetry::Registry::default();
    let reg = registry.clone();
    // Engine scope: snapshots in --resilience-dir; stream scope: slices in the store.
    let (resilience_dir, checkpoint_store) = match scope {
        "stream" => (
            None,
            Some(store.unwrap_or_else(|| dir.join("store").display().to_string())),
        ),
        _ => (Some(dir.join("resilience")), None),
    };
    let place = checkpoint_store
        .clone()
        .map(|s| s.split('?').next().unwrap_or_default().to_string())
        .unwrap_or_else(|| "a directory".into());
    let engine = engine::spawn(
        move || {
            let mut app = engine::App::with_registry(reg);
            build_app(&mut app);
            app
        },
        config.clone(),
        engine::RunOptions {
            resilience_dir,
            checkpoint_store,
            checkpoint_interval: interval,
            stats_interval: Duration::ZERO,
            ..Default::default()
        },
    )
    .map_err(|e| e.to_string())?;
    let ep = engine
        .source_endpoint(SOURCE)
        .cloned()
        .ok_or("no source endpoint")?;
    let progress = feed::Progress::default();
    let t0 = Instant::now();
    // When the acknowledged point moved (after each checkpoint), sampled every millisecond.
    let mut steps: Vec<(Instant, u64)> = Vec::new();
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::SeqCst) {
                let a = progress.acked.load(Ordering::SeqCst);
                if steps.last().map_or(a > 0, |l| l.1 != a) {
                    steps.push((Instant::now(), a));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        let fed = feed::feed(
            &ep,
            "",
            "bench",
            count,
            &|i| generated_transaction(7, users, i),
            &progress,
            Duration::from_secs(30),
        );
        done.store(true, Ordering::SeqCst);
        fed
    })?;
    let secs = t0.elapsed().as_secs_f64();
    let frame_bytes = progress.bytes.load(Ordering::SeqCst) as f64 / count as f64;
    let text = registry.render();
    let metric = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name) && !l.starts_with('#'))
            .and_then(|l| l.rsplit(' ').next())
            .unwrap_or("?")
            .to_string()
    };
    println!(
        "alerts bench: {count} transactions, {users} users, {scope} scope, checkpoint every {interval:?} to {place}: {:.2} s, {:.2} M transactions/s ({:.1} MB/s of frames) acknowledged end to end",
        secs,
        count as f64 / secs / 1e6,
        count as f64 * frame_bytes / secs / 1e6
    );
    // Steady state: from the first acknowledgements (after the first checkpoint) to the last
    // before the end: not the start-up, nor the wait for the final checkpoint (engine scope
    // takes it at the next tick, stream scope at once after EOS).
    let periodic: Vec<&(Instant, u64)> = steps.iter().filter(|s| s.1 < count).collect();
    if let [first, .., last] = periodic[..] {
        let rate = (last.1 - first.1) as f64 / (last.0 - first.0).as_secs_f64();
        println!(
            "steady state: {:.2} M transactions/s ({:.1} MB/s) acknowledged over {:.2} s",
            rate / 1e6,
            rate * frame_bytes / 1e6,
            (last.0 - first.0).as_secs_f64()
        );
    } else {
        println!("steady state: the run is shorter than two periodic checkpoints");
    }
    let mean_ms = |name: &str| {
        let sum: f64 = metric(&format!("{name}_sum")).parse().unwrap_or(f64::NAN);
        let count: f64 = metric(&format!("{name}_count")).parse().unwrap_or(f64::NAN);
        format!("{:.1}", sum / count * 1e3)
    };
    println!(
        "checkpoints: {} written; mean {} ms total ({} ms holding the data path); last {} bytes; alerts out: {}",
        metric("engine_checkpoints_total"),
        mean_ms("engine_checkpoint_duration_seconds"),
        mean_ms("engine_checkpoint_snapshot_seconds"),
        metric("engine_checkpoint_bytes"),
        metric("engine_messages_total{direction=\"out\"}"),
    );
    drop(engine);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
