//! rabbitmq_source: consumes a RabbitMQ queue and sends every message to the engine; the
//! MESSAGE key is the delivery's routing key, the payload its body, byte for byte.
//!
//! Delivery guarantee: at-least-once. Deliveries are acknowledged to the broker (`basic.ack`,
//! `multiple`) only after the engine acknowledged them, so a killed connector, engine or
//! broker never loses a message: the broker delivers what was not acknowledged again
//! (duplicates downstream are possible, at most about `prefetch` per failure). A body larger
//! than `max_bytes` is rejected with `basic.nack` (`requeue` false: the queue's dead-letter
//! exchange gets it, or the broker drops it when the queue has none).
//!
//! The broker going away (restart, network) is not an error: the connector reconnects with
//! back-off, sets the QoS prefetch again and resumes consuming; deliveries of the old channel
//! come again from the broker. A delivery lapin cannot parse (a routing key or header that is
//! not UTF-8) ends the connection before its delivery tag is known, so it cannot be rejected
//! alone and would come again on every connection: the connector stops with a line that says
//! so. The connection handling is in the crate's `source` module.

use std::process::ExitCode;

use connector_runtime::prelude::*;
use rabbitmq_connectors::source::{exchange_kind, Consume, Queue, Tag};
use rabbitmq_connectors::{check_url, short};

/// Consumes a RabbitMQ queue and forwards each message (key = routing key) to the engine;
/// acknowledges to the broker only what the engine acknowledged.
#[derive(Parser)]
#[command(name = "rabbitmq_source")]
struct Params {
    /// Broker URL amqp://USER:PASSWORD@HOST:PORT/VHOST
    #[arg(long, default_value = rabbitmq_connectors::DEFAULT_URL)]
    amqpurl: String,
    /// Queue to consume from
    #[arg(long)]
    queue: String,
    /// Deliveries not yet acknowledged at most (basic.qos prefetch count)
    #[arg(long, default_value_t = 1000)]
    prefetch: u16,
    /// Declare the queue (durable) and its binding at start instead of requiring them
    #[arg(long)]
    declare: bool,
    /// With declare: bind the queue to this exchange
    #[arg(long)]
    exchange: Option<String>,
    /// With declare and exchange: also declare the exchange (durable) with this type: direct, fanout, topic, headers
    #[arg(long)]
    exchange_type: Option<String>,
    /// With declare and exchange: the binding key
    #[arg(long, default_value = "#")]
    routing_key: String,
    /// With declare: the queue's x-dead-letter-exchange, where rejected messages go
    #[arg(long)]
    dead_letter_exchange: Option<String>,
    /// Put rejected messages back in the queue instead of dead-lettering them
    #[arg(long)]
    requeue: bool,
    /// Reject bodies larger than this (default: what fits in one protocol frame)
    #[arg(long)]
    max_bytes: Option<usize>,
}

struct RabbitSource {
    queue: Queue,
    name: String,
    stream: Option<u64>,
    next_id: u64,
    max_bytes: usize,
}

impl SourceConnector for RabbitSource {
    type Token = Tag;

    async fn read(&mut self, out: &mut Batch<Tag>) -> Result<()> {
        let Some(stream) = self.stream else {
            self.stream = Some(out.open(&self.name, None));
            return Ok(());
        };
        for (d, tag) in self.queue.next(4096).await? {
            if d.data.len() > self.max_bytes {
                self.queue.reject(&d, tag, self.max_bytes)?;
                continue;
            }
            let key = d.routing_key.as_str().as_bytes();
            out.push(stream, self.next_id, key, &d.data, tag);
            self.next_id += 1;
        }
        Ok(())
    }

    async fn opened(&mut self, stream: &StreamHandle) -> Result<()> {
        // Delivery tags restart on every channel, so ids are a counter that starts above
        // both the engine's resume point and any id an earlier run can have used.
        let after_resume = stream.resume.map_or(0, |p| p.saturating_add(1));
        self.next_id = after_resume.max(connector_runtime::unix_nanos());
        Ok(())
    }

    async fn commit(&mut self, tokens: Vec<Tag>) -> Result<()> {
        self.queue.ack(tokens).await
    }

    async fn close(&mut self) -> Result<()> {
        self.queue.close().await;
        Ok(())
    }
}

fn main() -> ExitCode {
    rabbitmq_connectors::quiet_lapin_logs();
    connector_runtime::source()
        .check(|ctx, p: Params| async move {
            let r = async { Queue::check(consume(&ctx, &p)?).await }.await;
            vec![Check::from_result(
                "broker reachable and queue consumable",
                r,
            )]
        })
        .run(|ctx, p: Params| async move {
            let cfg = consume(&ctx, &p)?;
            let frame_room = ctx.options.max_frame.saturating_sub(1024);
            Ok(RabbitSource {
                name: format!("rabbitmq:{}:{}", ctx.connector, cfg.queue),
                // The queue first: a missing queue or a refused login is reported at once.
                queue: Queue::connect(&ctx, cfg).await?,
                stream: None,
                next_id: 0,
                max_bytes: p.max_bytes.unwrap_or(frame_room).min(frame_room),
            })
        })
}

/// The consuming configuration, checked: names fit AMQP, the prefetch and type are valid.
fn consume(ctx: &Context, p: &Params) -> Result<Consume> {
    let c = ctx.connector.as_str();
    if p.prefetch == 0 {
        bail!(
            "--{c}-prefetch 0 means unlimited deliveries in flight: give a count from 1 to 65535"
        );
    }
    let opt = |name, v: &Option<String>| v.as_deref().map(|v| short(c, name, v)).transpose();
    Ok(Consume {
        url: p.amqpurl.clone(),
        shown_url: check_url(c, &p.amqpurl)?,
        name: format!("{}/{c}", ctx.program),
        queue: short(c, "queue", &p.queue)?,
        prefetch: p.prefetch,
        declare: p.declare,
        exchange: opt("exchange", &p.exchange)?,
        exchange_type: exchange_kind(c, p.exchange_type.as_deref())?,
        routing_key: short(c, "routing_key", &p.routing_key)?,
        dead_letter_exchange: opt("dead_letter_exchange", &p.dead_letter_exchange)?,
        requeue: p.requeue,
    })
}
