//! Tests of the I/O-free session helpers.

use framing::{check_hello, stream_id_for, Credits, Hello, StreamTable};

fn hello(version: &str, cookie: &str) -> Hello {
    Hello {
        version: version.into(),
        cookie: cookie.into(),
        program_name: "p".into(),
        instance_name: "i".into(),
    }
}

#[test]
fn hello_checks_version_and_cookie() {
    assert!(check_hello(&hello("0.0.1", "s3cret"), "s3cret").is_ok());
    let e = check_hello(&hello("0.0.2", ""), "").unwrap_err();
    assert!(e.contains("expected \"0.0.1\""), "{e}");
    let e = check_hello(&hello("0.0.1", "nope"), "s3cret").unwrap_err();
    assert!(e.contains("wrong cookie"), "{e}");
}

#[test]
fn receiver_credits_refill_at_the_mark() {
    let mut c = Credits::receiver(10, 4);
    for _ in 0..5 {
        assert!(c.spend());
    }
    assert_eq!(c.refill(), None);
    assert!(c.spend());
    assert_eq!(c.refill(), Some(6));
    for _ in 0..10 {
        assert!(c.spend());
    }
    assert!(!c.spend(), "overspending must be detected");
}

#[test]
fn sender_credits_block_at_zero() {
    let mut c = Credits::sender(1);
    assert!(c.spend());
    assert!(!c.spend());
    c.grant(2);
    assert!(c.spend());
}

#[test]
fn stream_table_dedups_and_requires_notify() {
    let mut t = StreamTable::default();
    assert!(t.accept(1, 1).is_err());
    t.open(1, "a".into(), Some(104));
    assert_eq!(t.accept(1, 104), Ok(false));
    assert_eq!(t.accept(1, 208), Ok(true));
    assert_eq!(t.accept(1, 208), Ok(false));
    assert_eq!(t.accept(1, 312), Ok(true));
    assert_eq!(t.close(1).unwrap().last_seen, Some(312));
    assert!(t.accept(1, 400).is_err());
}

#[test]
fn stream_ids_are_stable() {
    assert_eq!(stream_id_for("topic/0"), stream_id_for("topic/0"));
    assert_ne!(stream_id_for("topic/0"), stream_id_for("topic/1"));
    assert_eq!(stream_id_for(""), 0xcbf2_9ce4_8422_2325);
}
