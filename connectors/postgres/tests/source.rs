//! postgres_source on its own (`--to stdout`): id gaps, out-of-order commits, restarts.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{args, wait_or_dump, Cluster, Db};
use testkit::Proc;

fn start_source(dir: &Path, url: &str, t: &str, extra: &[(&str, &str)]) -> Proc {
    let mut params = vec![
        ("connection", url),
        ("table", t),
        ("key_column", "id"),
        ("payload", "body"),
        ("install_trigger", "true"),
        ("poll_ms", "200"),
    ];
    params.extend_from_slice(extra);
    let mut a = vec![
        "--connector".to_string(),
        "src".to_string(),
        "--to".to_string(),
        "stdout".to_string(),
        "--format".to_string(),
        "kv".to_string(),
        "--stats-interval".to_string(),
        "0".to_string(),
    ];
    a.extend(args("src", &params));
    Proc::spawn_with(
        dir,
        "postgres_source",
        Command::new(testkit::bin("postgres_source")).args(&a),
    )
}

/// Waits until the source has installed its NOTIFY trigger on `t`: from then on it takes
/// no lock on the table, so the test's own transactions cannot queue behind it.
fn wait_for_trigger(db: &Db, t: &str, source: &Proc) {
    let sql = format!(
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = '{t}'::regclass AND NOT tgisinternal"
    );
    wait_or_dump(
        Duration::from_secs(20),
        "the NOTIFY trigger",
        &[source],
        || db.i64(&sql) == 1,
    );
}

/// `id TAB body` lines written so far.
fn lines(p: &Proc) -> Vec<String> {
    String::from_utf8_lossy(&p.stdout())
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn a_row_committed_after_a_later_id_is_not_skipped() {
    let table = common::test_table("pggap", "id bigserial PRIMARY KEY, body text NOT NULL");
    let (url, t, setup) = (common::url(), &table.name, &table.db);
    let dir = tempfile::tempdir().expect("tempdir");
    let source = start_source(dir.path(), &url, t, &[]);
    wait_for_trigger(setup, t, &source);
    let (a, b) = (Db::connect(&url), Db::connect(&url));

    // A takes id 1 and stays open; B takes id 2 and commits first.
    a.exec(&format!("BEGIN; INSERT INTO {t} (body) VALUES ('first')"));
    b.exec(&format!("INSERT INTO {t} (body) VALUES ('second')"));
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        lines(&source).is_empty(),
        "id 2 was sent while id 1 could still commit: {:?}",
        lines(&source)
    );
    a.exec("COMMIT");
    wait_or_dump(Duration::from_secs(10), "ids 1 and 2", &[&source], || {
        lines(&source).len() >= 2
    });
    assert_eq!(lines(&source), vec!["1\tfirst", "2\tsecond"]);

    // A rolled-back id is a permanent gap: the source moves past it.
    a.exec(&format!(
        "BEGIN; INSERT INTO {t} (body) VALUES ('gone'); ROLLBACK"
    ));
    b.exec(&format!("INSERT INTO {t} (body) VALUES ('fourth')"));
    wait_or_dump(
        Duration::from_secs(10),
        "id 4 after the rolled-back 3",
        &[&source],
        || lines(&source).len() >= 3,
    );
    assert_eq!(lines(&source)[2], "4\tfourth");

    // A long writer holds id 5 while 6 and 7 commit, and an unrelated writer keeps
    // writing the table meanwhile: nothing passes 5 until it commits.
    let c = Db::connect(&url);
    a.exec(&format!("BEGIN; INSERT INTO {t} (body) VALUES ('fifth')"));
    b.exec(&format!("INSERT INTO {t} (body) VALUES ('sixth')"));
    c.exec(&format!("BEGIN; UPDATE {t} SET body = body WHERE id = 1"));
    b.exec(&format!("INSERT INTO {t} (body) VALUES ('seventh')"));
    std::thread::sleep(Duration::from_millis(1000));
    c.exec("COMMIT");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(lines(&source).len(), 3, "{:?}", lines(&source));
    a.exec("COMMIT");
    wait_or_dump(Duration::from_secs(10), "ids 5, 6, 7", &[&source], || {
        lines(&source).len() >= 6
    });
    assert_eq!(
        lines(&source),
        vec![
            "1\tfirst",
            "2\tsecond",
            "4\tfourth",
            "5\tfifth",
            "6\tsixth",
            "7\tseventh"
        ]
    );
}

#[test]
fn a_source_starting_while_a_writer_holds_the_table_does_not_block_other_writers() {
    let table = common::test_table("pgbusy", "id bigserial PRIMARY KEY, body text NOT NULL");
    let (url, t, setup) = (common::url(), &table.name, &table.db);
    // A long transaction holds the table while the source starts: installing the trigger
    // needs a lock that conflicts with it, and must not make every other writer wait.
    let a = Db::connect(&url);
    a.exec(&format!("BEGIN; INSERT INTO {t} (body) VALUES ('held')"));
    let dir = tempfile::tempdir().expect("tempdir");
    let source = start_source(dir.path(), &url, t, &[]);
    wait_or_dump(
        Duration::from_secs(20),
        "the source giving way to the open transaction",
        &[&source],
        || source.stderr().contains("is not installed yet"),
    );
    let b = Db::connect(&url);
    b.exec("SET statement_timeout = '5s'");
    b.exec(&format!("INSERT INTO {t} (body) VALUES ('other')"));
    a.exec("COMMIT");
    // Without the trigger the source still reads, by polling.
    wait_or_dump(Duration::from_secs(10), "both rows", &[&source], || {
        lines(&source).len() >= 2
    });
    assert_eq!(lines(&source), vec!["1\theld", "2\tother"]);
    // Once the table is free the trigger goes in on a later attempt.
    wait_for_trigger(setup, t, &source);
}

#[test]
fn concurrent_writers_committing_out_of_order_lose_nothing() {
    let table = common::test_table("pgconc", "id bigserial PRIMARY KEY, body text NOT NULL");
    let (url, t, setup) = (common::url(), &table.name, &table.db);
    let dir = tempfile::tempdir().expect("tempdir");
    let source = start_source(dir.path(), &url, t, &[("batch_size", "50")]);
    wait_for_trigger(setup, t, &source);
    // Four writers; each transaction inserts, sleeps a little, then commits or (1 in 10)
    // rolls back, so commits interleave with ids out of order.
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (url, t) = (url.clone(), t.clone());
            std::thread::spawn(move || {
                let db = Db::connect(&url);
                for i in 0..150 {
                    let end = if (i + w) % 10 == 3 {
                        "ROLLBACK"
                    } else {
                        "COMMIT"
                    };
                    db.exec(&format!(
                        "BEGIN; INSERT INTO {t} (body) VALUES ('w{w}-{i}')"
                    ));
                    std::thread::sleep(Duration::from_millis((i * 7 + w * 3) % 5));
                    db.exec(end);
                }
            })
        })
        .collect();
    for w in writers {
        w.join().expect("writer");
    }
    let db = Db::connect(&url);
    let expected: Vec<String> = db
        .texts(&format!(
            "SELECT id::text || E'\\t' || body FROM {t} ORDER BY id"
        ))
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
        .collect();
    assert_eq!(expected.len(), 4 * 135);
    wait_or_dump(
        Duration::from_secs(20),
        "every committed row",
        &[&source],
        || lines(&source).len() >= expected.len(),
    );
    assert_eq!(lines(&source), expected);
}

#[test]
fn source_reconnects_after_a_server_restart_and_reads_what_was_inserted_meanwhile() {
    let cluster = Cluster::start();
    let url = cluster.url();
    let db = Db::connect(&url);
    db.exec("CREATE TABLE events (id bigserial PRIMARY KEY, body text NOT NULL)");
    db.exec("INSERT INTO events (body) SELECT 'before-' || g FROM generate_series(1, 100) g");
    let dir = tempfile::tempdir().expect("tempdir");
    let source = start_source(dir.path(), &url, "events", &[]);
    wait_or_dump(Duration::from_secs(20), "100 rows", &[&source], || {
        lines(&source).len() >= 100
    });
    cluster.stop();
    std::thread::sleep(Duration::from_millis(500));
    cluster.start_again();
    let db = Db::connect(&url);
    db.exec("INSERT INTO events (body) SELECT 'after-' || g FROM generate_series(1, 100) g");
    wait_or_dump(Duration::from_secs(30), "200 rows", &[&source], || {
        lines(&source).len() >= 200
    });
    let got = lines(&source);
    assert_eq!(got.len(), 200);
    assert_eq!(got[199], "200\tafter-100");
    let err = source.stderr();
    assert!(
        err.contains("reconnected to PostgreSQL"),
        "no reconnect logged: {err}"
    );
}

#[test]
fn an_integer_id_column_is_read() {
    let table = common::test_table("pgint4", "id serial PRIMARY KEY, body text NOT NULL");
    let (url, t, db) = (common::url(), &table.name, &table.db);
    db.exec(&format!("INSERT INTO {t} (body) VALUES ('one'), ('two')"));
    let dir = tempfile::tempdir().expect("tempdir");
    let source = start_source(dir.path(), &url, t, &[]);
    wait_or_dump(Duration::from_secs(10), "both rows", &[&source], || {
        lines(&source).len() >= 2
    });
    assert_eq!(lines(&source), vec!["1\tone", "2\ttwo"]);
    assert!(
        !source.stderr().contains("reconnecting"),
        "{}",
        source.stderr()
    );
}

/// Runs postgres_source to its end; returns (exit code, stderr).
fn run_to_exit(dir: &Path, url: &str, t: &str, extra: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut p = start_source(dir, url, t, extra);
    let status = p.wait_timeout(Duration::from_secs(20));
    (status.and_then(|s| s.code()), p.stderr())
}

#[test]
fn rows_with_ids_below_1_and_overlong_channels_are_refused_at_start() {
    let table = common::test_table("pgneg", "id bigint PRIMARY KEY, body text NOT NULL");
    let (url, t, db) = (common::url(), &table.name, &table.db);
    db.exec(&format!("INSERT INTO {t} VALUES (0, 'zero'), (1, 'one')"));
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, err) = run_to_exit(dir.path(), &url, t, &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("1 row(s)") && err.contains("<= 0"), "{err}");

    db.exec(&format!("DELETE FROM {t} WHERE id = 0"));
    let long = "c".repeat(64);
    let (code, err) = run_to_exit(dir.path(), &url, t, &[("channel", &long)]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("1 to 63 bytes"), "{err}");
    // Nothing was installed that would break the table's writers.
    db.exec(&format!("INSERT INTO {t} VALUES (2, 'two')"));
}

#[test]
fn a_cached_sequence_behind_the_id_default_is_reported() {
    let url = common::url();
    let seq = common::table("pgseq");
    let db = Db::connect(&url);
    db.exec(&format!("CREATE SEQUENCE {seq} CACHE 20"));
    let table = common::test_table(
        "pgcache",
        &format!("id bigint PRIMARY KEY DEFAULT nextval('{seq}'), body text NOT NULL"),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(testkit::bin("postgres_source"))
        .current_dir(dir.path())
        .args(["--connector", "src", "--to", "stdout", "--check"])
        .args(args(
            "src",
            &[
                ("connection", url.as_str()),
                ("table", table.name.as_str()),
                ("payload", "body"),
            ],
        ))
        .output()
        .expect("run postgres_source --check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("has CACHE 20"), "{stdout}");
    drop(table);
    db.exec(&format!("DROP SEQUENCE {seq}"));
}
