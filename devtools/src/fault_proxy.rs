//! A TCP proxy between one client (an operator replica) and the API server that a test can
//! fault: [`FaultProxy::cut`] closes every connection and refuses new ones,
//! [`FaultProxy::freeze`] stops forwarding and holds the bytes (a hung network, not a closed
//! one), [`FaultProxy::restore`] forwards again, the held bytes first.
//!
//! Written here rather than taken from a crate: toxiproxy (and its Rust clients) can cut and
//! slow a connection but not hold bytes and deliver them later, which is what a renewal that
//! hangs and then arrives late looks like. It is plain TCP, so TLS passes through untouched.
use std::{io, net::SocketAddr, sync::Arc};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        TcpListener, TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::watch,
    task::JoinHandle,
};

/// What the proxy does with the bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Forwards them.
    Open,
    /// Reads them and holds them until [`FaultProxy::restore`].
    Frozen,
    /// Has closed every connection and closes new ones at once.
    Cut,
}

#[derive(Clone, Copy, Debug)]
struct State {
    mode: Mode,
    /// Counts the cuts: a connection accepted before the last cut is closed.
    cuts: u64,
}

/// A running proxy; stops (and closes its connections) when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<watch::Sender<State>>,
    accept: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free port of 127.0.0.1 and forwards each connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(watch::Sender::new(State {
            mode: Mode::Open,
            cuts: 0,
        }));
        let accept = tokio::spawn(accept_loop(listener, upstream, state.clone()));
        Ok(Self {
            addr,
            state,
            accept,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn mode(&self) -> Mode {
        self.state.borrow().mode
    }

    /// Closes every connection; new ones are closed as soon as accepted, until [`Self::restore`].
    pub fn cut(&self) {
        self.state.send_modify(|s| {
            s.mode = Mode::Cut;
            s.cuts += 1;
        });
    }

    /// Stops forwarding in both directions; what arrives is held. Connections stay open and new
    /// ones are accepted (and held too).
    pub fn freeze(&self) {
        self.state.send_modify(|s| s.mode = Mode::Frozen);
    }

    /// Forwards again: held bytes are delivered, in order, before any new ones.
    pub fn restore(&self) {
        self.state.send_modify(|s| s.mode = Mode::Open);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    state: Arc<watch::Sender<State>>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let current = *state.borrow();
        if current.mode == Mode::Cut {
            drop(client);
            continue;
        }
        let state = state.subscribe();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(upstream).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            // Dropping the halves when either task ends on a cut closes both sockets.
            tokio::join!(
                pump(client_read, server_write, state.clone(), current.cuts),
                pump(server_read, client_write, state, current.cuts),
            );
        });
    }
}

/// Resolves when the connection accepted after cut number `cuts` must close.
async fn cut_since(state: &mut watch::Receiver<State>, cuts: u64) {
    let _ = state.wait_for(|s| s.cuts != cuts).await;
}

/// Copies one direction until end of file or a cut; while frozen, holds what it has read.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut state: watch::Receiver<State>,
    cuts: u64,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            () = cut_since(&mut state, cuts) => return,
        };
        let n = match read {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        // Hold the bytes while frozen; a cut meanwhile drops them with the connection.
        let released = state
            .wait_for(|s| s.cuts != cuts || s.mode != Mode::Frozen)
            .await
            .is_ok_and(|s| s.cuts == cuts);
        if !released {
            return;
        }
        tokio::select! {
            written = to.write_all(&buffer[..n]) => if written.is_err() { return },
            () = cut_since(&mut state, cuts) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// An upstream that echoes every byte back.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = socket.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn round_trip(socket: &mut TcpStream, message: &[u8]) -> Vec<u8> {
        socket.write_all(message).await.expect("write");
        let mut answer = vec![0u8; message.len()];
        tokio::time::timeout(Duration::from_secs(5), socket.read_exact(&mut answer))
            .await
            .expect("an answer within 5 s")
            .expect("read");
        answer
    }

    #[tokio::test]
    async fn forwards_both_ways() {
        let proxy = FaultProxy::start(echo_server().await).await.expect("start");
        let mut socket = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert_eq!(round_trip(&mut socket, b"hello").await, b"hello");
        assert_eq!(proxy.mode(), Mode::Open);
    }

    #[tokio::test]
    async fn freeze_holds_the_bytes_and_restore_delivers_them_in_order() {
        let proxy = FaultProxy::start(echo_server().await).await.expect("start");
        let mut socket = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert_eq!(round_trip(&mut socket, b"before").await, b"before");

        proxy.freeze();
        socket.write_all(b"held-1 ").await.expect("write");
        socket.write_all(b"held-2").await.expect("write");
        let mut answer = vec![0u8; 13];
        // Nothing comes back while frozen (the connection stays open: no end of file either).
        let waited =
            tokio::time::timeout(Duration::from_millis(500), socket.read(&mut answer)).await;
        assert!(waited.is_err(), "read while frozen: {waited:?}");
        // A connection opened while frozen is accepted and held too.
        let mut late = TcpStream::connect(proxy.addr()).await.expect("connect");
        late.write_all(b"late").await.expect("write");

        proxy.restore();
        tokio::time::timeout(Duration::from_secs(5), socket.read_exact(&mut answer))
            .await
            .expect("delivered after restore")
            .expect("read");
        assert_eq!(answer, b"held-1 held-2");
        let mut late_answer = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), late.read_exact(&mut late_answer))
            .await
            .expect("delivered after restore")
            .expect("read");
        assert_eq!(&late_answer, b"late");
    }

    #[tokio::test]
    async fn cut_closes_connections_and_refuses_new_ones_until_restore() {
        let proxy = FaultProxy::start(echo_server().await).await.expect("start");
        let mut socket = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert_eq!(round_trip(&mut socket, b"ping").await, b"ping");

        proxy.cut();
        let mut buffer = [0u8; 4];
        let closed = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut buffer))
            .await
            .expect("closed within 5 s");
        assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");

        // A new connection is closed at once, before any byte is forwarded.
        let mut refused = TcpStream::connect(proxy.addr()).await.expect("connect");
        let _ = refused.write_all(b"ping").await;
        let closed = tokio::time::timeout(Duration::from_secs(5), refused.read(&mut buffer))
            .await
            .expect("closed within 5 s");
        assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");

        proxy.restore();
        let mut again = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert_eq!(round_trip(&mut again, b"back").await, b"back");
    }
}
