//! The entry point of every connector binary: arguments, logging, metrics, signals,
//! `--check`, the connection to the engine (or stdin/stdout), the body, and the exit code.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Result};
use application::Direction;
use framing::{Frame, Hello, ProtocolCodec, PROTOCOL_VERSION};
use tokio_util::sync::CancellationToken;

use crate::args::{self, ConnectorSpec, Input, Output};
use crate::check::Check;
use crate::client::SourceClient;
use crate::client::{OutputClosed, ShuttingDown};
use crate::connector::{self, SinkConnector, SourceConnector};
use crate::context::Context;
use crate::metrics::ConnectorMetrics;
use crate::sink::{Sink, SinkServerConfig};
use crate::transport;
use crate::typed;
use clap::{CommandFactory, FromArgMatches};

type TypedCheckFn<P> = Box<dyn FnOnce(Context, P) -> Pin<Box<dyn Future<Output = Vec<Check>>>>>;
type CheckFn = Box<dyn FnOnce(Context) -> Pin<Box<dyn Future<Output = Vec<Check>>>>>;

/// Parses the arguments and sets up logging, the runtime, metrics and the context.
fn start(spec: &ConnectorSpec) -> Result<Option<(Context, tokio::runtime::Runtime)>> {
    telemetry::init_logging();
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let Some((options, params)) = args::parse(spec, argv)? else {
        return Ok(None);
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let metrics = ConnectorMetrics::new(spec.program, &options.connector, spec.direction);
    let shutdown = CancellationToken::new();
    let ctx = Context::new(spec.program, options, params, metrics, shutdown)?;
    Ok(Some((ctx, rt)))
}

/// HELLO as this connector says it.
fn hello(ctx: &Context) -> Hello {
    Hello {
        version: PROTOCOL_VERSION.to_string(),
        cookie: ctx
            .app
            .as_ref()
            .map(|a| a.cookie.clone())
            .unwrap_or_default(),
        program_name: ctx.program.to_string(),
        instance_name: ctx.connector.clone(),
    }
}

/// The sink's input: the engine's connections on the connector's address, or standard input
/// (`input_error` then gets the reason when it ends on a record it cannot read).
async fn open_sink(ctx: &Context, input_error: Arc<Mutex<Option<String>>>) -> Result<Sink> {
    Ok(match ctx.options.input {
        Input::Stdin => Sink::stdin_reporting(
            ctx.options.format,
            ctx.options.max_frame,
            ctx.metrics.clone(),
            ctx.shutdown.clone(),
            input_error,
        ),
        Input::Engine => {
            let (cookie, config) = match (&ctx.app, &ctx.options.config) {
                (Some(app), Some(c)) => (app.cookie.clone(), c.clone()),
                _ => return Err(anyhow!("missing --application-module FILE")),
            };
            let endpoint = config
                .endpoint()
                .ok_or_else(|| anyhow!("connector `{}` has no port or path", ctx.connector))?;
            let mut sink = Sink::listen(
                SinkServerConfig {
                    endpoint,
                    cookie,
                    max_credits: config.max_credits,
                    max_frame: ctx.options.max_frame,
                },
                ctx.metrics.clone(),
                ctx.shutdown.clone(),
            )
            .await?;
            sink.set_in_flight_bytes(config.in_flight_bytes);
            sink
        }
    })
}

/// The reason a `--from stdin` input ended on a record it could not read, if it did.
fn bad_input(input_error: &Mutex<Option<String>>) -> Result<()> {
    match input_error.lock().unwrap_or_else(|p| p.into_inner()).take() {
        Some(why) => Err(anyhow!(why)),
        None => Ok(()),
    }
}

fn engine_endpoint(ctx: &Context) -> Result<application::Endpoint> {
    ctx.options
        .config
        .as_ref()
        .and_then(|c| c.endpoint())
        .ok_or_else(|| {
            anyhow!(
                "connector `{}` has no engine address (port or path) in the application file",
                ctx.connector
            )
        })
}

/// Shared main: parse, set up, `--check` or run, map the result to an exit code.
fn run_main<F, Fut>(spec: ConnectorSpec, check: Option<CheckFn>, body: F) -> ExitCode
where
    F: FnOnce(Context) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let program = spec.program;
    let (ctx, rt) = match start(&spec) {
        Ok(Some(x)) => x,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) if std::env::args_os().any(|a| a == "--check") => {
            // `--check` promises one line per check: a bad application file, an unknown
            // connector name or a bad option is the first (and only) failed check.
            Check::fail("arguments and application file", error_chain(&e)).report();
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("{program}: {}", error_chain(&e));
            return ExitCode::from(2);
        }
    };
    let code = rt.block_on(async move {
        if ctx.options.check {
            return run_checks(ctx, spec, check).await;
        }
        let signals = ctx.shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown requested: draining");
            signals.cancel();
            wait_for_signal().await;
            eprintln!("{program}: second signal, exiting now");
            std::process::exit(130);
        });
        let external = ctx.external();
        external.down(format!("not connected to {} yet", external.system()));
        if let Some(addr) = ctx.options.metrics_addr {
            let (registry, readiness) =
                (ctx.metrics.registry.clone(), ctx.metrics.readiness.clone());
            if let Err(e) = telemetry::serve_ops(addr, registry, readiness).await {
                eprintln!("{program}: cannot serve metrics on {addr}: {e}");
                return ExitCode::from(2);
            }
        }
        telemetry::spawn_stats_reporter(
            ctx.metrics
                .stats_source(format!("{program}/{}", ctx.connector)),
            Duration::from_secs(ctx.options.stats_interval),
        );
        match body(ctx).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) if e.downcast_ref::<OutputClosed>().is_some() => ExitCode::SUCCESS,
            Err(e) if e.downcast_ref::<ShuttingDown>().is_some() => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{program}: {}", error_chain(&e));
                ExitCode::FAILURE
            }
        }
    });
    // The body is done. Do not wait for a read of standard input blocked on a thread (an
    // open, idle stdin would otherwise keep a `--from stdin` sink alive after SIGTERM).
    rt.shutdown_timeout(Duration::from_millis(200));
    code
}

/// `{e:#}` without repeating a cause whose text the message before it already contains
/// (errors that embed their source, like the application file's, would print it twice).
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

async fn run_checks(ctx: Context, spec: ConnectorSpec, check: Option<CheckFn>) -> ExitCode {
    let direction = spec.direction;
    let mut checks = Vec::new();
    match &ctx.app {
        Some(app) => checks.push(Check::ok(format!(
            "application file {} declares {} `{}`",
            app.file.display(),
            direction,
            ctx.connector
        ))),
        None => checks.push(Check::ok("no application file (stdin/stdout mode)")),
    }
    // Parsing lets required parameters be missing under --check so that every problem is
    // reported here, one line each, instead of only the first.
    for p in spec.params.iter().filter(|p| p.required) {
        if ctx.params.get(p.name).is_none() {
            let env = format!("{}_{}", ctx.connector, p.name)
                .to_ascii_uppercase()
                .replace('-', "_");
            checks.push(Check::fail(
                format!("parameter --{}-{}", ctx.connector, p.name),
                format!(
                    "missing ({}); pass --{}-{} VALUE, set `{}` in the connector's params table, or set {env}",
                    p.help, ctx.connector, p.name, p.name
                ),
            ));
        }
    }
    if let Some(endpoint) = ctx.options.config.as_ref().and_then(|c| c.endpoint()) {
        match direction {
            Direction::Source if ctx.options.output == Output::Engine => {
                let what = format!("engine accepts `{}` at {endpoint}", ctx.connector);
                let hello = hello(&ctx);
                checks.push(
                    match check_engine(&endpoint, hello, ctx.options.max_frame).await {
                        Ok(()) => Check::ok(what),
                        Err(e) => Check::fail(what, e),
                    },
                );
            }
            Direction::Sink if ctx.options.input == Input::Engine => {
                let what = format!("can listen at {endpoint} for the engine");
                checks.push(match transport::Listener::bind(&endpoint).await {
                    Ok(_) => Check::ok(what),
                    Err(e) => Check::fail(
                        what,
                        format!("{e}: stop whatever uses it or change the port/path"),
                    ),
                });
            }
            _ => {}
        }
    }
    if let Some(f) = check {
        checks.extend(f(ctx.clone()).await);
    }
    let mut all = true;
    for c in &checks {
        all &= c.report();
    }
    if all {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Says HELLO to the engine and waits for its answer: reachable, really the engine's source
/// listener, and the cookie and version match. Closes the connection without sending data.
async fn check_engine(
    endpoint: &application::Endpoint,
    hello: Hello,
    max_frame: usize,
) -> std::result::Result<(), String> {
    use futures::StreamExt;
    use tokio::io::AsyncWriteExt;
    let connect = tokio::time::timeout(Duration::from_secs(5), transport::connect(endpoint));
    let (read, mut write) = match connect.await {
        Err(_) => return Err("no answer within 5 s: is the address right?".to_string()),
        Ok(Err(e)) => {
            return Err(format!(
                "{e}: start the engine first (engine --application-module FILE), or fix the address in the application file"
            ))
        }
        Ok(Ok(c)) => c,
    };
    let mut buf = bytes::BytesMut::new();
    Frame::Hello(hello)
        .encode(&mut buf)
        .map_err(|e| e.to_string())?;
    write
        .write_all(&buf)
        .await
        .map_err(|e| format!("connection dropped while saying HELLO: {e}"))?;
    let mut framed = tokio_util::codec::FramedRead::new(read, ProtocolCodec::new(max_frame));
    let answer = tokio::time::timeout(Duration::from_secs(5), framed.next()).await;
    let _ = write.shutdown().await;
    match answer {
        Err(_) => Err(
            "connected, but no answer to HELLO within 5 s: is this the engine's source address?"
                .into(),
        ),
        Ok(Some(Ok(Frame::Ok { .. }))) => Ok(()),
        Ok(Some(Ok(Frame::Error { message }))) => Err(format!(
            "the engine refused this connector: {message} (check the cookie and the connector name)"
        )),
        Ok(Some(Ok(other))) => Err(format!(
            "answered HELLO with {:?}, not OK: is this the engine's source address?",
            other.tag()
        )),
        Ok(Some(Err(e))) => Err(format!(
            "bad answer to HELLO: {e}: is this the engine's source address?"
        )),
        Ok(None) => {
            Err("closed the connection after HELLO: is this the engine's source address?".into())
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Builds and runs a connector binary written against the traits: its parameters are the
/// `#[derive(clap::Parser)]` struct `P` (whose `#[command(name, about)]` name the binary).
pub struct Connector<P, K> {
    check: Option<TypedCheckFn<P>>,
    _kind: PhantomData<K>,
}

/// Marks a [`Connector`] that runs a [`SourceConnector`].
pub struct SourceKind;
/// Marks a [`Connector`] that runs a [`SinkConnector`].
pub struct SinkKind;

/// Starts describing a source connector binary with parameters `P`.
pub fn source<P>() -> Connector<P, SourceKind> {
    Connector {
        check: None,
        _kind: PhantomData,
    }
}

/// Starts describing a sink connector binary with parameters `P`.
pub fn sink<P>() -> Connector<P, SinkKind> {
    Connector {
        check: None,
        _kind: PhantomData,
    }
}

impl<P, K> Connector<P, K>
where
    P: CommandFactory + FromArgMatches + 'static,
{
    /// Adds the connector's own `--check` (reach the external system, find the
    /// topic/queue/bucket/table, ...), run after the runtime's checks.
    pub fn check<F, Fut>(mut self, f: F) -> Self
    where
        F: FnOnce(Context, P) -> Fut + 'static,
        Fut: Future<Output = Vec<Check>> + 'static,
    {
        self.check = Some(Box::new(move |ctx, p| Box::pin(f(ctx, p))));
        self
    }

    /// The spec and the `--check` hook, from `P`; a parameters struct the runtime cannot use
    /// is reported (exit code 2).
    fn parts(self, direction: Direction) -> Result<(ConnectorSpec, Option<CheckFn>), ExitCode> {
        let cmd = P::command();
        let program: &'static str = Box::leak(cmd.get_name().to_string().into_boxed_str());
        let about: &'static str = Box::leak(
            cmd.get_about()
                .map(|a| a.to_string())
                .unwrap_or_default()
                .into_boxed_str(),
        );
        let params = typed::params_of::<P>().map_err(|e| {
            eprintln!("{program}: {e}");
            ExitCode::from(2)
        })?;
        let check = self.check.map(|f| -> CheckFn {
            Box::new(move |ctx: Context| {
                Box::pin(async move {
                    match typed::parse_params::<P>(&ctx.params) {
                        Ok(p) => f(ctx, p).await,
                        // A missing required parameter has its own line already.
                        Err(_)
                            if params
                                .iter()
                                .any(|p| p.required && ctx.params.get(p.name).is_none()) =>
                        {
                            Vec::new()
                        }
                        Err(e) => vec![Check::fail("connector parameters", format!("{e:#}"))],
                    }
                })
            })
        });
        let spec = ConnectorSpec {
            program,
            about,
            direction,
            params,
        };
        Ok((spec, check))
    }
}

impl<P> Connector<P, SourceKind>
where
    P: CommandFactory + FromArgMatches + 'static,
{
    /// Runs the source: `start` opens the upstream and returns the connector the runtime
    /// then drives until shutdown or the end of its input.
    pub fn run<S, F, Fut>(self, start: F) -> ExitCode
    where
        S: SourceConnector,
        F: FnOnce(Context, P) -> Fut,
        Fut: Future<Output = Result<S>>,
    {
        let (spec, check) = match self.parts(Direction::Source) {
            Ok(x) => x,
            Err(code) => return code,
        };
        run_main(spec, check, |ctx| async move {
            let params = typed::parse_params::<P>(&ctx.params)?;
            let mut client = match ctx.options.output {
                Output::Stdout => SourceClient::stdout(ctx.metrics.clone(), ctx.shutdown.clone()),
                Output::Engine => SourceClient::engine(
                    engine_endpoint(&ctx)?,
                    hello(&ctx),
                    ctx.options.max_frame,
                    ctx.metrics.clone(),
                    ctx.shutdown.clone(),
                ),
            };
            client.set_dead_letters(ctx.dead_letters());
            if let Some(c) = &ctx.options.config {
                client.set_in_flight_bytes(c.in_flight_bytes);
            }
            let mut connector = start(ctx.clone(), params).await?;
            ctx.external().up();
            connector::run_source(&ctx, &mut connector, &mut client).await
        })
    }
}

impl<P> Connector<P, SinkKind>
where
    P: CommandFactory + FromArgMatches + 'static,
{
    /// Runs the sink: `start` opens the external system and returns the connector the
    /// runtime then feeds until the input ends or shutdown.
    pub fn run<K, F, Fut>(self, start: F) -> ExitCode
    where
        K: SinkConnector,
        F: FnOnce(Context, P) -> Fut,
        Fut: Future<Output = Result<K>>,
    {
        let (spec, check) = match self.parts(Direction::Sink) {
            Ok(x) => x,
            Err(code) => return code,
        };
        run_main(spec, check, |ctx| async move {
            let params = typed::parse_params::<P>(&ctx.params)?;
            let input_error: Arc<Mutex<Option<String>>> = Arc::default();
            let mut sink = open_sink(&ctx, input_error.clone()).await?;
            let mut connector = start(ctx.clone(), params).await?;
            ctx.external().up();
            connector::run_sink(&ctx, &mut connector, &mut sink).await?;
            bad_input(&input_error)
        })
    }
}
