//! Byte streams to and from the engine over TCP or a Unix-domain socket.

use std::path::{Path, PathBuf};

use application::Endpoint;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

/// The read half of a connection, whatever its transport.
pub type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
/// The write half of a connection, whatever its transport.
pub type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// Connects to `endpoint` and splits the stream into owned halves.
pub async fn connect(endpoint: &Endpoint) -> std::io::Result<(BoxRead, BoxWrite)> {
    match endpoint {
        Endpoint::Tcp { host, port } => {
            let s = TcpStream::connect((host.as_str(), *port)).await?;
            s.set_nodelay(true)?;
            let (r, w) = s.into_split();
            Ok((Box::new(r), Box::new(w)))
        }
        Endpoint::Unix(path) => {
            let s = UnixStream::connect(path).await?;
            let (r, w) = s.into_split();
            Ok((Box::new(r), Box::new(w)))
        }
    }
}

/// A listening socket; a Unix socket file is removed when this is dropped.
pub enum Listener {
    /// TCP.
    Tcp(TcpListener),
    /// Unix-domain socket and its path.
    Unix(UnixListener, PathBuf),
}

impl Listener {
    /// Binds `endpoint`. A Unix socket is created with mode 0600, replacing a stale file.
    pub async fn bind(endpoint: &Endpoint) -> std::io::Result<Listener> {
        match endpoint {
            Endpoint::Tcp { host, port } => Ok(Listener::Tcp(
                TcpListener::bind((host.as_str(), *port)).await?,
            )),
            Endpoint::Unix(path) => {
                remove_stale(path)?;
                let l = UnixListener::bind(path)?;
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
                Ok(Listener::Unix(l, path.clone()))
            }
        }
    }

    /// Accepts one connection, returning its halves and a printable peer name.
    pub async fn accept(&self) -> std::io::Result<(BoxRead, BoxWrite, String)> {
        match self {
            Listener::Tcp(l) => {
                let (s, peer) = l.accept().await?;
                s.set_nodelay(true)?;
                let (r, w) = s.into_split();
                Ok((Box::new(r), Box::new(w), peer.to_string()))
            }
            Listener::Unix(l, path) => {
                let (s, _) = l.accept().await?;
                let (r, w) = s.into_split();
                Ok((Box::new(r), Box::new(w), format!("unix:{}", path.display())))
            }
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn remove_stale(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    format!("{} is in use by a running process", path.display()),
                ));
            }
            std::fs::remove_file(path)
        }
        Ok(_) => Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!(
                "{} exists and is not a socket; remove it or choose another path",
                path.display()
            ),
        )),
        Err(_) => Ok(()),
    }
}
