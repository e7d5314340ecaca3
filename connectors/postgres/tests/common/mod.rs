//! Helpers shared by the postgres connector tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use testkit::{AppFile, Proc};

/// A blocking PostgreSQL client for test code.
pub struct Db {
    rt: tokio::runtime::Runtime,
    /// The client (use through `rt` or the helpers).
    pub client: tokio_postgres::Client,
}

impl Db {
    /// Connects to `url` (a libpq-style string).
    pub fn connect(url: &str) -> Db {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let client = rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
            tokio::spawn(async move {
                let _ = conn.await;
            });
            client
        });
        Db { rt, client }
    }

    /// Runs one or more statements.
    pub fn exec(&self, sql: &str) {
        self.rt
            .block_on(self.client.batch_execute(sql))
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }

    /// Runs statements, returning the error instead of panicking.
    pub fn try_exec(&self, sql: &str) -> Result<(), tokio_postgres::Error> {
        self.rt.block_on(self.client.batch_execute(sql))
    }

    /// The first column of the first row, as i64.
    pub fn i64(&self, sql: &str) -> i64 {
        self.rt
            .block_on(self.client.query_one(sql, &[]))
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
            .get(0)
    }

    /// Like `i64`, but None on any error (e.g. while the server restarts) or for NULL.
    pub fn try_i64(&self, sql: &str) -> Option<i64> {
        self.rt
            .block_on(self.client.query_one(sql, &[]))
            .ok()
            .and_then(|r| r.try_get::<_, Option<i64>>(0).ok().flatten())
    }

    /// The first column of every row, as bytes (bytea).
    pub fn bytes(&self, sql: &str) -> Vec<Vec<u8>> {
        self.rt
            .block_on(self.client.query(sql, &[]))
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
            .iter()
            .map(|r| r.get::<_, Vec<u8>>(0))
            .collect()
    }

    /// All rows of a query whose columns are text.
    pub fn texts(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        self.rt
            .block_on(self.client.query(sql, &[]))
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
            .iter()
            .map(|r| {
                (0..r.len())
                    .map(|i| r.get::<_, Option<String>>(i))
                    .collect()
            })
            .collect()
    }
}

/// The connector's test service URL (fails loudly when PostgreSQL is not running).
pub fn url() -> String {
    testkit::pg_url()
}

/// A unique, lower-case table name.
pub fn table(prefix: &str) -> String {
    testkit::unique(prefix).to_lowercase()
}

/// Drops the tables when dropped (also when a test fails).
pub struct DropTables {
    pub url: String,
    pub tables: Vec<String>,
}

impl Drop for DropTables {
    fn drop(&mut self) {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        let sql = format!("DROP TABLE IF EXISTS {} CASCADE", self.tables.join(", "));
        rt.block_on(async {
            if let Ok((c, conn)) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls).await {
                let h = tokio::spawn(conn);
                let _ = c.batch_execute(&sql).await;
                drop(c);
                let _ = h.await;
            }
        });
    }
}

/// A table of its own for one test: created at once, dropped when this goes out of scope.
pub struct TestTable {
    /// The table's (unique, lower-case) name.
    pub name: String,
    /// A connection to the test server.
    pub db: Db,
    _drop: DropTables,
}

/// Creates table `<prefix>_<unique>` with `columns` (SQL, e.g. `id bigserial PRIMARY KEY`).
pub fn test_table(prefix: &str, columns: &str) -> TestTable {
    let url = url();
    let name = table(prefix);
    let drop = DropTables {
        url: url.clone(),
        tables: vec![name.clone()],
    };
    let db = Db::connect(&url);
    db.exec(&format!("CREATE TABLE {name} ({columns})"));
    TestTable {
        name,
        db,
        _drop: drop,
    }
}

/// Ports and the application file for source -> engine -> sink.
pub struct Pipeline {
    pub dir: tempfile::TempDir,
    pub app: PathBuf,
    pub src_port: u16,
    pub dst_port: u16,
}

impl Pipeline {
    /// An application `pg` with source connector `src` and sink connector `dst`.
    pub fn new() -> Pipeline {
        let dir = tempfile::tempdir().expect("tempdir");
        let (src_port, dst_port) = (testkit::free_port(), testkit::free_port());
        let app = AppFile::new("pg")
            .source("src", src_port, "max_credits = 2000\nrefill_credits = 1000")
            // Small enough that the sink runs out of credits under the 100,000-row backlog:
            // the credit flow between engine and sink is exercised too.
            .sink("dst", dst_port, "max_credits = 5000")
            .pipeline("src", &["dst"])
            .write(dir.path());
        Pipeline {
            dir,
            app,
            src_port,
            dst_port,
        }
    }

    /// Starts the engine (checkpoints in `dir/resilience`).
    pub fn engine(&self, name: &str) -> Proc {
        let res = self.dir.path().join("resilience");
        testkit::start_engine(
            self.dir.path(),
            name,
            &self.app,
            &["--resilience-dir", &res.display().to_string()],
            &[self.src_port],
        )
    }

    /// Starts postgres_source as `src` with `--src-NAME VALUE` parameters.
    pub fn source(&self, params: &[(&str, &str)]) -> Proc {
        testkit::start_connector(
            self.dir.path(),
            "postgres_source",
            &self.app,
            "src",
            &args("src", params),
        )
    }

    /// Starts postgres_sink as `dst`, waiting until it listens.
    pub fn sink(&self, params: &[(&str, &str)], extra: &[&str]) -> Proc {
        let mut a = args("dst", params);
        a.extend(extra.iter().map(|s| s.to_string()));
        let mut p =
            testkit::start_connector(self.dir.path(), "postgres_sink", &self.app, "dst", &a);
        if !testkit::wait_for_port(self.dst_port, Duration::from_secs(20)) {
            let e = p.stderr();
            p.kill9();
            panic!("postgres_sink did not listen: {e}");
        }
        p
    }
}

/// `--CONNECTOR-NAME VALUE` arguments.
pub fn args(connector: &str, params: &[(&str, &str)]) -> Vec<String> {
    params
        .iter()
        .flat_map(|(k, v)| [format!("--{connector}-{k}"), v.to_string()])
        .collect()
}

/// Waits until `f` holds, printing the processes' stderr when it does not.
pub fn wait_or_dump(timeout: Duration, what: &str, procs: &[&Proc], mut f: impl FnMut() -> bool) {
    if !testkit::wait_until(timeout, &mut f) {
        let logs: Vec<String> = procs
            .iter()
            .map(|p| format!("--- {} ---\n{}", p.name, tail(&p.stderr(), 4000)))
            .collect();
        panic!("timed out waiting for {what}\n{}", logs.join("\n"));
    }
}

fn tail(s: &str, n: usize) -> &str {
    let mut start = s.len().saturating_sub(n);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// A throwaway PostgreSQL cluster (initdb as user postgres in a temp dir, own port),
/// stopped when dropped. For restart tests: never touch the shared server.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub port: u16,
    data: PathBuf,
}

fn su_postgres(cmd: &str) -> std::process::Output {
    Command::new("su")
        .args(["postgres", "-s", "/bin/sh", "-c", cmd])
        .output()
        .expect("run su postgres")
}

fn pg_bin(name: &str) -> String {
    let found = Command::new("sh")
        .args([
            "-c",
            &format!("command -v {name} || ls /usr/lib/postgresql/*/bin/{name} | tail -1"),
        ])
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default();
    assert!(
        !found.is_empty(),
        "{name} not found: install PostgreSQL (scripts/services.sh does)"
    );
    found
}

impl Cluster {
    /// initdb + start on a free port.
    pub fn start() -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("pgcluster")
            .tempdir()
            .expect("tempdir");
        let data = dir.path().join("data");
        let chown = Command::new("chown")
            .args(["-R", "postgres", &dir.path().display().to_string()])
            .status()
            .expect("chown");
        assert!(chown.success(), "chown postgres {}", dir.path().display());
        let out = su_postgres(&format!(
            "{} -D {} --auth=trust -U postgres --no-sync",
            pg_bin("initdb"),
            data.display()
        ));
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let c = Cluster {
            port: testkit::free_port(),
            dir,
            data,
        };
        c.pg_ctl("start");
        c
    }

    fn pg_ctl(&self, what: &str) {
        let out = su_postgres(&format!(
            "{} -D {} -l {}/log -w -m fast -o \"-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off\" {what}",
            pg_bin("pg_ctl"),
            self.data.display(),
            self.dir.path().display(),
            self.port,
            self.dir.path().display()
        ));
        assert!(
            out.status.success(),
            "pg_ctl {what} failed: {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Connection string of the cluster's `postgres` database.
    pub fn url(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }

    /// Stops the server (connections are terminated).
    pub fn stop(&self) {
        self.pg_ctl("stop");
    }

    /// Starts it again.
    pub fn start_again(&self) {
        self.pg_ctl("start");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = su_postgres(&format!(
            "{} -D {} -m immediate stop",
            pg_bin("pg_ctl"),
            self.data.display()
        ));
    }
}

/// The path of a dead-letter index file.
pub fn dead_letter_index(dir: &Path, connector: &str) -> PathBuf {
    dir.join(format!("{connector}.jsonl"))
}
