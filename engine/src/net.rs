//! Sockets: TCP or Unix-domain listeners and connections behind one small interface.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use application::Endpoint;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

/// Read half of a connection.
pub(crate) type Reader = Box<dyn AsyncRead + Unpin>;
/// Write half of a connection.
pub(crate) type Writer = Box<dyn AsyncWrite + Unpin>;

/// An accepted or established connection, split into halves.
pub(crate) fn split_tcp(s: TcpStream) -> (Reader, Writer) {
    let _ = s.set_nodelay(true);
    let (r, w) = s.into_split();
    (Box::new(r), Box::new(w))
}

fn split_unix(s: UnixStream) -> (Reader, Writer) {
    let (r, w) = s.into_split();
    (Box::new(r), Box::new(w))
}

/// Removes a Unix socket file when dropped (on exit or shutdown).
pub(crate) struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A bound listener for a source connector.
pub(crate) enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, SocketFile),
}

impl Listener {
    /// Binds `ep`. A Unix socket is created with mode 0600; a stale socket file (nobody
    /// listening) is replaced; a live one or a non-socket file is an error.
    pub async fn bind(ep: &Endpoint) -> io::Result<Listener> {
        match ep {
            Endpoint::Tcp { host, port } => Ok(Listener::Tcp(
                TcpListener::bind((host.as_str(), *port)).await?,
            )),
            Endpoint::Unix(path) => {
                remove_stale(path).await?;
                let l = UnixListener::bind(path)?;
                let guard = SocketFile(path.clone());
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
                Ok(Listener::Unix(l, guard))
            }
        }
    }

    /// The bound address as an endpoint (useful with port 0).
    pub fn local_endpoint(&self) -> Endpoint {
        match self {
            Listener::Tcp(l) => match l.local_addr() {
                Ok(a) => Endpoint::Tcp {
                    host: a.ip().to_string(),
                    port: a.port(),
                },
                Err(_) => Endpoint::Tcp {
                    host: "?".into(),
                    port: 0,
                },
            },
            Listener::Unix(_, f) => Endpoint::Unix(f.0.clone()),
        }
    }

    /// Accepts one connection; returns its halves and a peer description for logs.
    pub async fn accept(&self) -> io::Result<(Reader, Writer, String)> {
        match self {
            Listener::Tcp(l) => {
                let (s, peer) = l.accept().await?;
                let (r, w) = split_tcp(s);
                Ok((r, w, peer.to_string()))
            }
            Listener::Unix(l, f) => {
                let (s, _) = l.accept().await?;
                let (r, w) = split_unix(s);
                Ok((r, w, format!("unix:{}", f.0.display())))
            }
        }
    }
}

async fn remove_stale(path: &Path) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            ),
        ));
    }
    if UnixStream::connect(path).await.is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("another process is listening on {}", path.display()),
        ));
    }
    std::fs::remove_file(path)
}

/// Connects to a sink connector's endpoint.
pub(crate) async fn connect(ep: &Endpoint) -> io::Result<(Reader, Writer)> {
    match ep {
        Endpoint::Tcp { host, port } => {
            Ok(split_tcp(TcpStream::connect((host.as_str(), *port)).await?))
        }
        Endpoint::Unix(path) => Ok(split_unix(UnixStream::connect(path).await?)),
    }
}
