//! Upgrades on the data plane: a WebSocket tunnel through the gateway, opened with a token only.

mod common;

use std::time::Duration;

use common::Gateway;
use common::ws::{connect, next_text, ws_echo};
use futures_util::{SinkExt, StreamExt};
use meiro_gate::store::Role;
use tokio_tungstenite::tungstenite::{self, Message};

#[tokio::test]
async fn websocket_echo_through_the_gateway_with_a_token_only() {
    let (echo, handshakes, echo_task) = ws_echo().await;
    let gw = Gateway::start_with(&format!("http://{echo}"), "").await;
    let user = gw.add_user("ws@example.com", Role::User).await;
    let token = gw.login("ws@example.com").await;

    let (mut ws, response) = connect(gw.addr, "/ws/chat", Some(&token))
        .await
        .expect("the upgrade succeeds");
    assert_eq!(response.status(), 101);

    assert_eq!(next_text(&mut ws).await, "welcome", "server → client");
    for text in ["hello", "second message", &"long ".repeat(10_000)] {
        ws.send(Message::text(text)).await.unwrap();
        assert_eq!(next_text(&mut ws).await, text, "client → server → client");
    }
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echoed.into_data().as_ref(), [0u8, 1, 2, 255]);
    ws.close(None).await.unwrap();

    let seen = handshakes.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0]["x-meiro-user-id"], user.id.to_string().as_str());
    assert_eq!(seen[0]["x-meiro-user-email"], "ws@example.com");

    // Without a token: 401, and no upgrade ever reaches the upstream.
    match connect(gw.addr, "/ws/chat", None).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 401),
        Err(e) => panic!("expected an HTTP 401, got {e}"),
        Ok(_) => panic!("upgraded without a token"),
    }
    assert_eq!(handshakes.lock().unwrap().len(), 1);
    gw.shutdown().await;
    echo_task.abort();
}
