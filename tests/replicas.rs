//! Replicas that behave as one: two gateways (two `App`s in this process) on one PostgreSQL
//! schema and one keys directory. A token from one works on the other; a logout, refresh-token
//! reuse, password reset, disabled, demoted or deleted user on one is enforced by the other within one second
//! (pushed by `LISTEN/NOTIFY`), also after the listener's connection was killed; a revocation
//! the feed never carried is caught by the re-check; killing a replica's pooled database
//! connections (the database itself up) fails no request; a PostgreSQL outage leaves cached
//! tokens working, fails logins fast with 503 and reports not-ready, and heals by itself.
//!
//! Ignored when `MEIRO_GATE_TEST_POSTGRES_URL` was not set at build time (cfg `postgres_tests`,
//! `build.rs`), so the summary says they did not run.

mod common;

use std::time::{Duration, Instant};

use common::replicas::{Relay, Replicas};
use common::{Gateway, PASSWORD, status_json, status_message};
use meiro_gate::store::{PasswordReset, Role};
use reqwest::StatusCode;

/// The bound for every other replica to follow a revocation.
const PROPAGATION: Duration = Duration::from_secs(1);

async fn two_replicas(test: &str) -> Option<(Replicas, Gateway, Gateway)> {
    two_replicas_with(test, "").await
}

/// Two replicas, both with `extra_toml`.
async fn two_replicas_with(test: &str, extra_toml: &str) -> Option<(Replicas, Gateway, Gateway)> {
    let replicas = Replicas::new(test).await?;
    let a = replicas.start(extra_toml).await;
    let b = replicas.start(extra_toml).await;
    // Both subscribed: from here on a revocation is pushed, not found by a poll.
    eventually!(
        replicas.schema.listeners().await == 2,
        "both replicas listen for revocations"
    );
    Some((replicas, a, b))
}

/// Asserts that `gw` accepts `token` now (and so has it cached).
async fn accepted(gw: &Gateway, token: &str) {
    let status = gw.get_with_token("/resource", token).await.status();
    assert_eq!(status, StatusCode::OK, "token accepted");
}

/// Polls `gw` with `token` until it answers 401, failing if that takes longer than `limit`
/// after `since`; returns how long it took.
async fn rejected_within(gw: &Gateway, token: &str, since: Instant, limit: Duration) -> Duration {
    loop {
        let status = gw.get_with_token("/resource", token).await.status();
        let elapsed = since.elapsed();
        if status == StatusCode::UNAUTHORIZED {
            return elapsed;
        }
        assert_eq!(status, StatusCode::OK, "only accepted or rejected");
        assert!(
            elapsed <= limit,
            "still accepted {elapsed:?} after the revocation"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(postgres_tests),
    ignore = "set MEIRO_GATE_TEST_POSTGRES_URL to run it"
)]
async fn a_token_from_a_works_on_b_and_a_logout_on_b_ends_it_on_a_within_a_second() {
    let Some((_replicas, a, b)) = two_replicas("logout_propagates").await else {
        return;
    };
    a.add_user("alice@example.test", Role::User).await;
    let token = a.login("alice@example.test").await;
    accepted(&b, &token).await;
    accepted(&a, &token).await;

    let since = Instant::now();
    b.logout(&token).await;
    rejected_within(&b, &token, since, PROPAGATION).await;
    let took = rejected_within(&a, &token, since, PROPAGATION).await;
    eprintln!("logout on B rejected on A after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(postgres_tests),
    ignore = "set MEIRO_GATE_TEST_POSTGRES_URL to run it"
)]
async fn refresh_on_a_then_reuse_on_b_ends_the_session_on_both() {
    let Some((_replicas, a, b)) = two_replicas("refresh_reuse_propagates").await else {
        return;
    };
    a.add_user("bob@example.test", Role::User).await;
    let old = a.login("bob@example.test").await;
    let (status, body) = status_json(a.refresh_response(&old).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let new = body["token"].as_str().unwrap().to_owned();
    for gw in [&a, &b] {
        accepted(gw, &new).await;
        accepted(gw, &old).await;
    }

    let since = Instant::now();
    let (status, message) = status_message(b.refresh_response(&old).await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{message}");
    assert!(message.contains("already been refreshed"), "{message}");
    for token in [&new, &old] {
        rejected_within(&b, token, since, PROPAGATION).await;
        rejected_within(&a, token, since, PROPAGATION).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(postgres_tests),
    ignore = "set MEIRO_GATE_TEST_POSTGRES_URL to run it"
)]
async fn disabling_a_user_on_a_is_enforced_on_b_within_a_second() {
    let Some((_replicas, a, b)) = two_replicas("disable_propagates").await else {
        return;
    };
    a.add_user("carol@example.test", Role::User).await;
    let token = a.login("carol@example.test").await;
    accepted(&b, &token).await;

    let since = Instant::now();
    // What `meiro-gate users disable` does, through replica A's store.
    let disabled = a
        .app()
        .auth()
        .store()
        .set_user_disabled("carol@example.test", true, a.clock.now())
        .await
        .unwrap();
    assert!(disabled.is_some_and(|u| u.disabled));
    rejected_within(&b, &token, since, PROPAGATION).await;
    let (status, _) = status_message(b.login_response("carol@example.test", PASSWORD).await).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a disabled user cannot log in on B"
    );
}

/// The role header `gw` sends upstream for `token` now.
async fn role_sent(replicas: &Replicas, gw: &Gateway, token: &str) -> String {
    accepted(gw, token).await;
    common::header(&replicas.upstream.last(), "x-meiro-user-role").concat()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(postgres_tests),
    ignore = "set MEIRO_GATE_TEST_POSTGRES_URL to run it"
)]
async fn the_users_api_on_a_demotes_and_deletes_on_b_within_a_second() {
    let Some((replicas, a, b)) = two_replicas("users_api_propagates").await else {
        return;
    };
    a.add_user("root@example.test", Role::Admin).await;
    let erin = a.add_user("erin@example.test", Role::Admin).await;
    let root = a.login("root@example.test").await;
    let token = a.login("erin@example.test").await;
    assert_eq!(
        role_sent(&replicas, &b, &token).await,
        "admin",
        "cached on B as an admin"
    );
    let admin_call = |method: reqwest::Method, body: Option<serde_json::Value>| {
        let mut request = a
            .http
            .request(method, a.url(&format!("/users/{}", erin.id)))
            .header("x-access-token", &root);
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send()
    };

    let since = Instant::now();
    let response = admin_call(
        reqwest::Method::PATCH,
        Some(serde_json::json!({ "role": "user" })),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // B follows the feed: the same cached token now carries the new role.
    loop {
        let role = role_sent(&replicas, &b, &token).await;
        if role == "user" {
            break;
        }
        assert_eq!(role, "admin");
        assert!(
            since.elapsed() <= PROPAGATION,
            "B still says admin after {:?}",
            since.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!("demotion on A reached B after {:?}", since.elapsed());

    let since = Instant::now();
    let response = admin_call(reqwest::Method::DELETE, None).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let took = rejected_within(&b, &token, since, PROPAGATION).await;
    eprintln!("delete on A rejected on B after {took:?}");
    let (status, _) = status_message(b.login_response("erin@example.test", PASSWORD).await).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a deleted user cannot log in on B"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(postgres_tests),
    ignore = "set MEIRO_GATE_TEST_POSTGRES_URL to run it"
)]
async fn a_password_reset_on_a_ends_the_sessions_on_b_within_a_second() {
    let Some((_replicas, a, b)) = two_replicas("reset_propagates").await else {
        return;
    };
    let user = a.add_user("dave@example.test", Role::User).await;
    let token = b.login("dave@example.test").await;
    accepted(&b, &token).await;
    // The reset e-mail's token, stored as `POST /users/password` would (tests/passwords.rs
    // covers the e-mail itself).
    let reset_token = "reset-token-of-dave-0123456789abcdef";
    let digest: String =
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, reset_token.as_bytes())
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
    let now = a.clock.now();
    a.app()
        .auth()
        .store()
        .create_password_reset(&PasswordReset {
            digest,
            user_id: user.id,
            created: now,
            expires_at: now + 3600,
            used_at: None,
        })
        .await
        .unwrap();

    let since = Instant::now();
    let response = a
        .http
        .patch(a.url("/users/password"))
        .json(&serde_json::json!({
            "email": "dave@example.test",
            "password": "a brand new passphrase",
            "token": reset_token,
        }))
        .send()
        .await
        .unwrap();
    let (status, body) = status_json(response).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    rejected_within(&b, &token, since, PROPAGATION).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(postgres_tests),
    ignore = "set MEIRO_GATE_TEST_POSTGRES_URL to run it"
)]
async fn when_a_stops_mid_traffic_b_keeps_serving() {
    let Some((_replicas, a, b)) = two_replicas("a_stops_b_serves").await else {
        return;
    };
    a.add_user("erin@example.test", Role::User).await;
    let token = a.login("erin@example.test").await;
    accepted(&a, &token).await;

    let traffic = tokio::spawn({
        let (http, url, token) = (b.http.clone(), b.url("/resource"), token.clone());
        async move {
            let mut statuses = Vec::new();
            for _ in 0..200 {
                let response = http.get(&url).header("x-access-token", &token).send().await;
                statuses.push(
                    response
                        .map(|r| r.status().as_u16())
                        .map_err(|e| e.to_string()),
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            statuses
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(a.shutdown().await, "A drained");
    let statuses = traffic.await.unwrap();
    assert!(statuses.iter().all(|s| s == &Ok(200)), "{statuses:?}");

    // B alone still does everything, including ending the session A issued.
    let again = b.login("erin@example.test").await;
    accepted(&b, &again).await;
    let since = Instant::now();
    b.logout(&token).await;
    rejected_within(&b, &token, since, PROPAGATION).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(postgres_tests),
    ignore = "set MEIRO_GATE_TEST_POSTGRES_URL to run it"
)]
async fn revocations_keep_propagating_after_the_listeners_connections_are_killed() {
    let Some((replicas, a, b)) = two_replicas("listener_reconnects").await else {
        return;
    };
    a.add_user("frank@example.test", Role::User).await;
    let first = a.login("frank@example.test").await;
    let second = a.login("frank@example.test").await;
    for token in [&first, &second] {
        accepted(&b, token).await;
    }

    assert_eq!(replicas.schema.terminate_listeners().await, 2);
    // Right away, while the listeners may still be reconnecting: the feed is re-read on
    // re-subscribing (and polled meanwhile), so this is not lost.
    let since = Instant::now();
    a.logout(&first).await;
    rejected_within(&b, &first, since, PROPAGATION).await;

    // Once they are back, revocations are pushed again: the poll while subscribed (every 5 s)
    // could not make the second.
    eventually!(
        replicas.schema.listeners().await == 2,
        "both listeners reconnected"
    );
    let since = Instant::now();
    a.logout(&second).await;
    let took = rejected_within(&b, &second, since, PROPAGATION).await;
    eprintln!("after reconnecting, a logout on A was rejected on B after {took:?}");
}

/// Sends a request with each token at once to `gw`; asserts every one was accepted.
async fn all_accepted_at_once(gw: &Gateway, tokens: &[String]) {
    let mut requests = tokio::task::JoinSet::new();
    for token in tokens {
        let (http, url, token) = (gw.http.clone(), gw.url("/resource"), token.clone());
        requests.spawn(async move {
            let response = http.get(url).header("x-access-token", token).send().await;
            response.unwrap().status()
        });
    }
    let statuses = requests.join_all().await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
}

/// A restart, a failover or a pooler dropping idle connections kills every pooled connection
/// of replica B while the database stays up: no request fails. Right after each kill, `/readyz`,
/// cache misses (tokens B has never seen), a login, a refresh and a logout answer as they
/// would have, each meeting a dead connection first.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(postgres_tests),
    ignore = "set MEIRO_GATE_TEST_POSTGRES_URL to run it"
)]
async fn killing_a_replicas_pooled_connections_fails_no_request() {
    let Some(replicas) = Replicas::new("dead_connections").await else {
        return;
    };
    let name = format!("mg_test_{}", uuid::Uuid::new_v4().simple());
    let a = replicas.start("").await;
    let b = replicas.start_named(&name, "").await;
    eventually!(
        replicas.schema.listeners().await == 2,
        "both replicas listen for revocations"
    );
    let user = a.add_user("lena@example.test", Role::User).await;
    // Sessions opened on A: B has none of these tokens cached, so each is a store lookup there.
    let mut unseen = Vec::new();
    for _ in 0..12 {
        unseen.push(a.app().auth().start_session(&user).await.unwrap().token);
    }
    // Several connections in B's pool, all idle before each kill.
    all_accepted_at_once(&b, &unseen[..4]).await;
    let kill = async || {
        let killed = replicas.schema.terminate_pooled(&name).await;
        assert!(killed >= 1, "B's pooled connections killed");
    };
    let status_body =
        async |response: reqwest::Response| (response.status(), response.text().await.unwrap());
    let readyz =
        async || status_body(b.http.get(b.admin_url("/readyz")).send().await.unwrap()).await;

    kill().await;
    let (status, body) = readyz().await;
    assert_eq!(status, StatusCode::OK, "/readyz: {body}");

    kill().await;
    let (status, body) = status_body(b.get_with_token("/resource", &unseen[4]).await).await;
    assert_eq!(status, StatusCode::OK, "a cache miss: {body}");

    kill().await;
    all_accepted_at_once(&b, &unseen[5..]).await;

    kill().await;
    let (status, body) = status_body(b.login_response("lena@example.test", PASSWORD).await).await;
    assert_eq!(status, StatusCode::OK, "login: {body}");

    kill().await;
    let (status, body) = status_json(b.refresh_response(&unseen[0]).await).await;
    assert_eq!(status, StatusCode::OK, "refresh: {body}");
    let refreshed = body["token"].as_str().unwrap().to_owned();

    kill().await;
    let since = Instant::now();
    b.logout(&refreshed).await;
    // Fed to A as ever.
    rejected_within(&a, &refreshed, since, PROPAGATION).await;

    let (status, body) = readyz().await;
    assert_eq!(status, StatusCode::OK, "/readyz: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(postgres_tests),
    ignore = "set MEIRO_GATE_TEST_POSTGRES_URL to run it"
)]
async fn a_revocation_the_feed_never_carried_is_caught_by_the_recheck() {
    let Some(replicas) = Replicas::new("recheck_safety_net").await else {
        return;
    };
    let b = replicas.start("[auth]\nrecheck_interval = \"10s\"\n").await;
    b.add_user("gina@example.test", Role::User).await;
    let token = b.login("gina@example.test").await;
    accepted(&b, &token).await;

    // Ended behind the gateway's back: no feed entry, no notification.
    let mut db = replicas.schema.connect().await;
    let ended = sqlx::query("UPDATE sessions SET revoked_at = 1")
        .execute(&mut db)
        .await
        .unwrap();
    assert_eq!(ended.rows_affected(), 1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    accepted(&b, &token).await; // the cache cannot know yet

    b.clock.advance(Duration::from_secs(11));
    eventually!(
        b.get_with_token("/resource", &token).await.status() == StatusCode::UNAUTHORIZED,
        "the re-check after recheck_interval found the session ended"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(postgres_tests),
    ignore = "set MEIRO_GATE_TEST_POSTGRES_URL to run it"
)]
async fn a_postgresql_outage_keeps_cached_tokens_working_and_heals_by_itself() {
    let Some(replicas) = Replicas::new("outage").await else {
        return;
    };
    let relay = Relay::to_postgres(&replicas.schema.url()).await;
    let a = replicas
        .start_via(Some(relay.addr), "[auth]\nrecheck_interval = \"10s\"\n")
        .await;
    let b = replicas.start("").await;
    a.add_user("hank@example.test", Role::User).await;
    let cached = a.login("hank@example.test").await;
    let uncached = a.login("hank@example.test").await;
    accepted(&a, &cached).await;
    let ready = a.http.get(a.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);

    relay.cut();

    // Cached tokens keep working, also once their re-check is due and fails.
    accepted(&a, &cached).await;
    a.clock.advance(Duration::from_secs(11));
    for _ in 0..5 {
        accepted(&a, &cached).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Everything that needs the store fails fast with 503 JSON (store.timeout = 1s).
    let started = Instant::now();
    let (status, message) =
        status_message(a.login_response("hank@example.test", PASSWORD).await).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "login: {message}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    let started = Instant::now();
    let (status, message) = status_message(a.get_with_token("/resource", &uncached).await).await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "cache miss: {message}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    let started = Instant::now();
    let readyz = a.http.get(a.admin_url("/readyz")).send().await.unwrap();
    let (status, message) = status_message(readyz).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(message, "store unreachable");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    relay.restore();

    eventually!(
        a.http
            .get(a.admin_url("/readyz"))
            .send()
            .await
            .unwrap()
            .status()
            == StatusCode::OK,
        "ready again once the store is back"
    );
    accepted(&a, &uncached).await;
    let fresh = a.login("hank@example.test").await;
    accepted(&a, &fresh).await;
    // The listener is back too: a logout on B reaches A within the bound again.
    eventually!(
        replicas.schema.listeners().await == 2,
        "A's listener reconnected"
    );
    let since = Instant::now();
    b.logout(&fresh).await;
    rejected_within(&a, &fresh, since, PROPAGATION).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(postgres_tests),
    ignore = "set MEIRO_GATE_TEST_POSTGRES_URL to run it"
)]
async fn failed_logins_spread_over_a_and_b_together_hit_the_account_limit() {
    let limit = "[auth.login_throttle]\nper_account = 4\n";
    let Some((_replicas, a, b)) = two_replicas_with("shared_login_limit", limit).await else {
        return;
    };
    a.add_user("jack@example.test", Role::User).await;
    for gw in [&a, &b, &a, &b] {
        let (status, message) = status_message(
            gw.login_response("jack@example.test", "wrong password")
                .await,
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{message}");
    }
    // Four failures in all, two on each: the account is blocked on both, even for the right
    // password.
    for gw in [&a, &b] {
        let response = gw.login_response("jack@example.test", PASSWORD).await;
        assert!(response.headers().contains_key("retry-after"));
        let (status, message) = status_message(response).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{message}");
    }
}

/// The revocation delay over many logouts: each token is cached on B, logged out on A over
/// HTTP, and B is asked (through its auth layer, ~1 ms apart) until it rejects it. Prints the
/// median and the worst. Run with
/// `cargo test --test replicas -- --ignored --nocapture revocation_delay`.
#[ignore = "a measurement; run explicitly"]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revocation_delay_over_many_logouts() {
    const LOGOUTS: usize = 200;
    let Some((_replicas, a, b)) = two_replicas("revocation_delay").await else {
        return;
    };
    let user = a.add_user("ivy@example.test", Role::User).await;
    let mut delays = Vec::with_capacity(LOGOUTS);
    for _ in 0..LOGOUTS {
        // Sessions opened directly: argon2 is not what is measured.
        let token = a.app().auth().start_session(&user).await.unwrap().token;
        b.app().auth().authenticate(&token).await.unwrap();
        let since = Instant::now();
        a.logout(&token).await;
        while b.app().auth().authenticate(&token).await.is_ok() {
            assert!(since.elapsed() < Duration::from_secs(5), "never rejected");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        delays.push(since.elapsed());
    }
    delays.sort();
    let pct = |p: usize| delays[(delays.len() * p / 100).min(delays.len() - 1)];
    eprintln!(
        "revocation delay over {LOGOUTS} logouts (logout sent on A -> rejected on B): \
         min {:?}, median {:?}, p90 {:?}, p99 {:?}, worst {:?}",
        delays[0],
        pct(50),
        pct(90),
        pct(99),
        delays[delays.len() - 1]
    );
    assert!(delays[delays.len() - 1] <= PROPAGATION);
}
