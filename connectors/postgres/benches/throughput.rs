//! Throughput of postgres_sink and postgres_source beside `psql \copy` of the same rows,
//! in one run against the server from `PG_URL` (default 127.0.0.1:5432, db test).
//!
//! ```text
//! CARGO_TARGET_DIR=target-postgres cargo build --release -p engine -p postgres-connectors --bins
//! CARGO_TARGET_DIR=target-postgres cargo bench -p postgres-connectors --bench throughput
//! ```
//! `PG_BENCH_ROWS` (default 100000) sets the number of rows.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testkit::{AppFile, Proc};

struct Db {
    rt: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
}

impl Db {
    fn connect(url: &str) -> Db {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let client = rt.block_on(async {
            let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .expect("connect");
            tokio::spawn(conn);
            c
        });
        Db { rt, client }
    }
    fn exec(&self, sql: &str) {
        self.rt
            .block_on(self.client.batch_execute(sql))
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    fn count(&self, table: &str) -> i64 {
        self.rt
            .block_on(
                self.client
                    .query_one(&format!("SELECT count(*) FROM {table}"), &[]),
            )
            .map(|r| r.get(0))
            .unwrap_or(-1)
    }
}

struct Result {
    what: String,
    secs: f64,
    rows: usize,
    bytes: usize,
}

impl Result {
    fn line(&self, copy_secs: f64) -> String {
        format!(
            "| {} | {:.2} | {:.0} | {:.1} | {:.0}% |",
            self.what,
            self.secs,
            self.rows as f64 / self.secs,
            self.bytes as f64 / self.secs / 1e6,
            100.0 * copy_secs / self.secs
        )
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let url = testkit::pg_url();
    let rows: usize = std::env::var("PG_BENCH_ROWS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::connect(&url);
    let tag = testkit::unique("pgbench").to_lowercase();
    let tables: Vec<String> = ["copy", "ins", "ups", "src", "pipe"]
        .iter()
        .map(|t| format!("{tag}_{t}"))
        .collect();
    let (t_copy, t_ins, t_ups, t_src, t_pipe) =
        (&tables[0], &tables[1], &tables[2], &tables[3], &tables[4]);
    for t in [t_copy, t_ins, t_ups, t_pipe] {
        db.exec(&format!(
            "CREATE TABLE {t} (key text PRIMARY KEY, value jsonb NOT NULL)"
        ));
    }
    db.exec(&format!(
        "CREATE TABLE {t_src} (id bigserial PRIMARY KEY, key text NOT NULL, value jsonb NOT NULL)"
    ));

    // The rows: key TAB ~120-byte JSON object; the same file feeds psql and the sink.
    let kv = dir.path().join("rows.kv");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&kv).expect("create"));
    let mut bytes = 0;
    for i in 0..rows {
        let v = format!(
            "{{\"id\": {i}, \"user\": \"user-{}\", \"amount\": {}.{:02}, \"note\": \"{}\"}}",
            i % 977,
            i % 5000,
            i % 100,
            "x".repeat(40 + i % 30)
        );
        bytes += v.len();
        writeln!(f, "k{i}\t{v}").expect("write");
    }
    f.flush().expect("flush");
    drop(f);
    println!("{rows} rows, {:.1} MB of values", bytes as f64 / 1e6);

    let rounds: usize = std::env::var("PG_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let mut times: Vec<[f64; 6]> = Vec::new();
    for round in 0..rounds {
        for t in [t_copy, t_ins, t_ups, t_pipe] {
            db.exec(&format!("TRUNCATE {t}"));
        }
        // 1. psql \copy (the baseline).
        let t0 = Instant::now();
        let st = Command::new("psql")
            .args([
                &url,
                "-qc",
                &format!("\\copy {t_copy} (key, value) FROM '{}'", kv.display()),
            ])
            .status()
            .expect("psql");
        assert!(st.success());
        let copy = t0.elapsed().as_secs_f64();
        assert_eq!(db.count(t_copy), rows as i64);
        // 2./3. postgres_sink from stdin, insert and upsert modes.
        let ins = sink_run(&url, &kv, &db, t_ins, "insert", rows);
        let ups = sink_run(&url, &kv, &db, t_ups, "upsert", rows);
        // The same rows again: every key exists, every batch takes the ON CONFLICT path.
        let upd = sink_run(&url, &kv, &db, t_ups, "upsert", rows);
        if round == 0 {
            db.exec(&format!(
                "INSERT INTO {t_src} (key, value) SELECT key, value FROM {t_copy} ORDER BY substr(key, 2)::int"
            ));
        }
        // 4. postgres_source to stdout: time until every row is out.
        let source = source_run(&url, dir.path(), t_src, rows);
        // 5. source -> engine -> sink (upsert).
        let pipe = pipeline_run(&url, dir.path(), &db, t_src, t_pipe, rows);
        println!(
            "round {round}: copy {copy:.2}s, sink insert {ins:.2}s, sink upsert {ups:.2}s, upsert of existing keys {upd:.2}s, source {source:.2}s, pipeline {pipe:.2}s"
        );
        times.push([copy, ins, ups, upd, source, pipe]);
    }
    let median = |i: usize| {
        let mut v: Vec<f64> = times.iter().map(|t| t[i]).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let names = [
        "psql `\\copy` (baseline)",
        "postgres_sink --from stdin, insert (COPY)",
        "postgres_sink --from stdin, upsert, new keys (COPY fast path)",
        "postgres_sink --from stdin, upsert, every key exists (INSERT ... ON CONFLICT DO UPDATE)",
        "postgres_source --to stdout",
        "postgres_source -> engine -> postgres_sink (upsert)",
    ];
    let results: Vec<Result> = (0..6)
        .map(|i| Result {
            what: names[i].to_string(),
            secs: median(i),
            rows,
            bytes,
        })
        .collect();
    let copy = &results[0];
    println!("\n| path | seconds | rows/s | MB/s (values) | vs psql \\copy |");
    println!("|---|---|---|---|---|");
    println!("(median of {rounds} rounds)");
    for r in &results {
        println!("{}", r.line(copy.secs));
    }
    db.exec(&format!("DROP TABLE {}", tables.join(", ")));
}

fn sink_run(url: &str, kv: &std::path::Path, db: &Db, table: &str, mode: &str, rows: usize) -> f64 {
    let t0 = Instant::now();
    let st = Command::new(testkit::bin("postgres_sink"))
        .args([
            "--connector",
            "dst",
            "--from",
            "stdin",
            "--format",
            "kv",
            "--stats-interval",
            "0",
        ])
        .args([
            "--dst-connection",
            url,
            "--dst-table",
            table,
            "--dst-mode",
            mode,
        ])
        .stdin(Stdio::from(std::fs::File::open(kv).expect("open")))
        .status()
        .expect("postgres_sink");
    assert!(st.success());
    let secs = t0.elapsed().as_secs_f64();
    assert_eq!(db.count(table), rows as i64);
    secs
}

fn source_run(url: &str, dir: &std::path::Path, table: &str, rows: usize) -> f64 {
    let t0 = Instant::now();
    let mut src = Proc::spawn_with(
        dir,
        "postgres_source",
        Command::new(testkit::bin("postgres_source"))
            .args([
                "--connector",
                "src",
                "--to",
                "stdout",
                "--format",
                "kv",
                "--stats-interval",
                "0",
            ])
            .args([
                "--src-connection",
                url,
                "--src-table",
                table,
                "--src-key_column",
                "key",
            ])
            .args(["--src-payload", "value", "--src-batch_size", "5000"]),
    );
    // Rows come out in id order: done when the last key is out.
    let last = format!("k{}\t", rows - 1);
    assert!(testkit::wait_until(Duration::from_secs(120), || {
        tail_contains(&src.stdout_path, last.as_bytes())
    }));
    let secs = t0.elapsed().as_secs_f64();
    src.kill9();
    secs
}

fn pipeline_run(
    url: &str,
    dir: &std::path::Path,
    db: &Db,
    src_table: &str,
    table: &str,
    rows: usize,
) -> f64 {
    let (sp, dp) = (testkit::free_port(), testkit::free_port());
    let app = AppFile::new("bench")
        .source("src", sp, "max_credits = 10000\nrefill_credits = 5000")
        // A window well above the sink's 5,000-message batches, so that batches are never
        // cut short by credits.
        .sink("dst", dp, "max_credits = 1000000")
        .pipeline("src", &["dst"])
        .write(dir);
    let own = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut sink = testkit::start_connector(
        dir,
        "postgres_sink",
        &app,
        "dst",
        &own(&["--dst-connection", url, "--dst-table", table]),
    );
    assert!(testkit::wait_for_port(dp, Duration::from_secs(20)));
    let mut engine = testkit::start_engine(dir, "engine", &app, &[], &[sp]);
    let t0 = Instant::now();
    let mut src = testkit::start_connector(
        dir,
        "postgres_source",
        &app,
        "src",
        &own(&[
            "--src-connection",
            url,
            "--src-table",
            src_table,
            "--src-key_column",
            "key",
            "--src-payload",
            "value",
            "--src-batch_size",
            "5000",
        ]),
    );
    let done = testkit::wait_until(Duration::from_secs(180), || db.count(table) >= rows as i64);
    let secs = t0.elapsed().as_secs_f64();
    if !done {
        eprintln!("{}\n{}\n{}", src.stderr(), engine.stderr(), sink.stderr());
        panic!("pipeline did not finish");
    }
    src.kill9();
    engine.kill9();
    sink.kill9();
    secs
}

fn tail_contains(path: &std::path::Path, needle: &[u8]) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if f.seek(SeekFrom::Start(len.saturating_sub(8192))).is_err() {
        return false;
    }
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    buf.windows(needle.len()).any(|w| w == needle)
}
