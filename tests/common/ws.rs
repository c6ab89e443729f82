//! A WebSocket echo upstream that records its handshakes, and a client-side helper.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::HeaderMap;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest};

use super::fake::{FakeTask, Tasks};

/// An echo WebSocket server: greets, then echoes every text or binary message. Records the
/// handshake headers. Dropping (or aborting) the task stops it.
pub async fn ws_echo() -> (SocketAddr, Arc<Mutex<Vec<HeaderMap>>>, FakeTask) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handshakes: Arc<Mutex<Vec<HeaderMap>>> = Arc::default();
    let log = handshakes.clone();
    let tasks = Tasks::default();
    let watched = tasks.clone();
    let task = tasks.spawn(async move {
        let mut connections = JoinSet::new();
        while let Ok((stream, _)) = listener.accept().await {
            let log = log.clone();
            connections.spawn(watched.watch(async move {
                // The callback's error type is tungstenite's, large or not.
                #[allow(clippy::result_large_err)]
                let record =
                    move |request: &tungstenite::handshake::server::Request,
                          response: tungstenite::handshake::server::Response| {
                        log.lock().unwrap().push(request.headers().clone());
                        Ok(response)
                    };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, record).await else {
                    return;
                };
                if ws.send(Message::text("welcome")).await.is_err() {
                    return;
                }
                while let Some(Ok(message)) = ws.next().await {
                    if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err()
                    {
                        return;
                    }
                }
            }));
        }
    });
    (addr, handshakes, FakeTask::new(tasks, task))
}

pub async fn next_text(ws: &mut tokio_tungstenite::WebSocketStream<TcpStream>) -> String {
    let message = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("a message within 5 s")
        .expect("the stream is open")
        .expect("a valid message");
    message.to_text().unwrap().to_owned()
}

pub type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

/// A WebSocket handshake with `addr` for `path`, with `token` in `X-Access-Token` if given.
pub async fn connect(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> Result<(Ws, tungstenite::handshake::client::Response), tungstenite::Error> {
    let mut request = format!("ws://{addr}{path}")
        .as_str()
        .into_client_request()
        .unwrap();
    if let Some(token) = token {
        request
            .headers_mut()
            .insert("x-access-token", token.parse().unwrap());
    }
    let stream = TcpStream::connect(addr).await.unwrap();
    tokio_tungstenite::client_async(request, stream).await
}
