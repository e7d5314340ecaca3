//! postgres_sink on its own (`--from stdin`): bad rows, binary payloads, server restarts.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{args, Cluster, Db};
use testkit::Proc;

fn sink_command(url: &str, t: &str, format: &str, extra: &[(&str, &str)]) -> Command {
    let mut params = vec![("connection", url), ("table", t)];
    params.extend_from_slice(extra);
    let mut cmd = Command::new(testkit::bin("postgres_sink"));
    cmd.args([
        "--connector",
        "dst",
        "--from",
        "stdin",
        "--format",
        format,
        "--stats-interval",
        "0",
    ])
    .args(args("dst", &params));
    cmd
}

/// Runs the sink over `input` to completion; returns (success, stderr).
fn run_sink(dir: &Path, input: &Path, cmd: &mut Command) -> (bool, String) {
    cmd.stdin(Stdio::from(std::fs::File::open(input).expect("input")));
    let mut p = Proc::spawn_with(dir, "postgres_sink", cmd);
    let status = p.wait_timeout(Duration::from_secs(60));
    let err = p.stderr();
    (status.is_some_and(|s| s.success()), err)
}

#[test]
fn a_bad_jsonb_row_goes_to_the_dead_letter_dir_and_the_rest_flows() {
    let table = common::test_table("pgjson", "key text PRIMARY KEY, value jsonb NOT NULL");
    let (url, t, db) = (common::url(), &table.name, &table.db);
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.kv");
    let mut text = String::new();
    for i in 0..2000 {
        if i == 777 {
            text.push_str("bad-777\t{\"n\": 777, oops}\n");
        } else {
            text.push_str(&format!("k{i}\t{{\"n\": {i}, \"s\": \"x\\\\y\"}}\n"));
        }
    }
    std::fs::write(&input, text).expect("write input");
    let dl = dir.path().join("dead");
    let (ok, err) = run_sink(
        dir.path(),
        &input,
        sink_command(&url, t, "kv", &[("batch_size", "5000")])
            .args(["--dead-letter", &dl.display().to_string()]),
    );
    assert!(ok, "sink failed: {err}");
    assert_eq!(db.i64(&format!("SELECT count(*) FROM {t}")), 1999);
    assert_eq!(
        db.i64(&format!(
            "SELECT count(*) FROM {t} WHERE (value->>'n')::int8 = substr(key, 2)::int8"
        )),
        1999
    );
    let index =
        std::fs::read_to_string(common::dead_letter_index(&dl, "dst")).expect("dead-letter index");
    let entries: Vec<&str> = index.lines().collect();
    assert_eq!(entries.len(), 1, "{index}");
    assert!(entries[0].contains("\"key\":\"bad-777\""), "{index}");
    assert!(
        entries[0].contains("invalid input syntax for type json"),
        "the database's message is reported: {index}"
    );
    assert!(
        err.contains("bad-777"),
        "the refusal is logged with its key: {err}"
    );
    let frames = std::fs::read(dl.join("dst.frames")).expect("dead-letter frames");
    assert_eq!(&frames[4..], b"{\"n\": 777, oops}");

    // Without --dead-letter the sink stops on the bad row, naming it.
    db.exec(&format!("TRUNCATE {t}"));
    let (ok, err) = run_sink(dir.path(), &input, &mut sink_command(&url, t, "kv", &[]));
    assert!(!ok);
    assert!(
        err.contains("bad-777") && err.contains("--dead-letter"),
        "{err}"
    );
}

#[test]
fn binary_payloads_go_to_bytea_byte_for_byte_in_insert_mode() {
    let table = common::test_table("pgbytea", "n bigserial, key text, value bytea NOT NULL");
    let (url, t, db) = (common::url(), &table.name, &table.db);
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.frames");
    let mut data = Vec::new();
    let payloads: Vec<Vec<u8>> = (0..300u32)
        .map(|i| {
            (0..(i * 37 % 1000))
                .map(|j| ((i + j) % 256) as u8)
                .collect()
        })
        .collect();
    for p in &payloads {
        data.extend_from_slice(&(p.len() as u32).to_be_bytes());
        data.extend_from_slice(p);
    }
    std::fs::write(&input, data).expect("write input");
    let (ok, err) = run_sink(
        dir.path(),
        &input,
        &mut sink_command(&url, t, "frames", &[("mode", "insert")]),
    );
    assert!(ok, "sink failed: {err}");
    let got = db.bytes(&format!("SELECT value FROM {t} ORDER BY n"));
    assert_eq!(got, payloads);
}

#[test]
fn sink_reconnects_after_a_server_restart_and_writes_everything() {
    let cluster = Cluster::start();
    let url = cluster.url();
    Db::connect(&url).exec("CREATE TABLE out (key text PRIMARY KEY, value text NOT NULL)");
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b, go) = (
        dir.path().join("a.kv"),
        dir.path().join("b.kv"),
        dir.path().join("go"),
    );
    let part = |from: u32| -> String {
        (from..from + 100)
            .map(|i| format!("k{i}\tv{i}\n"))
            .collect()
    };
    std::fs::write(&a, part(0)).expect("write");
    std::fs::write(&b, part(100)).expect("write");
    // The second half is fed only after the server came back.
    let feed = format!(
        "cat {}; while [ ! -e {} ]; do sleep 0.05; done; cat {}",
        a.display(),
        go.display(),
        b.display()
    );
    let mut feeder = Command::new("sh")
        .args(["-c", &feed])
        .stdout(Stdio::piped())
        .spawn()
        .expect("feeder");
    let mut cmd = sink_command(&url, "out", "kv", &[("linger_ms", "0")]);
    cmd.stdin(Stdio::from(feeder.stdout.take().expect("feeder stdout")));
    let mut sink = Proc::spawn_with(dir.path(), "postgres_sink", &mut cmd);
    let db = Db::connect(&url);
    common::wait_or_dump(
        Duration::from_secs(20),
        "the first 100 rows",
        &[&sink],
        || db.try_i64("SELECT count(*) FROM out") == Some(100),
    );
    cluster.stop();
    std::thread::sleep(Duration::from_millis(500));
    cluster.start_again();
    std::fs::write(&go, b"").expect("go");
    let status = sink.wait_timeout(Duration::from_secs(30));
    let _ = feeder.kill();
    let _ = feeder.wait();
    let err = sink.stderr();
    assert!(
        status.is_some_and(|s| s.success()),
        "sink did not finish: {err}"
    );
    let db = Db::connect(&url);
    assert_eq!(db.i64("SELECT count(*) FROM out"), 200);
    assert_eq!(
        db.i64("SELECT count(*) FROM out WHERE value = 'v' || substr(key, 2)"),
        200
    );
    assert!(
        err.contains("reconnected to PostgreSQL"),
        "no reconnect logged: {err}"
    );
}

#[test]
fn upsert_updates_existing_keys_and_keeps_the_last_value_of_a_key_in_a_batch() {
    let table = common::test_table("pgups", "key bigint PRIMARY KEY, value text NOT NULL");
    let (url, t, db) = (common::url(), &table.name, &table.db);
    let dir = tempfile::tempdir().expect("tempdir");
    let first = dir.path().join("first.kv");
    let second = dir.path().join("second.kv");
    let lines = |from: u32, to: u32, tag: &str| -> String {
        (from..to).map(|i| format!("{i}\t{tag}{i}\n")).collect()
    };
    // Key 7 twice in one batch: the later value wins.
    std::fs::write(&first, lines(0, 100, "a") + "7\tlast\n").expect("write");
    // Half of these keys exist: the COPY fast path is declined, the upsert runs.
    std::fs::write(&second, lines(50, 150, "b")).expect("write");
    for input in [&first, &second] {
        let (ok, err) = run_sink(dir.path(), input, &mut sink_command(&url, t, "kv", &[]));
        assert!(ok, "sink failed: {err}");
    }
    assert_eq!(db.i64(&format!("SELECT count(*) FROM {t}")), 150);
    assert_eq!(
        db.i64(&format!(
            "SELECT count(*) FROM {t} WHERE value = CASE WHEN key < 50 THEN 'a' ELSE 'b' END || key"
        )),
        149
    );
    assert_eq!(
        db.texts(&format!("SELECT value FROM {t} WHERE key = 7")),
        vec![vec![Some("last".to_string())]]
    );
}
