//! The source client and the sink server against scripted peers speaking raw frames:
//! handshake, credits, acknowledgements, replay after a reconnect, and refusal of bad peers.
//! The source side is driven the way the runtime's driver drives it: batches sent with
//! `send`, the engine followed with `next_event`/`recover` between reads, tokens released
//! in order once acknowledged.

use std::time::Duration;

use application::{Direction, Endpoint};
use bytes::{Bytes, BytesMut};
use connector_runtime::client::SourceClient;
use connector_runtime::format::Format;
use connector_runtime::metrics::ConnectorMetrics;
use connector_runtime::sink::{Sink, SinkServerConfig};
use framing::{Frame, Hello, Message, ProtocolCodec, NOTHING_PROCESSED, PROTOCOL_VERSION};
use futures::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

fn hello(cookie: &str) -> Hello {
    Hello {
        version: PROTOCOL_VERSION.into(),
        cookie: cookie.into(),
        program_name: "test".into(),
        instance_name: "t".into(),
    }
}

async fn next(f: &mut Framed<TcpStream, ProtocolCodec>) -> Frame {
    tokio::time::timeout(Duration::from_secs(10), f.next())
        .await
        .expect("frame within 10 s")
        .expect("connection open")
        .expect("valid frame")
}

/// A listener standing in for the engine's source port, and its address.
async fn engine_listener() -> (TcpListener, Endpoint) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let endpoint = Endpoint::Tcp {
        host: "127.0.0.1".into(),
        port,
    };
    (listener, endpoint)
}

/// A source client for `endpoint` (it connects on its first open); tokens are message ids.
fn source_for(endpoint: Endpoint) -> SourceClient<u64> {
    SourceClient::engine(
        endpoint,
        hello(""),
        1 << 20,
        ConnectorMetrics::new("t", "t", Direction::Source),
        CancellationToken::new(),
    )
}

/// Sends messages `ids` of `stream` (payload from `payload`), as one batch.
async fn send(
    source: &mut SourceClient<u64>,
    stream: u64,
    ids: std::ops::RangeInclusive<u64>,
    payload: impl Fn(u64) -> Vec<u8>,
) {
    let mut batch = source.batch(Format::Lines);
    for id in ids {
        batch.push(stream, id, b"k", &payload(id), id);
    }
    source.send(&mut batch).await.unwrap();
}

/// Follows the engine for `d` with no upstream data, as the driver does between reads.
async fn follow(source: &mut SourceClient<u64>, d: Duration) {
    let _ = tokio::time::timeout(d, async {
        loop {
            if source.next_event().await {
                source.recover().await.unwrap();
            }
        }
    })
    .await;
}

fn msg_id(f: &Frame) -> u64 {
    match f {
        Frame::Message(m) => m.message_id,
        other => panic!("expected MESSAGE, got {other:?}"),
    }
}

#[tokio::test]
async fn source_replays_unacknowledged_messages_after_reconnect() {
    let (listener, endpoint) = engine_listener().await;
    let client = tokio::spawn(async move {
        let mut source = source_for(endpoint);
        let s = source.open("stream-a", None).await.unwrap();
        assert_eq!(s.resume, None);
        send(&mut source, s.id, 1..=100, |id| {
            format!("payload-{id}").into_bytes()
        })
        .await;
        // Everything gets acknowledged eventually, across the reconnect.
        let left = source.drain(None, Duration::from_secs(20)).await.unwrap();
        assert_eq!(left, 0);
        let released = source.take_released();
        assert_eq!(
            released,
            (1..=100).collect::<Vec<u64>>(),
            "every token, in order"
        );
    });

    // First connection: grant 100 credits, acknowledge 1..=50, then drop the connection.
    let (sock, _) = listener.accept().await.unwrap();
    let mut f = Framed::new(sock, ProtocolCodec::default());
    assert!(matches!(next(&mut f).await, Frame::Hello(_)));
    f.send(Frame::Ok {
        initial_credits: 101,
    })
    .await
    .unwrap();
    let (sid, name) = match next(&mut f).await {
        Frame::Notify {
            stream_id,
            stream_name,
            point_of_ref,
        } => {
            assert_eq!(point_of_ref, u64::MAX, "no resume hint: u64::MAX");
            (stream_id, stream_name)
        }
        other => panic!("expected NOTIFY, got {other:?}"),
    };
    assert_eq!(name, "stream-a");
    f.send(Frame::NotifyAck {
        success: true,
        stream_id: sid,
        point_of_ref: NOTHING_PROCESSED,
    })
    .await
    .unwrap();
    for want in 1..=100u64 {
        assert_eq!(msg_id(&next(&mut f).await), want);
    }
    f.send(Frame::Ack {
        credits: 0,
        acks: vec![(sid, 50)],
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(f);

    // Second connection: the engine says it processed up to 60; 61..=100 must be resent.
    let (sock, _) = listener.accept().await.unwrap();
    let mut f = Framed::new(sock, ProtocolCodec::default());
    assert!(matches!(next(&mut f).await, Frame::Hello(_)));
    f.send(Frame::Ok {
        initial_credits: 1000,
    })
    .await
    .unwrap();
    match next(&mut f).await {
        Frame::Notify {
            stream_id,
            point_of_ref,
            ..
        } => {
            assert_eq!(stream_id, sid);
            assert_eq!(
                point_of_ref, 50,
                "the client resumes from what was acknowledged"
            );
        }
        other => panic!("expected NOTIFY, got {other:?}"),
    }
    f.send(Frame::NotifyAck {
        success: true,
        stream_id: sid,
        point_of_ref: 60,
    })
    .await
    .unwrap();
    for want in 61..=100u64 {
        let frame = next(&mut f).await;
        assert_eq!(msg_id(&frame), want);
        if let Frame::Message(m) = frame {
            assert_eq!(m.payload, Bytes::from(format!("payload-{want}")));
        }
    }
    f.send(Frame::Ack {
        credits: 0,
        acks: vec![(sid, 100)],
    })
    .await
    .unwrap();
    client.await.unwrap();
}

/// Accepts a source connection as an engine that knows nothing of its stream (e.g. one
/// restarted in memory): OK, then NOTIFY_ACK "nothing processed". Returns the framed
/// connection, the stream id and the point the NOTIFY carried.
async fn accept_fresh(listener: &TcpListener) -> (Framed<TcpStream, ProtocolCodec>, u64, u64) {
    accept_answering(listener, 100, NOTHING_PROCESSED).await
}

/// Accepts a source connection: OK with `credits`, then NOTIFY_ACK with `point`. Returns the
/// framed connection, the stream id and the point the NOTIFY carried.
async fn accept_answering(
    listener: &TcpListener,
    credits: u32,
    point: u64,
) -> (Framed<TcpStream, ProtocolCodec>, u64, u64) {
    let (sock, _) = listener.accept().await.unwrap();
    let mut f = Framed::new(sock, ProtocolCodec::default());
    assert!(matches!(next(&mut f).await, Frame::Hello(_)));
    f.send(Frame::Ok {
        initial_credits: credits,
    })
    .await
    .unwrap();
    let (sid, hint) = match next(&mut f).await {
        Frame::Notify {
            stream_id,
            point_of_ref,
            ..
        } => (stream_id, point_of_ref),
        other => panic!("expected NOTIFY, got {other:?}"),
    };
    f.send(Frame::NotifyAck {
        success: true,
        stream_id: sid,
        point_of_ref: point,
    })
    .await
    .unwrap();
    (f, sid, hint)
}

#[tokio::test]
async fn acknowledgements_received_while_idle_are_not_replayed_after_a_reconnect() {
    let (listener, endpoint) = engine_listener().await;
    let client = tokio::spawn(async move {
        let mut source = source_for(endpoint);
        let s = source.open("idle", None).await.unwrap();
        send(&mut source, s.id, 1..=3, |_| b"x".to_vec()).await;
        // Idle (no upstream data, nobody reading the connection) while the ACK arrives and
        // the engine goes away.
        tokio::time::sleep(Duration::from_millis(500)).await;
        send(&mut source, s.id, 4..=4, |_| b"y".to_vec()).await;
        source.drain(None, Duration::from_secs(10)).await.unwrap()
    });
    let (mut f, sid, _) = accept_fresh(&listener).await;
    for want in 1..=3u64 {
        assert_eq!(msg_id(&next(&mut f).await), want);
    }
    f.send(Frame::Ack {
        credits: 0,
        acks: vec![(sid, 3)],
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(f);

    let (mut f, _, point) = accept_fresh(&listener).await;
    assert_eq!(point, 3, "the new NOTIFY carries what was acknowledged");
    assert_eq!(
        msg_id(&next(&mut f).await),
        4,
        "messages 1..=3 were acknowledged: not sent again"
    );
    f.send(Frame::Ack {
        credits: 0,
        acks: vec![(sid, 4)],
    })
    .await
    .unwrap();
    assert_eq!(client.await.unwrap(), 0);
}

#[tokio::test]
async fn an_idle_source_notices_a_lost_engine_and_resends_what_it_had_not_acknowledged() {
    let (listener, endpoint) = engine_listener().await;
    let client = tokio::spawn(async move {
        let mut source = source_for(endpoint);
        let s = source.open("quiet", None).await.unwrap();
        send(&mut source, s.id, 1..=3, |_| b"x".to_vec()).await;
        // No new upstream data: the client only follows the engine.
        follow(&mut source, Duration::from_secs(5)).await;
        source.drain(None, Duration::from_secs(10)).await.unwrap()
    });
    let (mut f, _, _) = accept_fresh(&listener).await;
    for want in 1..=3u64 {
        assert_eq!(msg_id(&next(&mut f).await), want);
    }
    drop(f); // the engine goes away before acknowledging anything
    let (mut f, sid, _) = tokio::time::timeout(Duration::from_secs(3), accept_fresh(&listener))
        .await
        .expect("a lost engine is noticed at once, not at the next write");
    for want in 1..=3u64 {
        assert_eq!(
            msg_id(&next(&mut f).await),
            want,
            "resent to the new engine"
        );
    }
    f.send(Frame::Ack {
        credits: 0,
        acks: vec![(sid, 3)],
    })
    .await
    .unwrap();
    assert_eq!(client.await.unwrap(), 0);
}

#[tokio::test]
async fn source_stops_on_credits_and_resumes_on_grant() {
    let (listener, endpoint) = engine_listener().await;
    let client = tokio::spawn(async move {
        let mut source = source_for(endpoint);
        let s = source.open("s", None).await.unwrap();
        send(&mut source, s.id, 1..=10, |_| b"x".to_vec()).await;
        source.drain(None, Duration::from_secs(10)).await.unwrap()
    });
    let (sock, _) = listener.accept().await.unwrap();
    let mut f = Framed::new(sock, ProtocolCodec::default());
    next(&mut f).await;
    // 1 credit for NOTIFY + 4 messages.
    f.send(Frame::Ok { initial_credits: 5 }).await.unwrap();
    let sid = match next(&mut f).await {
        Frame::Notify { stream_id, .. } => stream_id,
        other => panic!("{other:?}"),
    };
    f.send(Frame::NotifyAck {
        success: true,
        stream_id: sid,
        point_of_ref: NOTHING_PROCESSED,
    })
    .await
    .unwrap();
    for want in 1..=4 {
        assert_eq!(msg_id(&next(&mut f).await), want);
    }
    // Nothing more may arrive without credits.
    assert!(tokio::time::timeout(Duration::from_millis(300), f.next())
        .await
        .is_err());
    f.send(Frame::Ack {
        credits: 6,
        acks: vec![(sid, 4)],
    })
    .await
    .unwrap();
    for want in 5..=10 {
        assert_eq!(msg_id(&next(&mut f).await), want);
    }
    f.send(Frame::Ack {
        credits: 0,
        acks: vec![(sid, 10)],
    })
    .await
    .unwrap();
    assert_eq!(client.await.unwrap(), 0);
}

async fn sink_server(cookie: &str, max_credits: u32) -> (Sink, u16) {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let sink = Sink::listen(
        SinkServerConfig {
            endpoint: Endpoint::Tcp {
                host: "127.0.0.1".into(),
                port,
            },
            cookie: cookie.into(),
            max_credits,
            max_frame: 1 << 20,
        },
        ConnectorMetrics::new("t", "t", Direction::Sink),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    (sink, port)
}

fn message(stream_id: u64, message_id: u64, payload: &str) -> Frame {
    Frame::Message(Message {
        stream_id,
        message_id,
        event_time: 0,
        key: Bytes::from(format!("k{message_id}")),
        payload: Bytes::from(payload.to_string()),
    })
}

#[tokio::test]
async fn sink_delivers_in_order_and_acks_return_credits() {
    let (mut sink, port) = sink_server("c", 10).await;
    let mut f = Framed::new(
        TcpStream::connect(("127.0.0.1", port)).await.unwrap(),
        ProtocolCodec::default(),
    );
    f.send(Frame::Hello(hello("c"))).await.unwrap();
    assert_eq!(
        next(&mut f).await,
        Frame::Ok {
            initial_credits: 10
        }
    );
    f.send(Frame::Notify {
        stream_id: 7,
        stream_name: "out".into(),
        point_of_ref: 0,
    })
    .await
    .unwrap();
    assert_eq!(
        next(&mut f).await,
        Frame::NotifyAck {
            success: true,
            stream_id: 7,
            point_of_ref: NOTHING_PROCESSED
        }
    );
    assert_eq!(
        next(&mut f).await,
        Frame::Ack {
            credits: 1,
            acks: vec![]
        }
    );
    for id in 1..=10 {
        f.send(message(7, id, &format!("p{id}"))).await.unwrap();
    }
    // A replayed id is dropped, and its credit comes back.
    let mut got = Vec::new();
    while got.len() < 10 {
        let batch = tokio::time::timeout(Duration::from_secs(5), sink.read_batch(100))
            .await
            .unwrap()
            .unwrap();
        got.extend(batch);
    }
    let ids: Vec<u64> = got.iter().map(|m| m.message_id).collect();
    assert_eq!(ids, (1..=10).collect::<Vec<_>>());
    assert_eq!(got[2].payload, Bytes::from("p3"));
    assert_eq!(got[2].key, Bytes::from("k3"));
    sink.ack_all(&got[..4]);
    assert_eq!(
        next(&mut f).await,
        Frame::Ack {
            credits: 4,
            acks: vec![(7, 4)]
        }
    );
    sink.ack_all(&got[4..]);
    assert_eq!(
        next(&mut f).await,
        Frame::Ack {
            credits: 6,
            acks: vec![(7, 10)]
        }
    );

    // A new connection (engine restart) learns the delivered point in NOTIFY_ACK.
    let mut g = Framed::new(
        TcpStream::connect(("127.0.0.1", port)).await.unwrap(),
        ProtocolCodec::default(),
    );
    g.send(Frame::Hello(hello("c"))).await.unwrap();
    next(&mut g).await;
    g.send(Frame::Notify {
        stream_id: 7,
        stream_name: "out".into(),
        point_of_ref: 0,
    })
    .await
    .unwrap();
    assert_eq!(
        next(&mut g).await,
        Frame::NotifyAck {
            success: true,
            stream_id: 7,
            point_of_ref: 10
        }
    );
}

#[tokio::test]
async fn sink_refuses_bad_peers_and_keeps_serving() {
    let (mut sink, port) = sink_server("secret", 2).await;
    // Wrong cookie.
    let mut bad = Framed::new(
        TcpStream::connect(("127.0.0.1", port)).await.unwrap(),
        ProtocolCodec::default(),
    );
    bad.send(Frame::Hello(hello("nope"))).await.unwrap();
    match next(&mut bad).await {
        Frame::Error { message } => assert!(message.contains("cookie"), "{message}"),
        other => panic!("expected ERROR, got {other:?}"),
    }
    // MESSAGE before NOTIFY.
    let mut bad = Framed::new(
        TcpStream::connect(("127.0.0.1", port)).await.unwrap(),
        ProtocolCodec::default(),
    );
    bad.send(Frame::Hello(hello("secret"))).await.unwrap();
    next(&mut bad).await;
    bad.send(message(1, 1, "x")).await.unwrap();
    match next(&mut bad).await {
        Frame::Error { message } => assert!(message.contains("NOTIFY"), "{message}"),
        other => panic!("expected ERROR, got {other:?}"),
    }
    // Credits overspent (2 granted, NOTIFY's comes back, 3 messages sent).
    let mut bad = Framed::new(
        TcpStream::connect(("127.0.0.1", port)).await.unwrap(),
        ProtocolCodec::default(),
    );
    bad.send(Frame::Hello(hello("secret"))).await.unwrap();
    next(&mut bad).await;
    bad.send(Frame::Notify {
        stream_id: 1,
        stream_name: "s".into(),
        point_of_ref: 0,
    })
    .await
    .unwrap();
    for id in 1..=3 {
        bad.send(message(1, id, "x")).await.unwrap();
    }
    let mut saw_error = false;
    for _ in 0..4 {
        match tokio::time::timeout(Duration::from_secs(5), bad.next()).await {
            Ok(Some(Ok(Frame::Error { message }))) => {
                assert!(message.contains("credits"), "{message}");
                saw_error = true;
                break;
            }
            Ok(Some(Ok(_))) => continue,
            _ => break,
        }
    }
    assert!(saw_error, "overspending credits must be refused with ERROR");
    // Garbage (oversize length).
    let mut raw = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut raw, &[0xff, 0xff, 0xff, 0xff, 0])
        .await
        .unwrap();
    let mut rest = BytesMut::new();
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_buf(&mut raw, &mut rest),
    )
    .await;
    assert!(String::from_utf8_lossy(&rest).contains("exceeds the maximum"));
    // A good engine is still served.
    let mut good = Framed::new(
        TcpStream::connect(("127.0.0.1", port)).await.unwrap(),
        ProtocolCodec::default(),
    );
    good.send(Frame::Hello(hello("secret"))).await.unwrap();
    assert_eq!(next(&mut good).await, Frame::Ok { initial_credits: 2 });
    good.send(Frame::Notify {
        stream_id: 9,
        stream_name: "s".into(),
        point_of_ref: 0,
    })
    .await
    .unwrap();
    good.send(message(9, 1, "fine")).await.unwrap();
    let mut found = false;
    while let Ok(Some(batch)) =
        tokio::time::timeout(Duration::from_secs(5), sink.read_batch(10)).await
    {
        if batch
            .iter()
            .any(|m| m.stream_id == 9 && m.payload == "fine")
        {
            found = true;
            break;
        }
    }
    assert!(found);
}

#[tokio::test]
async fn records_the_engine_already_processed_are_not_sent_but_their_tokens_are_released() {
    let (listener, endpoint) = engine_listener().await;
    let client = tokio::spawn(async move {
        let mut source = source_for(endpoint);
        let s = source.open("resumed", Some(3)).await.unwrap();
        assert_eq!(s.resume, Some(5), "the engine's point");
        send(&mut source, s.id, 1..=8, |_| b"x".to_vec()).await;
        assert_eq!(
            source.take_released(),
            vec![1, 2, 3, 4, 5],
            "processed before: released at once, in order"
        );
        source.drain(None, Duration::from_secs(10)).await.unwrap();
        source.take_released()
    });
    let (mut f, sid, hint) = accept_answering(&listener, 100, 5).await;
    assert_eq!(hint, 3, "the connector's hint");
    for want in 6..=8 {
        assert_eq!(msg_id(&next(&mut f).await), want);
    }
    f.send(Frame::Ack {
        credits: 0,
        acks: vec![(sid, 8)],
    })
    .await
    .unwrap();
    assert_eq!(client.await.unwrap(), vec![6, 7, 8]);
}

#[tokio::test]
async fn a_replay_longer_than_the_engines_credits_is_sent_as_credits_come() {
    let (listener, endpoint) = engine_listener().await;
    let client = tokio::spawn(async move {
        let mut source = source_for(endpoint);
        let s = source.open("long", None).await.unwrap();
        send(&mut source, s.id, 1..=50, |_| b"x".to_vec()).await;
        follow(&mut source, Duration::from_secs(3)).await;
        source.drain(None, Duration::from_secs(10)).await.unwrap()
    });
    let (mut f, _, _) = accept_fresh(&listener).await;
    for want in 1..=50u64 {
        assert_eq!(msg_id(&next(&mut f).await), want);
    }
    drop(f); // nothing acknowledged
             // The new engine grants 1 credit for NOTIFY and 10 for messages.
    let (mut f, sid, _) = accept_answering(&listener, 11, NOTHING_PROCESSED).await;
    for want in 1..=10u64 {
        assert_eq!(
            msg_id(&next(&mut f).await),
            want,
            "the first 10 arrive without more credits"
        );
    }
    f.send(Frame::Ack {
        credits: 40,
        acks: vec![(sid, 10)],
    })
    .await
    .unwrap();
    for want in 11..=50u64 {
        assert_eq!(msg_id(&next(&mut f).await), want);
    }
    f.send(Frame::Ack {
        credits: 0,
        acks: vec![(sid, 50)],
    })
    .await
    .unwrap();
    assert_eq!(client.await.unwrap(), 0);
}

#[tokio::test]
async fn source_holds_at_most_in_flight_bytes_unacknowledged() {
    // Key "k" and a 10-byte payload: 42-byte frames; a bound of ten frames.
    let frame = framing::message_frame_len(1, 10);
    let (listener, endpoint) = engine_listener().await;
    let client = tokio::spawn(async move {
        let mut source = source_for(endpoint);
        source.set_in_flight_bytes(10 * frame as u64);
        let s = source.open("bounded", None).await.unwrap();
        send(&mut source, s.id, 1..=100, |id| {
            format!("{id:010}").into_bytes()
        })
        .await;
        assert!(source.in_flight_bytes() <= 10 * frame);
        assert_eq!(
            source.drain(None, Duration::from_secs(20)).await.unwrap(),
            0
        );
        assert_eq!(source.take_released(), (1..=100).collect::<Vec<u64>>());
    });
    let (sock, _) = listener.accept().await.unwrap();
    let mut f = Framed::new(sock, ProtocolCodec::default());
    assert!(matches!(next(&mut f).await, Frame::Hello(_)));
    // Credits for everything: only the byte bound holds the source back.
    f.send(Frame::Ok {
        initial_credits: 1000,
    })
    .await
    .unwrap();
    let sid = match next(&mut f).await {
        Frame::Notify { stream_id, .. } => stream_id,
        other => panic!("expected NOTIFY, got {other:?}"),
    };
    f.send(Frame::NotifyAck {
        success: true,
        stream_id: sid,
        point_of_ref: NOTHING_PROCESSED,
    })
    .await
    .unwrap();
    let mut last = 0u64;
    while last < 100 {
        // Everything the source sends before the next acknowledgement.
        let mut window = 0;
        while let Ok(Some(frame)) = tokio::time::timeout(Duration::from_millis(300), f.next()).await
        {
            let id = msg_id(&frame.unwrap());
            assert_eq!(id, last + 1, "in order, nothing skipped");
            last = id;
            window += 1;
        }
        assert!(
            (1..=10).contains(&window),
            "{window} messages unacknowledged at once (bound: 10 frames)"
        );
        f.send(Frame::Ack {
            credits: 0,
            acks: vec![(sid, last)],
        })
        .await
        .unwrap();
    }
    client.await.unwrap();
}
