//! The publishing side of `rabbitmq_sink`: the connection with publisher confirms, routing
//! keys, publishing a batch and telling what the broker confirmed, nacked or returned.

use std::collections::HashMap;
use std::sync::Arc;
use std::task::Poll;

use connector_runtime::prelude::*;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ExchangeKind};

use crate::{connect, match_returned, Failure, Link};

/// Where and how to publish, from the parameters.
pub struct Publish {
    /// Broker URL (with the password).
    pub url: String,
    /// The URL with the password masked, for logs.
    pub shown_url: String,
    /// Connection name in the broker's management UI (`program/connector`).
    pub name: String,
    /// Exchange to publish to (empty: the default exchange).
    pub exchange: ShortString,
    /// Routing key of every message instead of the message key.
    pub routing_key: Option<ShortString>,
    /// Properties of every message (delivery mode).
    pub props: BasicProperties,
    /// `mandatory`.
    pub options: BasicPublishOptions,
}

impl Publish {
    /// The routing key of a message: the fixed one, or the message key when it can be one.
    fn routing_key(&self, key: &[u8]) -> Result<ShortString, String> {
        if let Some(k) = &self.routing_key {
            return Ok(k.clone());
        }
        let text = std::str::from_utf8(key).map_err(|_| {
            "the message key is not UTF-8 text, so it cannot be a routing key; set routing_key"
                .to_string()
        })?;
        ShortString::try_new(text).map_err(|_| {
            format!(
                "the message key is {} bytes; routing keys are at most 255 bytes",
                key.len()
            )
        })
    }
}

/// One connection to the broker with a confirming channel.
struct Session {
    conn: Connection,
    channel: Channel,
}

impl AsRef<Connection> for Session {
    fn as_ref(&self) -> &Connection {
        &self.conn
    }
}

/// Connects, checks that the exchange exists and turns publisher confirms on.
async fn open(cfg: Arc<Publish>) -> Result<Session, Failure> {
    let conn = connect(&cfg.url, &cfg.name).await?;
    let fail = |doing: String| move |e: lapin::Error| Failure::from_lapin(&e, &doing);
    let channel = conn
        .create_channel()
        .await
        .map_err(fail("open a channel".into()))?;
    if !cfg.exchange.as_str().is_empty() {
        let passive = ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let x = &cfg.exchange;
        channel
            .exchange_declare(
                x.clone(),
                ExchangeKind::Direct,
                passive,
                FieldTable::default(),
            )
            .await
            .map_err(fail(format!("publish to exchange `{x}`")))?;
    }
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(fail("turn publisher confirms on".into()))?;
    Ok(Session { conn, channel })
}

/// What became of the messages handed to [`Exchange::publish`].
pub enum Published {
    /// Per message: `None` when the broker confirmed it, else why it refused it (nacked, or
    /// returned as unroutable with `mandatory`).
    Settled(Vec<Option<String>>),
    /// Nothing counts as confirmed (no connection, connection lost, shutdown): publish them
    /// all again.
    Unconfirmed(String),
}

/// The exchange being published to, over as many connections as broker restarts require.
pub struct Exchange {
    ctx: Context,
    cfg: Arc<Publish>,
    link: Link<Session>,
}

impl Exchange {
    /// Connects (waiting for the broker while it is unreachable), checks that the exchange
    /// exists and turns publisher confirms on.
    pub async fn connect(ctx: &Context, cfg: Publish) -> Result<Exchange> {
        let cfg = Arc::new(cfg);
        let mut link = Link::new(format!("RabbitMQ at {}", cfg.shown_url));
        link.first(ctx, |_| open(cfg.clone())).await?;
        tracing::info!(
            "publishing to exchange `{}` at {}",
            cfg.exchange,
            cfg.shown_url
        );
        Ok(Exchange {
            ctx: ctx.clone(),
            cfg,
            link,
        })
    }

    /// `--check`: the broker is reachable and the exchange exists.
    pub async fn check(cfg: Publish) -> Result<()> {
        crate::probe(open(Arc::new(cfg))).await
    }

    /// The routing key of a message: the fixed one, or the message key when it can be one.
    pub fn routing_key(&self, key: &[u8]) -> Result<ShortString, String> {
        self.cfg.routing_key(key)
    }

    /// Publishes `msgs` (routing key, body) in order and waits for their confirms,
    /// (re)connecting first when needed; `Err` when the broker rejects the configuration.
    pub async fn publish(&mut self, msgs: &[(ShortString, &[u8])]) -> Result<Published> {
        let cfg = self.cfg.clone();
        let session = tokio::select! {
            s = self.link.open(&self.ctx, |_| open(cfg)) => s?,
            // The runtime sees the shutdown while it waits to publish them again.
            _ = self.ctx.shutdown.cancelled() => None,
        };
        let Some(session) = session else {
            return Ok(Published::Unconfirmed("not connected to the broker".into()));
        };
        let published = tokio::select! {
            r = confirmed(&session.channel, &self.cfg, msgs) => r,
            () = crate::closed(&session.conn) => Err(Failure::Transient("connection closed".into())),
        };
        match published {
            Ok(refusals) => Ok(Published::Settled(refusals)),
            Err(Failure::Fatal(e)) => Err(e),
            Err(Failure::Transient(why)) => {
                let then = format!(
                    "publishing {} unconfirmed messages again after reconnecting",
                    msgs.len()
                );
                self.link.lost(&why, &then);
                Ok(Published::Unconfirmed(why))
            }
        }
    }

    /// Closes the connection.
    pub async fn close(&mut self) {
        self.link.close("shutdown").await;
    }
}

/// Publishes `msgs` (routing key, body) in order, then waits for every confirm. Returns per
/// message `None` (confirmed) or why the broker refused it (nacked, or returned with
/// `mandatory`); an error means the channel or connection failed (nothing counts as
/// confirmed).
async fn confirmed(
    channel: &Channel,
    cfg: &Publish,
    msgs: &[(ShortString, &[u8])],
) -> Result<Vec<Option<String>>, Failure> {
    let doing = format!("publish to exchange `{}`", cfg.exchange);
    let fail = |e: lapin::Error| Failure::from_lapin(&e, &doing);
    // The first poll of basic_publish queues the frames and numbers the confirm, so polling
    // each once in turn keeps the batch order on the wire without a round trip per message.
    let mut sends = Vec::with_capacity(msgs.len());
    for (routing_key, body) in msgs {
        let mut send = Box::pin(channel.basic_publish(
            cfg.exchange.clone(),
            routing_key.clone(),
            cfg.options,
            body,
            cfg.props.clone(),
        ));
        let first = futures::poll!(send.as_mut());
        sends.push((send, first));
    }
    let mut confirms = Vec::with_capacity(sends.len());
    for (send, first) in sends {
        let sent = match first {
            Poll::Ready(r) => r,
            Poll::Pending => send.await,
        };
        confirms.push(sent.map_err(fail)?);
    }
    let mut outcomes = Vec::with_capacity(confirms.len());
    let mut returned = Vec::new();
    for confirm in confirms {
        match confirm.await.map_err(fail)? {
            Confirmation::Ack(r) => {
                returned.extend(r);
                outcomes.push(None);
            }
            Confirmation::Nack(r) => {
                returned.extend(r);
                outcomes.push(Some("nacked by the broker".to_string()));
            }
            Confirmation::NotRequested => {
                return Err(Failure::Transient(
                    "publisher confirms are not enabled".into(),
                ))
            }
        }
    }
    if let Some(first) = returned.first() {
        let published: Vec<(&str, &[u8])> = msgs.iter().map(|(k, b)| (k.as_str(), *b)).collect();
        let keys: Vec<(String, Vec<u8>)> = returned
            .iter()
            .map(|r| (r.delivery.routing_key.to_string(), r.delivery.data.clone()))
            .collect();
        let why = format!(
            "returned by the broker ({} {}): no queue is bound to exchange `{}` for this routing key",
            first.reply_code, first.reply_text, cfg.exchange
        );
        for i in match_returned(&published, &keys) {
            outcomes[i] = Some(why.clone());
        }
    }
    Ok(outcomes)
}

/// Publish attempts per message that the broker refused, so that after `retries` attempts
/// more a message is given up on (dead-lettered) instead of retried forever.
#[derive(Debug, Default)]
pub struct Attempts {
    refused: HashMap<(u64, u64), u32>,
}

impl Attempts {
    /// The message was refused once more: how many times now.
    pub fn refused(&mut self, msg: &SinkMessage) -> u32 {
        let n = self
            .refused
            .entry((msg.stream_id, msg.message_id))
            .or_default();
        *n += 1;
        *n
    }

    /// The message is settled (confirmed or given up): forget it.
    pub fn settled(&mut self, msg: &SinkMessage) {
        if !self.refused.is_empty() {
            self.refused.remove(&(msg.stream_id, msg.message_id));
        }
    }
}
