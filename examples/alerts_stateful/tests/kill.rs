//! Issue 3's "done means": 1,000,000 transactions for 1,000 users through a file-backed
//! source that replays from the acknowledged point; the engine is killed with SIGKILL at
//! three random moments and restarted each time. At the end every user's total equals the
//! sum of that user's transactions exactly, and every alert of a clean run was emitted.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alerts_stateful::{
    check_transaction_total, decode_transaction, feed, print_sink, TransactionTotal, STATE,
};
use application::Application;

const N: u64 = 1_000_000;
const USERS: u64 = 1_000;

struct Shared(Arc<Mutex<Vec<u8>>>);
impl Write for Shared {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn start_engine(app: &std::path::Path, res: &std::path::Path, log: &std::path::Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_alerts_stateful"))
        .arg("run")
        .arg("--application-module")
        .arg(app)
        .arg("--resilience-dir")
        .arg(res)
        .args(["--checkpoint-interval", "200ms", "--stats-interval", "0"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

#[test]
fn kill_9_three_times_nothing_lost_nothing_double_counted() {
    let dir = tempfile::tempdir().unwrap();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    println!("seed {seed}");
    let mut x = seed | 1;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    // the input file
    let tx_path = dir.path().join("transactions.txt");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tx_path).unwrap());
        for _ in 0..N {
            let r = rnd();
            writeln!(f, "user{},{}", r % USERS, ((r >> 24) % 2001) as i64 - 1000).unwrap();
        }
    }
    let lines: Vec<Vec<u8>> = std::io::BufReader::new(std::fs::File::open(&tx_path).unwrap())
        .lines()
        .map(|l| l.unwrap().into_bytes())
        .collect();
    assert_eq!(lines.len() as u64, N);
    // what a clean run computes
    let mut totals: HashMap<String, TransactionTotal> = HashMap::new();
    let mut alerts = HashSet::new();
    for l in &lines {
        let t = decode_transaction(l).unwrap();
        let s = totals.entry(t.user.to_string()).or_default();
        if let Some(a) = check_transaction_total(t, s) {
            alerts.insert(a.to_string());
        }
    }
    // the sink and the application file
    let src = dir.path().join("in.sock");
    let out_sock = dir.path().join("out.sock");
    let app = dir.path().join("app.toml");
    std::fs::write(
        &app,
        format!(
            "name = \"alerts\"\n[source_connectors.transactions]\npath = \"{}\"\nmax_credits = 4096\n[sink_connectors.alerts]\npath = \"{}\"\n",
            src.display(),
            out_sock.display()
        ),
    )
    .unwrap();
    let config = Application::load(&app).unwrap();
    let received = Arc::new(Mutex::new(Vec::new()));
    let sink_ep = config.connector("alerts").unwrap().1.endpoint().unwrap();
    let r2 = received.clone();
    std::thread::spawn(move || print_sink::run_to(&sink_ep, &mut Shared(r2)));
    let res = dir.path().join("resilience");
    let log = dir.path().join("engine.log");
    let mut engine = start_engine(&app, &res, &log);
    // the file-backed source, replaying from the acknowledged point after every restart
    let progress = Arc::new(feed::Progress::default());
    let p2 = progress.clone();
    let src_ep = config
        .connector("transactions")
        .unwrap()
        .1
        .endpoint()
        .unwrap();
    let t0 = Instant::now();
    let feeder = std::thread::spawn(move || {
        feed::feed(
            &src_ep,
            "",
            "transactions-file",
            N,
            &|i| lines[(i - 1) as usize].clone(),
            &p2,
            Duration::from_secs(60),
        )
    });
    // three kills at random points of the stream
    let mut kills = Vec::new();
    for k in 0..3u64 {
        let lo = N * k / 4 + N / 20;
        let threshold = lo + rnd() % (N / 4 - N / 20);
        while progress.sent.load(Ordering::SeqCst) < threshold && !feeder.is_finished() {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(rnd() % 100));
        let (sent, acked) = (
            progress.sent.load(Ordering::SeqCst),
            progress.acked.load(Ordering::SeqCst),
        );
        engine.kill().unwrap(); // SIGKILL
        engine.wait().unwrap();
        kills.push((sent, acked));
        engine = start_engine(&app, &res, &log);
    }
    let r = feeder.join().unwrap();
    let elapsed = t0.elapsed();
    engine.kill().unwrap();
    engine.wait().unwrap();
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(r.is_ok(), "feeder failed: {r:?}\nengine log:\n{log_text}");
    println!(
        "{N} transactions in {elapsed:?}, kills at (sent, acked) {kills:?}, {} sessions",
        progress.sessions.load(Ordering::SeqCst)
    );
    assert!(
        kills.iter().all(|(s, _)| *s < N),
        "a kill came after the stream was done: {kills:?}"
    );
    // Four starts: the first from nothing, each restart from the newest snapshot (or from
    // nothing when a kill came before the first checkpoint was written).
    let restored = log_text.matches("restored snapshot").count();
    let from_nothing = log_text.matches("no snapshot in").count();
    assert_eq!(restored + from_nothing, 4, "{log_text}");

    // every user's total is exact
    let snap = engine::checkpoint::Snapshot::load_latest(&res, |p, e| panic!("{p:?}: {e}"))
        .unwrap()
        .expect("a snapshot");
    let state: HashMap<String, TransactionTotal> = snap
        .state(STATE)
        .expect("state in snapshot")
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(state.len(), totals.len());
    for (user, t) in &totals {
        assert_eq!(state.get(user), Some(t), "total of {user}");
    }
    let stream = framing::stream_id_for("transactions-file");
    assert!(snap
        .points
        .iter()
        .any(|(id, _, p)| *id == stream && *p == N));

    // every alert of a clean run was emitted at least once, and nothing else was
    let text = String::from_utf8(received.lock().unwrap().clone()).unwrap();
    let got: HashSet<&str> = text.lines().collect();
    let missing: Vec<&String> = alerts
        .iter()
        .filter(|a| !got.contains(a.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} alerts missing, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let bogus: Vec<&&str> = got.iter().filter(|a| !alerts.contains(**a)).collect();
    assert!(
        bogus.is_empty(),
        "alerts a clean run never emits: {:?}",
        &bogus[..bogus.len().min(5)]
    );
    println!(
        "{} distinct alerts, {} alert lines received (duplicates from replays allowed)",
        alerts.len(),
        text.lines().count()
    );
}
