//! A tunnel's bytes, copied both ways for as long as both ends and the session behind it
//! live. When the session ends first, a WebSocket gets a close frame (1008, "session ended")
//! each way, put between two frames, and then both TCP connections are shut.

use std::future::Future;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};

use super::ws_frames::{FrameBoundaries, close_frame};
use crate::auth::cache::Ending;

/// As `tokio::io::copy_bidirectional`'s buffers.
const BUFFER: usize = 8 * 1024;
/// How long the close frames and the shutdown may take: a peer that stopped reading must not
/// keep an ended tunnel's task alive.
const CLOSE_DEADLINE: Duration = Duration::from_secs(1);

/// What is relayed, as far as closing it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tunnelled {
    /// Frames are followed, so a close frame can be sent between them.
    WebSocket,
    /// Another allowed protocol: the gateway cannot speak it, so ending it only shuts TCP.
    Opaque,
}

/// Copies until both directions have ended (each end's EOF passed on as a shutdown), either
/// fails, or `ending` resolves; in that last case, returns why.
pub async fn relay<D, U>(
    downstream: D,
    upstream: U,
    tunnelled: Tunnelled,
    ending: impl Future<Output = Ending>,
) -> Option<Ending>
where
    D: AsyncRead + AsyncWrite,
    U: AsyncRead + AsyncWrite,
{
    let (mut from_client, mut to_client) = tokio::io::split(downstream);
    let (mut from_upstream, mut to_upstream) = tokio::io::split(upstream);
    // What each side has been sent so far, frame-wise.
    let mut client_side = FrameBoundaries::default();
    let mut upstream_side = FrameBoundaries::default();
    let why = {
        let copying = async {
            tokio::try_join!(
                copy(&mut from_upstream, &mut to_client, &mut client_side),
                copy(&mut from_client, &mut to_upstream, &mut upstream_side),
            )
        };
        tokio::select! {
            _ = copying => None,
            why = ending => Some(why),
        }
    }?;
    let close = async {
        if tunnelled == Tunnelled::WebSocket {
            // Servers send unmasked frames, clients masked ones (RFC 6455 §5.1).
            say_goodbye(&mut to_client, &client_side, false).await;
            say_goodbye(&mut to_upstream, &upstream_side, true).await;
        }
        let _ = to_client.shutdown().await;
        let _ = to_upstream.shutdown().await;
    };
    let _ = tokio::time::timeout(CLOSE_DEADLINE, close).await;
    Some(why)
}

/// One direction: what `from` sends, to `to`, with `sent` following the frames written.
async fn copy<R, W>(
    from: &mut ReadHalf<R>,
    to: &mut WriteHalf<W>,
    sent: &mut FrameBoundaries,
) -> std::io::Result<()>
where
    R: AsyncRead,
    W: AsyncWrite,
{
    let mut buffer = vec![0u8; BUFFER];
    loop {
        let n = from.read(&mut buffer).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        // Written (and followed) piece by piece: when the session's end cancels this, `sent`
        // knows exactly how far the peer got.
        let mut written = 0;
        while written < n {
            let w = to.write(&buffer[written..n]).await?;
            if w == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            sent.relayed(&buffer[written..written + w]);
            written += w;
        }
    }
}

async fn say_goodbye<W: AsyncWrite>(to: &mut WriteHalf<W>, sent: &FrameBoundaries, masked: bool) {
    // In the middle of a frame, a close frame would be read as the rest of its payload.
    if sent.between_frames() {
        let _ = to.write_all(&close_frame(masked)).await;
        let _ = to.flush().await;
    }
}
