//! A TCP proxy of the test's own that can be cut, to make a service unreachable for a while
//! without restarting it (a service that keeps nothing across a restart, such as moto, can
//! still be "down" for 10 s this way).
//!
//! [`Proxy::start`] listens on `127.0.0.1:0` and forwards every connection to a target.
//! [`Proxy::cut`] models an unreachable service: the listener is closed (new connections
//! are refused) and every live connection is reset on both sides. [`Proxy::restore`] listens
//! again on the same port and forwards as before. Plain threads, no runtime: two per live
//! connection and one for the listener.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A cuttable TCP forwarder from `127.0.0.1:<port>` to a target address.
pub struct Proxy {
    port: u16,
    target: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<Acceptor>,
}

/// The listening side while the proxy serves.
struct Acceptor {
    stop: Arc<AtomicBool>,
    listener_fd: i32,
    thread: JoinHandle<()>,
}

#[derive(Default)]
struct Shared {
    /// Live connections: id -> (client side, target side), clones used to cut them.
    live: Mutex<Vec<(u64, TcpStream, TcpStream)>>,
    next_id: AtomicU64,
    accepted: AtomicUsize,
    reset: AtomicUsize,
}

impl Proxy {
    /// Starts forwarding from a fresh port on 127.0.0.1 to `target` (`host:port`; resolved
    /// once, now). Panics when the target does not resolve or no port can be bound.
    pub fn start(target: &str) -> Proxy {
        let target = target
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .unwrap_or_else(|| panic!("proxy target {target:?} does not resolve"));
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy: bind 127.0.0.1:0");
        let port = listener.local_addr().expect("proxy: local address").port();
        let shared = Arc::new(Shared::default());
        let acceptor = Some(Acceptor::spawn(listener, target, shared.clone()));
        Proxy {
            port,
            target,
            shared,
            acceptor,
        }
    }

    /// Starts forwarding to the `host:port` of a URL such as `http://127.0.0.1:5000/`
    /// (port 80 or 443 by scheme when the URL has none).
    pub fn for_url(url: &str) -> Proxy {
        let (scheme, rest) = url.split_once("://").unwrap_or(("http", url));
        let rest = rest.rsplit('@').next().unwrap_or(rest);
        let hostport = rest.split('/').next().unwrap_or(rest);
        let target = if hostport.contains(':') {
            hostport.to_string()
        } else {
            let port = if scheme == "https" { 443 } else { 80 };
            format!("{hostport}:{port}")
        };
        Proxy::start(&target)
    }

    /// The port the proxy listens on (the same before and after a cut).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:<port>`: an endpoint URL pointing at the proxy.
    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Where connections are forwarded.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Connections accepted and forwarded so far.
    pub fn connections(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Live connections reset by cuts so far.
    pub fn connections_reset(&self) -> usize {
        self.shared.reset.load(Ordering::SeqCst)
    }

    /// Connections open right now.
    pub fn live(&self) -> usize {
        self.shared
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Whether the proxy is cut.
    pub fn is_cut(&self) -> bool {
        self.acceptor.is_none()
    }

    /// Makes the target unreachable: closes the listener (connections to the port are
    /// refused from now on) and resets every live connection, on the client's side and on
    /// the target's. Returns how many live connections were reset. Does nothing when
    /// already cut.
    pub fn cut(&mut self) -> usize {
        let Some(acceptor) = self.acceptor.take() else {
            return 0;
        };
        acceptor.stop();
        let live = std::mem::take(&mut *self.shared.live.lock().unwrap_or_else(|p| p.into_inner()));
        let n = live.len();
        for (_, client, upstream) in live {
            reset(&client);
            reset(&upstream);
        }
        self.shared.reset.fetch_add(n, Ordering::SeqCst);
        n
    }

    /// Serves again on the same port after [`Proxy::cut`]. Panics when the port cannot be
    /// bound again within 10 s (something else took it meanwhile). Does nothing when not cut.
    pub fn restore(&mut self) {
        if self.acceptor.is_some() {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", self.port)) {
                Ok(l) => break l,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "proxy: cannot listen on 127.0.0.1:{} again: {e}",
                        self.port
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        };
        self.acceptor = Some(Acceptor::spawn(listener, self.target, self.shared.clone()));
    }

    /// Cuts, waits `down`, restores: the target is unreachable for `down`.
    pub fn outage(&mut self, down: Duration) -> usize {
        let n = self.cut();
        std::thread::sleep(down);
        self.restore();
        n
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
    }
}

impl Acceptor {
    fn spawn(listener: TcpListener, target: SocketAddr, shared: Arc<Shared>) -> Acceptor {
        let stop = Arc::new(AtomicBool::new(false));
        let listener_fd = listener.as_raw_fd();
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("proxy-accept".into())
                .spawn(move || accept_loop(listener, target, shared, stop))
                .expect("spawn proxy thread")
        };
        Acceptor {
            stop,
            listener_fd,
            thread,
        }
    }

    /// Stops accepting and closes the listening socket (returns once it is closed).
    fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the blocked accept(2) (Linux returns EINVAL for a shut-down listener); the
        // thread then drops, and so closes, the listener. The fd stays open until then, so
        // it cannot have been reused for anything else.
        // SAFETY: shutdown(2) on a socket this proxy owns and that is still open.
        unsafe {
            libc::shutdown(self.listener_fd, libc::SHUT_RDWR);
        }
        let _ = self.thread.join();
    }
}

fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
) {
    loop {
        let accepted = listener.accept();
        if stop.load(Ordering::SeqCst) {
            if let Ok((client, _)) = accepted {
                reset(&client);
            }
            return;
        }
        let client = match accepted {
            Ok((c, _)) => c,
            Err(_) => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
        };
        let upstream = match TcpStream::connect_timeout(&target, Duration::from_secs(5)) {
            Ok(u) => u,
            Err(_) => {
                reset(&client);
                continue;
            }
        };
        let _ = client.set_nodelay(true);
        let _ = upstream.set_nodelay(true);
        let (Ok(c2), Ok(u2), Ok(c3), Ok(u3)) = (
            client.try_clone(),
            upstream.try_clone(),
            client.try_clone(),
            upstream.try_clone(),
        ) else {
            reset(&client);
            reset(&upstream);
            continue;
        };
        let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
        {
            let mut live = shared.live.lock().unwrap_or_else(|p| p.into_inner());
            // Checked under the lock cut() takes: a connection is either registered before
            // the cut (and reset by it) or refused here.
            if stop.load(Ordering::SeqCst) {
                reset(&client);
                reset(&upstream);
                return;
            }
            live.push((id, c3, u3));
        }
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        let ends = Arc::new(AtomicUsize::new(0));
        for (from, to, name) in [(client, u2, "proxy-up"), (upstream, c2, "proxy-down")] {
            let shared = shared.clone();
            let ends = ends.clone();
            let _ = std::thread::Builder::new()
                .name(name.into())
                .spawn(move || {
                    pump(from, to);
                    // The second direction to finish forgets the connection.
                    if ends.fetch_add(1, Ordering::SeqCst) == 1 {
                        let mut live = shared.live.lock().unwrap_or_else(|p| p.into_inner());
                        live.retain(|(i, _, _)| *i != id);
                    }
                });
        }
    }
}

/// Copies `from` to `to` until EOF (then half-closes `to`) or an error (then closes both).
fn pump(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    let _ = from.shutdown(Shutdown::Both);
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => {
                let _ = to.shutdown(Shutdown::Both);
                return;
            }
        }
    }
}

/// Resets a connection: SO_LINGER 0 makes its last close send RST instead of FIN, and the
/// shutdown wakes every thread blocked on it at once.
fn reset(s: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt(2) on an open socket with a correctly sized `linger`.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    let _ = s.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on a free port; returns its address.
    fn echo_server() -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut r = s.try_clone().unwrap();
                    let mut w = s;
                    let _ = std::io::copy(&mut r, &mut w);
                });
            }
        });
        addr
    }

    fn round_trip(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(msg)?;
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got)?;
        Ok(got)
    }

    #[test]
    fn forwards_both_ways() {
        let p = Proxy::start(&echo_server());
        let mut s = TcpStream::connect(p.addr()).unwrap();
        assert_eq!(round_trip(&mut s, b"hello").unwrap(), b"hello");
        let big: Vec<u8> = (0..1_000_000u32).map(|i| i as u8).collect();
        assert_eq!(round_trip(&mut s, &big).unwrap(), big);
        assert_eq!(p.connections(), 1);
        assert!(!p.is_cut());
    }

    #[test]
    fn cut_resets_live_connections_and_refuses_new_ones_until_restored() {
        let mut p = Proxy::start(&echo_server());
        let port = p.port();
        let mut s = TcpStream::connect(p.addr()).unwrap();
        assert_eq!(round_trip(&mut s, b"before").unwrap(), b"before");
        assert!(crate::wait_until(Duration::from_secs(5), || p.live() == 1));

        assert_eq!(p.cut(), 1);
        assert!(p.is_cut());
        // The live connection is gone: reading ends (EOF or reset) at once, it never hangs.
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 16];
        let started = Instant::now();
        match s.read(&mut buf) {
            Ok(0) | Err(_) => {}
            Ok(n) => panic!("read {n} bytes through a cut proxy"),
        }
        assert!(started.elapsed() < Duration::from_secs(4), "the read hung");
        // New connections are refused.
        let refused = TcpStream::connect_timeout(
            &format!("127.0.0.1:{port}").parse().unwrap(),
            Duration::from_secs(2),
        );
        assert!(
            refused.is_err(),
            "a connection was accepted while the proxy was cut"
        );
        assert_eq!(p.cut(), 0, "cutting twice is harmless");

        p.restore();
        assert_eq!(p.port(), port, "same port after restore");
        let mut s2 = TcpStream::connect(("127.0.0.1", port)).unwrap();
        assert_eq!(round_trip(&mut s2, b"after").unwrap(), b"after");
        assert_eq!(p.connections(), 2);
        assert_eq!(p.connections_reset(), 1);
        p.restore(); // restoring a serving proxy is harmless
        assert_eq!(round_trip(&mut s2, b"again").unwrap(), b"again");
    }

    #[test]
    fn a_closed_connection_is_forgotten_and_half_close_is_forwarded() {
        let p = Proxy::start(&echo_server());
        let mut s = TcpStream::connect(p.addr()).unwrap();
        assert_eq!(round_trip(&mut s, b"x").unwrap(), b"x");
        // Half-close: the echo server sees EOF and closes, which comes back as EOF.
        s.shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
        assert!(
            crate::wait_until(Duration::from_secs(5), || p.live() == 0),
            "closed connection still listed"
        );
    }

    #[test]
    fn outage_lasts_as_long_as_asked() {
        let mut p = Proxy::for_url(&format!("http://{}/", echo_server()));
        let port = p.port();
        let t = std::thread::spawn(move || {
            p.outage(Duration::from_millis(300));
            p
        });
        std::thread::sleep(Duration::from_millis(100));
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
        let p = t.join().unwrap();
        let mut s = TcpStream::connect(p.addr()).unwrap();
        assert_eq!(round_trip(&mut s, b"up").unwrap(), b"up");
    }
}
