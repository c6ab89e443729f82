//! Open connections live no longer than their session: a WebSocket gets a close frame 1008
//! "session ended" within a second of its session's end — logout, refresh reuse, the user
//! disabled or their role changed — on the replica that ended it and on another one; a
//! streamed response is cut. Other users' connections stay open throughout.

mod common;

use std::time::{Duration, Instant};

use common::Gateway;
use common::fake::{FakeTask, endless_event_stream};
use common::replicas::{PgSchema, replica_toml};
use common::streams::{assert_cut, assert_flowing};
use common::ws::{Ws, connect, next_text, ws_echo};
use futures_util::{SinkExt, StreamExt};
use meiro_gate::store::Role;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// The contract: every replica closes within this of the session's end.
const WITHIN: Duration = Duration::from_secs(1);

/// A gateway on SQLite in front of a WebSocket echo server (stopped when the task is dropped).
async fn echo_gateway() -> (Gateway, FakeTask) {
    let (echo, _, echo_task) = ws_echo().await;
    (
        Gateway::start_with(&format!("http://{echo}"), "").await,
        echo_task,
    )
}

/// A WebSocket through `gw` opened with `token`, past the echo server's greeting.
async fn open(gw: &Gateway, token: &str) -> Ws {
    let (mut ws, response) = connect(gw.addr, "/ws/chat", Some(token))
        .await
        .expect("the upgrade succeeds");
    assert_eq!(response.status(), 101);
    assert_eq!(next_text(&mut ws).await, "welcome");
    ws
}

/// The tunnel still carries messages both ways.
async fn assert_open(ws: &mut Ws) {
    ws.send(Message::text("still there?")).await.unwrap();
    assert_eq!(next_text(ws).await, "still there?");
}

/// The gateway's close frame arrives within [`WITHIN`] of `since`, and then the connection ends.
async fn assert_closed_by_gateway(ws: &mut Ws, since: Instant) {
    let message = tokio::time::timeout(WITHIN.saturating_sub(since.elapsed()), ws.next())
        .await
        .unwrap_or_else(|_| panic!("no close frame within {WITHIN:?}"))
        .expect("a frame, not the end of the stream")
        .expect("a valid frame");
    let Message::Close(Some(frame)) = message else {
        panic!("expected a close frame, got {message:?}");
    };
    assert_eq!(frame.code, CloseCode::Policy, "1008");
    assert_eq!(frame.reason.as_str(), "session ended");
    // Nothing after it: the gateway shuts the connection (our reply goes nowhere).
    let rest = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("the connection ends");
    assert!(
        !matches!(rest, Some(Ok(Message::Text(_) | Message::Binary(_)))),
        "no data after the close: {rest:?}"
    );
}

async fn closures(gw: &Gateway, kind: &str, reason: &str) -> String {
    let metrics = gw.metrics_text().await;
    let series =
        format!("meiro_gate_session_closures_total{{kind=\"{kind}\",reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .unwrap_or("absent")
        .to_owned()
}

async fn as_admin(
    gw: &Gateway,
    admin: &str,
    user: &meiro_gate::store::User,
    body: serde_json::Value,
) {
    let response = gw
        .http
        .patch(gw.url(&format!("/users/{}", user.id)))
        .header("x-access-token", admin)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{body}");
}

#[tokio::test]
async fn a_websocket_closes_within_a_second_of_logout_and_other_users_stay_connected() {
    let (gw, _echo_task) = echo_gateway().await;
    gw.add_user("alice@example.com", Role::User).await;
    gw.add_user("bob@example.com", Role::User).await;
    let alice = gw.login("alice@example.com").await;
    let alice_elsewhere = gw.login("alice@example.com").await;
    let bob = gw.login("bob@example.com").await;
    let mut alices = open(&gw, &alice).await;
    let mut alices_other_session = open(&gw, &alice_elsewhere).await;
    let mut bobs = open(&gw, &bob).await;
    assert_open(&mut alices).await;

    let logout = Instant::now();
    gw.logout(&alice).await;
    assert_closed_by_gateway(&mut alices, logout).await;
    assert_open(&mut bobs).await;
    assert_open(&mut alices_other_session).await;
    assert_eq!(closures(&gw, "websocket", "session_ended").await, "1");

    // The ended session cannot open a new one either.
    assert!(connect(gw.addr, "/ws/chat", Some(&alice)).await.is_err());
    gw.shutdown().await;
}

#[tokio::test]
async fn disabling_a_user_or_changing_their_role_closes_their_websockets() {
    let (gw, _echo_task) = echo_gateway().await;
    gw.add_user("admin@example.com", Role::Admin).await;
    let alice = gw.add_user("alice@example.com", Role::User).await;
    let carol = gw.add_user("carol@example.com", Role::User).await;
    gw.add_user("bob@example.com", Role::User).await;
    let admin = gw.login("admin@example.com").await;
    let mut alices = open(&gw, &gw.login("alice@example.com").await).await;
    let mut carols = open(&gw, &gw.login("carol@example.com").await).await;
    let mut bobs = open(&gw, &gw.login("bob@example.com").await).await;

    let disabled = Instant::now();
    as_admin(&gw, &admin, &alice, json!({ "disabled": true })).await;
    assert_closed_by_gateway(&mut alices, disabled).await;
    assert_open(&mut carols).await;

    let promoted = Instant::now();
    as_admin(&gw, &admin, &carol, json!({ "role": "admin" })).await;
    assert_closed_by_gateway(&mut carols, promoted).await;
    assert_open(&mut bobs).await;
    assert_eq!(closures(&gw, "websocket", "session_ended").await, "1");
    assert_eq!(closures(&gw, "websocket", "identity_changed").await, "1");
    gw.shutdown().await;
}

#[tokio::test]
async fn reusing_a_refreshed_token_closes_the_sessions_websockets() {
    let (gw, _echo_task) = echo_gateway().await;
    gw.add_user("alice@example.com", Role::User).await;
    gw.add_user("bob@example.com", Role::User).await;
    let first = gw.login("alice@example.com").await;
    let response = gw.refresh_response(&first).await;
    assert_eq!(response.status(), 200);
    let second = common::token_of_login(response, "alice@example.com").await;
    let mut alices = open(&gw, &second).await;
    let mut bobs = open(&gw, &gw.login("bob@example.com").await).await;

    // Refreshing the same token twice is taken for theft: the whole session ends.
    let reused = Instant::now();
    assert_eq!(gw.refresh_response(&first).await.status(), 401);
    assert_closed_by_gateway(&mut alices, reused).await;
    assert_open(&mut bobs).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn a_logout_on_one_replica_closes_the_websocket_on_another() {
    let Some(schema) =
        PgSchema::create("a_logout_on_one_replica_closes_the_websocket_on_another").await
    else {
        return;
    };
    let (echo, _, _echo_task) = ws_echo().await;
    let keys = tempfile::tempdir().unwrap();
    let shared = replica_toml(&schema.url(), keys.path());
    let upstream = format!("http://{echo}");
    let a = Gateway::start_with_layers(&upstream, &[&shared]).await;
    let b = Gateway::start_with_layers(&upstream, &[&shared]).await;
    a.add_user("alice@example.com", Role::User).await;
    a.add_user("bob@example.com", Role::User).await;
    let alice = a.login("alice@example.com").await;
    let mut alices_on_b = open(&b, &alice).await;
    let mut bobs_on_b = open(&b, &a.login("bob@example.com").await).await;

    let logout = Instant::now();
    a.logout(&alice).await;
    assert_closed_by_gateway(&mut alices_on_b, logout).await;
    assert_open(&mut bobs_on_b).await;
    assert_eq!(closures(&b, "websocket", "session_ended").await, "1");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_streamed_response_is_cut_when_its_session_ends() {
    let (upstream, _task) = endless_event_stream().await;
    let gw = Gateway::start_with(&format!("http://{upstream}"), "").await;
    gw.add_user("alice@example.com", Role::User).await;
    gw.add_user("bob@example.com", Role::User).await;
    let alice = gw.login("alice@example.com").await;
    let bob = gw.login("bob@example.com").await;
    let mut alices = gw.get_with_token("/events", &alice).await;
    let mut bobs = gw.get_with_token("/events", &bob).await;
    assert_eq!(alices.status(), 200);
    assert_flowing(&mut alices).await;

    let logout = Instant::now();
    gw.logout(&alice).await;
    assert_cut(&mut alices, logout, WITHIN).await;
    assert_flowing(&mut bobs).await;
    assert_eq!(closures(&gw, "stream", "session_ended").await, "1");
    gw.shutdown().await;
}
