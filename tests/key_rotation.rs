//! Signing keys shared by replicas (issue 8, item 3): two gateways share one store and one
//! keys directory, as replicas sharing a database and a mounted Secret. A token of either
//! verifies on the other through a `keys rotate`; removed keys stop verifying; forged `kid`s
//! cannot make a gateway read its key directory more than once a second.

mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{FakeUpstream, Gateway, kid_of, status_message};
use meiro_gate::auth::key_files::generate_key;
use meiro_gate::auth::keyring::UNKNOWN_KID_RESCAN_GAP;
use meiro_gate::auth::tokens::SigningAlgorithm;
use meiro_gate::store::Role;

const EMAIL: &str = "ada@example.com";
/// The default `auth.key_activation_delay`.
const ACTIVATION_DELAY: Duration = Duration::from_secs(120);

/// `keys rotate` as the CLI runs it, after making sure the new key's name (creation time in
/// ms) sorts after every existing one.
fn rotate(gateway: &Gateway) -> String {
    std::thread::sleep(Duration::from_millis(2));
    generate_key(&gateway.keys_dir(), SigningAlgorithm::EdDsa).unwrap()
}

fn kids(gateway: &Gateway) -> Vec<String> {
    let keys = gateway.app().auth().keys().current();
    keys.kids().map(str::to_owned).collect()
}

fn scans(gateway: &Gateway) -> u64 {
    gateway.app().auth().keys().scans()
}

/// Waits until an unknown `kid` may trigger a scan again after one at (or before) `last_scan`.
async fn rescan_gap_passed_since(last_scan: Instant) {
    let ready = last_scan + UNKNOWN_KID_RESCAN_GAP + Duration::from_millis(50);
    tokio::time::sleep_until(ready.into()).await;
}

async fn status(gateway: &Gateway, token: &str) -> u16 {
    gateway.get_with_token("/x", token).await.status().as_u16()
}

#[tokio::test]
async fn tokens_verify_on_both_replicas_before_and_after_a_rotation() {
    let up = FakeUpstream::start().await;
    let a = Gateway::start(&up).await;
    let b = Gateway::start_with(&up.url(), &a.replica_toml("")).await;
    let b_started = Instant::now(); // B read the directory before this
    a.add_user(EMAIL, Role::User).await;

    let old_token = a.login(EMAIL).await;
    let old_kid = kid_of(&old_token);
    assert_eq!(
        kids(&b),
        [old_kid.as_str()],
        "B loaded A's key from the shared directory"
    );
    assert_eq!(status(&b, &old_token).await, 200, "A's token verifies on B");
    let b_token = b.login(EMAIL).await;
    assert_eq!(status(&a, &b_token).await, 200, "and B's on A");

    let new_kid = rotate(&a);
    a.app().reload_files(); // SIGHUP: A re-reads the directory
    assert_eq!(kids(&a), [old_kid.as_str(), new_kid.as_str()]);
    let before_activation = a.login(EMAIL).await;
    assert_eq!(
        kid_of(&before_activation),
        old_kid,
        "a key just seen does not sign yet"
    );
    a.clock.advance(ACTIVATION_DELAY);
    let new_token = a.login(EMAIL).await;
    assert_eq!(kid_of(&new_token), new_kid, "active after the delay");

    // B has not re-scanned since its start (its periodic scan is 60 s away): the unknown kid
    // makes it read the directory, once.
    assert_eq!(kids(&b), [old_kid.as_str()]);
    rescan_gap_passed_since(b_started).await;
    let b_scans = scans(&b);
    assert_eq!(
        status(&b, &new_token).await,
        200,
        "the new key verifies on B"
    );
    assert_eq!(scans(&b), b_scans + 1, "through one unknown-kid scan");
    assert_eq!(status(&a, &new_token).await, 200);
    let b_jwks = b.jwks().await;
    let mut published: Vec<&str> = b_jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    published.sort_unstable();
    assert_eq!(published, [old_kid.as_str(), new_kid.as_str()]);

    // Tokens of the old key keep verifying on both: one never presented before (no cache
    // entry anywhere), and the first one checked against the keys themselves.
    assert_eq!(status(&b, &before_activation).await, 200);
    assert_eq!(status(&a, &before_activation).await, 200);
    for gateway in [&a, &b] {
        let keys = gateway.app().auth().keys();
        assert!(keys.verify(&old_token).is_ok());
        assert!(keys.verify(&b_token).is_ok());
        assert!(keys.verify(&new_token).is_ok());
    }
    // B saw the new key at its unknown-kid scan; it signs with it only after the delay.
    assert_eq!(kid_of(&b.login(EMAIL).await), old_kid);
    b.clock.advance(ACTIVATION_DELAY);
    let b_new = b.login(EMAIL).await;
    assert_eq!(kid_of(&b_new), new_kid);
    assert_eq!(status(&a, &b_new).await, 200);

    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_key_removed_from_the_directory_stops_verifying_after_a_periodic_rescan() {
    let up = FakeUpstream::start().await;
    let a = Gateway::start_with(&up.url(), "[auth]\nkey_activation_delay = \"0s\"\n").await;
    let b = Gateway::start_with(
        &up.url(),
        &a.replica_toml("keys_rescan_interval = \"1s\"\nkey_activation_delay = \"0s\""),
    )
    .await;
    a.add_user(EMAIL, Role::User).await;
    let old_kid = kid_of(&a.login(EMAIL).await);
    let new_kid = rotate(&a);
    a.app().reload_files();
    let new_token = a.login(EMAIL).await;
    assert_eq!(kid_of(&new_token), new_kid);

    // B's periodic scan (1 s here) finds the key without any token asking for it.
    eventually!(
        kids(&b).contains(&new_kid),
        "B's periodic scan did not find the new key"
    );
    std::fs::remove_file(a.keys_dir().join(format!("{new_kid}.pem"))).unwrap();
    eventually!(
        kids(&b) == [old_kid.as_str()],
        "B's periodic scan did not drop the removed key"
    );
    let keys = b.app().auth().keys();
    assert!(
        keys.verify(&new_token).is_err(),
        "a removed key stops verifying"
    );
    // Never presented to B before, so not cached: the refusal is the key's absence.
    let (code, _) = status_message(b.get_with_token("/x", &new_token).await).await;
    assert_eq!(code, 401);
    let old_key_token = b.login(EMAIL).await;
    assert_eq!(
        kid_of(&old_key_token),
        old_kid,
        "B signs with the remaining key"
    );
    assert_eq!(status(&b, &old_key_token).await, 200);

    a.shutdown().await;
    b.shutdown().await;
}

/// A token naming `kid`, with a signature that would never verify: only the `kid` matters.
fn forged(kid: &str) -> String {
    let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"EdDSA","typ":"JWT","kid":"{kid}"}}"#));
    let payload =
        URL_SAFE_NO_PAD.encode(r#"{"iss":"http://gateway.test","sub":"x","exp":9999999999}"#);
    let signature = URL_SAFE_NO_PAD.encode([7u8; 64]);
    format!("{header}.{payload}.{signature}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_kids_cost_at_most_one_directory_scan_per_second() {
    let up = FakeUpstream::start().await;
    let gateway = Gateway::start(&up).await;
    rescan_gap_passed_since(Instant::now()).await;

    let before = scans(&gateway);
    let flood_start = Instant::now();
    let mut sent = 0u32;
    // Bursts of 16 concurrent requests, each with a fresh random kid, for 2.5 s.
    while flood_start.elapsed() < Duration::from_millis(2500) {
        let burst = (0..16).map(|_| {
            let token = forged(&uuid::Uuid::new_v4().to_string());
            let gateway = &gateway;
            async move { status_message(gateway.get_with_token("/x", &token).await).await }
        });
        for (code, message) in futures_util::future::join_all(burst).await {
            assert_eq!(code, 401, "{message}");
        }
        sent += 16;
    }
    let elapsed = flood_start.elapsed();
    let scanned = scans(&gateway) - before;
    assert!(
        sent >= 100,
        "only {sent} forged tokens sent: too few to tell"
    );
    // One scan at the start, then at most one per whole second elapsed.
    let bound = 1 + elapsed.as_secs();
    assert!(
        (1..=bound).contains(&scanned),
        "{sent} forged tokens in {elapsed:?} caused {scanned} directory scans (bound {bound})"
    );
    gateway.shutdown().await;
}
