//! A TCP pipe in front of a server (Flink's REST API here), cut on demand: after
//! [`Pipe::cut`] nothing listens on its port and every connection through it is closed, as
//! when the server's host goes away. The bytes are the server's, untouched.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub struct Pipe {
    pub port: u16,
    cut: CancellationToken,
}

impl Pipe {
    /// Listens on a free port and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Pipe {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = CancellationToken::new();
        let stop = cut.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = stop.cancelled() => return, // the listener is dropped: refused
                };
                let Ok((mut client, _)) = accepted else {
                    continue;
                };
                let stop = stop.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = stop.cancelled() => {}
                    }
                });
            }
        });
        Pipe { port, cut }
    }

    /// Stops listening and closes every connection through the pipe.
    pub fn cut(&self) {
        self.cut.cancel();
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        self.cut.cancel();
    }
}
