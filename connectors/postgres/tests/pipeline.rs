//! postgres_source -> engine -> postgres_sink against the real server.

mod common;

use std::time::Duration;

use common::{table, wait_or_dump, Db, DropTables, Pipeline};

fn count(db: &Db, t: &str) -> i64 {
    db.try_i64(&format!("SELECT count(*) FROM {t}"))
        .unwrap_or(-1)
}

/// Rows of `src` whose body is not the value of the row keyed by its `k` in `dst`.
fn mismatched(db: &Db, src: &str, dst: &str) -> i64 {
    db.i64(&format!(
        "SELECT count(*) FROM {src} s LEFT JOIN {dst} d ON d.key = s.k WHERE d.value IS DISTINCT FROM s.body"
    ))
}

fn insert_rows(db: &Db, src: &str, from: i64, to: i64) {
    // Mixed lengths (0..~230 bytes), tabs, newlines, backslashes, non-ASCII.
    db.exec(&format!(
        "INSERT INTO {src} (k, body) SELECT 'key-' || g, md5(g::text) || repeat(chr(65 + g % 26), g % 200) || E'\\t\\n\\\\ é€' \
         FROM generate_series({from}, {to}) g"
    ));
}

#[test]
fn hundred_thousand_rows_and_a_100kb_row_arrive_with_values_preserved() {
    let url = common::url();
    let (src, dst) = (table("pgsrc"), table("pgdst"));
    let _drop = DropTables {
        url: url.clone(),
        tables: vec![src.clone(), dst.clone()],
    };
    let db = Db::connect(&url);
    db.exec(&format!(
        "CREATE TABLE {src} (id bigserial PRIMARY KEY, k text NOT NULL, body text NOT NULL);
         CREATE TABLE {dst} (key text PRIMARY KEY, value text NOT NULL);"
    ));
    insert_rows(&db, &src, 1, 100_000);
    // One 102,400-byte payload, far above NOTIFY's 8000-byte limit.
    db.exec(&format!(
        "INSERT INTO {src} (k, body) SELECT 'big', string_agg(md5(g::text), '') FROM generate_series(1, 3200) g"
    ));

    let p = Pipeline::new();
    let sink = p.sink(&[("connection", &url), ("table", &dst)], &[]);
    let engine = p.engine("engine");
    let source = p.source(&[
        ("connection", &url),
        ("table", &src),
        ("key_column", "k"),
        ("payload", "body"),
        ("install_trigger", "true"),
    ]);
    let started = std::time::Instant::now();
    wait_or_dump(
        Duration::from_secs(100),
        "100,001 rows in the sink table",
        &[&source, &engine, &sink],
        || count(&db, &dst) == 100_001,
    );
    eprintln!(
        "100,001 rows through source -> engine -> sink in {:?}",
        started.elapsed()
    );
    assert_eq!(mismatched(&db, &src, &dst), 0, "values differ");
    assert_eq!(
        db.i64(&format!(
            "SELECT octet_length(value)::int8 FROM {dst} WHERE key = 'big'"
        )),
        102_400
    );
    assert_eq!(
        db.i64(&format!("SELECT sum(octet_length(body))::int8 FROM {src}")),
        db.i64(&format!("SELECT sum(octet_length(value))::int8 FROM {dst}")),
        "bytes in == bytes out"
    );

    // Rows inserted while everything runs arrive too (the NOTIFY wake-up path).
    insert_rows(&db, &src, 100_001, 100_010);
    wait_or_dump(
        Duration::from_secs(20),
        "the 10 rows inserted later",
        &[&source, &engine, &sink],
        || count(&db, &dst) == 100_011,
    );
    assert_eq!(mismatched(&db, &src, &dst), 0);
}

#[test]
fn kill_9_of_source_engine_and_sink_loses_no_row_and_upsert_keeps_each_key_once() {
    let url = common::url();
    let (src, dst, pos) = (table("pgsrc"), table("pgdst"), table("pgpos"));
    let _drop = DropTables {
        url: url.clone(),
        tables: vec![src.clone(), dst.clone(), pos.clone()],
    };
    let db = Db::connect(&url);
    db.exec(&format!(
        "CREATE TABLE {src} (id bigserial PRIMARY KEY, k text NOT NULL, body text NOT NULL);
         CREATE TABLE {dst} (key text PRIMARY KEY, value text NOT NULL);"
    ));
    insert_rows(&db, &src, 1, 30_000);
    // More rows arrive during the whole run, in small transactions.
    let writer = {
        let (url, src) = (url.clone(), src.clone());
        std::thread::spawn(move || {
            let db = Db::connect(&url);
            for i in 0..60 {
                let from = 30_001 + i * 500;
                insert_rows(&db, &src, from, from + 499);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let total = 60_000;

    let p = Pipeline::new();
    let sink_params: Vec<(&str, &str)> = vec![
        ("connection", &url),
        ("table", &dst),
        ("batch_size", "1000"),
    ];
    let source_params: Vec<(&str, &str)> = vec![
        ("connection", &url),
        ("table", &src),
        ("key_column", "k"),
        ("payload", "body"),
        ("install_trigger", "true"),
        ("batch_size", "500"),
        ("position_table", &pos),
    ];
    let mut sink = p.sink(&sink_params, &[]);
    let mut engine = p.engine("engine");
    let mut source = p.source(&source_params);

    let progress = |n: i64, what: &str, procs: &[&testkit::Proc]| {
        wait_or_dump(Duration::from_secs(60), what, procs, || {
            count(&db, &dst) >= n
        })
    };
    progress(
        8_000,
        "8,000 rows before killing the source",
        &[&source, &engine, &sink],
    );
    // Acknowledgements come after the engine's checkpoint: wait for the first stored one.
    wait_or_dump(
        Duration::from_secs(30),
        "a position stored after an acknowledgement",
        &[&source, &engine],
        || {
            db.try_i64(&format!("SELECT max(position) FROM {pos}"))
                .unwrap_or(0)
                > 0
        },
    );
    source.kill9();
    let mut source = p.source(&source_params);
    // The new source resumes after what was acknowledged (the engine's NOTIFY_ACK point or
    // the position table, whichever is higher), not from the start.
    wait_or_dump(
        Duration::from_secs(20),
        "the restarted source to resume",
        &[&source],
        || source.stderr().contains("reading "),
    );
    let resumed_at: u64 = source
        .stderr()
        .split("from id ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("resume line");
    assert!(
        resumed_at > 1,
        "the restarted source read from id {resumed_at}\n--- source ---\n{}\n--- engine ---\n{}",
        source.stderr(),
        engine.stderr()
    );
    progress(
        20_000,
        "20,000 rows before killing the engine",
        &[&source, &engine, &sink],
    );
    engine.kill9();
    let mut engine = p.engine("engine2");
    progress(
        35_000,
        "35,000 rows before killing the sink",
        &[&source, &engine, &sink],
    );
    sink.kill9();
    let sink = p.sink(&sink_params, &[]);

    writer.join().expect("writer thread");
    wait_or_dump(
        Duration::from_secs(90),
        "every source row in the sink table",
        &[&source, &engine, &sink],
        || count(&db, &dst) == total,
    );
    assert_eq!(count(&db, &src), total);
    assert_eq!(mismatched(&db, &src, &dst), 0, "values differ");
    assert_eq!(
        db.i64(&format!("SELECT count(DISTINCT key) FROM {dst}")),
        total,
        "each key exactly once"
    );
    // The acknowledged position reaches the position table.
    wait_or_dump(
        Duration::from_secs(20),
        "the position table to reach the last id",
        &[&source],
        || db.try_i64(&format!("SELECT max(position) FROM {pos}")) == Some(total),
    );
    let _ = source.terminate(Duration::from_secs(15));
    let _ = engine.terminate(Duration::from_secs(15));
}
