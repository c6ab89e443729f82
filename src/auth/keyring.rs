//! The signing keys as the key directory (`auth.keys_dir`) holds them *now*, so replicas that
//! share the directory (a Kubernetes Secret mounted on each) verify each other's tokens and
//! follow a `meiro-gate keys rotate` without a restart.
//!
//! The directory is re-read (a) when a token names a `kid` this replica does not know — at
//! most once per [`UNKNOWN_KID_RESCAN_GAP`], so forged kids cannot turn into a flood of
//! directory reads — (b) every `auth.keys_rescan_interval`, and (c) on SIGHUP. Each scan swaps
//! in a new immutable [`KeySet`]: verification loads it with one `arc-swap` load (no lock, no
//! allocation), and the token cache's hit path never touches keys at all.
//!
//! A new key signs only `auth.key_activation_delay` after this replica first saw it. The kubelet
//! updates a mounted Secret on each node at its own time (up to about a minute apart); if a
//! replica signed with a key the moment it appeared, a token of it could reach a replica whose
//! copy of the Secret is still old and be refused. Waiting longer than that sync lag means
//! every replica holds the key before any replica signs with it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use tokio::sync::watch;

use super::Clock;
use super::key_files::{KeyError, create_and_read_keys, generate_key, read_keys};
use super::tokens::{Claims, KeySet, SigningAlgorithm, TokenError};
use crate::store::UnixTime;

/// The shortest time between two directory scans caused by unknown kids.
pub const UNKNOWN_KID_RESCAN_GAP: Duration = Duration::from_secs(1);

/// The signing and verification keys of this replica, following the key directory.
pub struct Keyring {
    dir: PathBuf,
    issuer: String,
    activation_delay: i64,
    clock: Clock,
    current: ArcSwap<KeySet>,
    /// Held for the whole of a scan: concurrent unknown-kid misses wait for one scan and then
    /// see its result instead of each reading the directory.
    scan: Mutex<ScanState>,
    /// Directory scans since start (the first load included): for tests and diagnostics.
    scans: AtomicU64,
}

struct ScanState {
    /// When the directory was last read (by any trigger).
    last: Instant,
    /// When each known key may start signing (this replica's clock). Kept across scans so a
    /// key's activation is measured from the first scan that found it.
    active_from: HashMap<String, UnixTime>,
}

impl Keyring {
    /// Loads every key in `dir`, creating the directory and a first key of algorithm `alg` when
    /// there is none.
    ///
    /// At start, every key but the newest counts as active: a newer key exists, so it was
    /// distributed before that one. The newest waits `activation_delay` like a key found by a
    /// later scan (a restart right after a rotation must not sign with a key the other
    /// replicas may not have yet), except when it is the only key: then nothing else can sign.
    pub fn open(
        dir: &Path,
        issuer: &str,
        alg: SigningAlgorithm,
        activation_delay: Duration,
        clock: Clock,
    ) -> Result<Keyring, KeyError> {
        let mut files = create_and_read_keys(dir)?;
        if files.is_empty() {
            generate_key(dir, alg)?;
            files = read_keys(dir)?;
        }
        let activation_delay = i64::try_from(activation_delay.as_secs()).unwrap_or(i64::MAX);
        let now = clock.now();
        let newest = files.last().map(|f| f.kid.clone()).unwrap_or_default();
        let active_from: HashMap<String, UnixTime> = files
            .iter()
            .map(|f| {
                let from = if f.kid == newest && files.len() > 1 {
                    now.saturating_add(activation_delay)
                } else {
                    now
                };
                (f.kid.clone(), from)
            })
            .collect();
        let keys =
            KeySet::build(files, issuer, |kid| active_from[kid]).ok_or(KeyError::Generate)?;
        let newest_alg = keys.signing_algorithm(UnixTime::MAX);
        if newest_alg != alg {
            tracing::warn!(
                kid = %newest,
                key_algorithm = newest_alg.as_str(),
                configured = alg.as_str(),
                "the newest signing key is not of auth.signing_algorithm; `meiro-gate keys rotate` adds one that is"
            );
        }
        tracing::info!(
            signing = keys.signing_kid(now),
            keys = keys.kids().count(),
            "signing keys loaded"
        );
        Ok(Keyring {
            dir: dir.to_owned(),
            issuer: issuer.to_owned(),
            activation_delay,
            clock,
            current: ArcSwap::from_pointee(keys),
            scan: Mutex::new(ScanState {
                last: Instant::now(),
                active_from,
            }),
            scans: AtomicU64::new(1),
        })
    }

    /// The keys as of the last scan.
    pub fn current(&self) -> arc_swap::Guard<Arc<KeySet>> {
        self.current.load()
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// `{"keys":[…]}` for `/.well-known/jwks.json`: every key of the last scan.
    pub fn jwks_json(&self) -> Bytes {
        self.current.load().jwks_json()
    }

    /// The algorithm of the key that signs now.
    pub fn signing_algorithm(&self) -> SigningAlgorithm {
        self.current.load().signing_algorithm(self.clock.now())
    }

    /// Signs with the newest active key.
    pub fn sign(&self, claims: &Claims) -> Result<String, TokenError> {
        self.current.load().sign(claims, self.clock.now())
    }

    /// As [`KeySet::verify`]; a `kid` not in the current set re-reads the directory first
    /// (rate-limited), so a token signed by another replica with a key this one has not seen
    /// yet verifies without waiting for the periodic scan.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        let kid = header.kid.as_deref();
        match self.current.load().verify_with_kid(kid, token) {
            Err(TokenError::UnknownKey) => {}
            known => return known,
        }
        match kid {
            Some(kid) if self.rescan_for(kid) => {
                self.current.load().verify_with_kid(Some(kid), token)
            }
            _ => Err(TokenError::UnknownKey),
        }
    }

    /// Re-reads the directory now (the periodic scan and SIGHUP). A directory that cannot be
    /// read, holds a broken key file or holds no key at all keeps the current keys.
    pub fn rescan(&self) {
        let mut state = self.scan.lock().unwrap_or_else(PoisonError::into_inner);
        self.scan_locked(&mut state);
    }

    /// Directory scans since start, the first load included.
    pub fn scans(&self) -> u64 {
        self.scans.load(Ordering::Relaxed)
    }

    /// Every `auth.keys_rescan_interval` until shutdown; the scan runs on the blocking pool.
    pub async fn rescan_periodically(
        self: Arc<Self>,
        interval: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await; // the first tick is immediate; the keys were just loaded
        loop {
            tokio::select! {
                _ = ticks.tick() => {
                    let keyring = self.clone();
                    let _ = tokio::task::spawn_blocking(move || keyring.rescan()).await;
                }
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Whether `kid` may be known now: re-scans unless another miss's scan already found it
    /// or the directory was read less than [`UNKNOWN_KID_RESCAN_GAP`] ago.
    ///
    /// It reads the directory on the calling (async) thread: the callers' `verify` is
    /// synchronous, the read is a few small files (a tmpfs on Kubernetes), and the gap bounds
    /// it to once per second whatever the traffic.
    fn rescan_for(&self, kid: &str) -> bool {
        let mut state = self.scan.lock().unwrap_or_else(PoisonError::into_inner);
        if self.current.load().has_kid(kid) {
            return true; // found by a scan this call waited for
        }
        if state.last.elapsed() < UNKNOWN_KID_RESCAN_GAP {
            return false;
        }
        self.scan_locked(&mut state);
        true
    }

    fn scan_locked(&self, state: &mut ScanState) {
        state.last = Instant::now();
        self.scans.fetch_add(1, Ordering::Relaxed);
        let files = match read_keys(&self.dir) {
            Ok(files) if files.is_empty() => {
                // Never drop the last key: a missing mount or an emptied Secret would
                // otherwise end every session and make logins fail.
                tracing::error!(dir = %self.dir.display(), "key directory holds no key; keeping the current keys");
                return;
            }
            Ok(files) => files,
            Err(e) => {
                tracing::error!(error = %e, "key directory re-scan failed; keeping the current keys");
                return;
            }
        };
        let now = self.clock.now();
        let delay = self.activation_delay;
        state
            .active_from
            .retain(|kid, _| files.iter().any(|f| &f.kid == kid));
        for file in &files {
            state
                .active_from
                .entry(file.kid.clone())
                .or_insert_with(|| now.saturating_add(delay));
        }
        let Some(keys) = KeySet::build(files, &self.issuer, |kid| state.active_from[kid]) else {
            return;
        };
        let previous = self.current.load();
        if !keys.kids().eq(previous.kids()) {
            let added: Vec<&str> = keys.kids().filter(|k| !previous.has_kid(k)).collect();
            let removed: Vec<&str> = previous.kids().filter(|k| !keys.has_kid(k)).collect();
            tracing::info!(
                ?added,
                ?removed,
                signing = keys.signing_kid(now),
                activation_delay_secs = delay,
                "signing keys changed"
            );
        }
        self.current.store(Arc::new(keys));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{SessionId, UserId};
    use uuid::Uuid;

    const ISSUER: &str = "https://gate.test";
    const DELAY: Duration = Duration::from_secs(120);

    fn open(dir: &Path, delay: Duration, clock: &Clock) -> Keyring {
        Keyring::open(dir, ISSUER, SigningAlgorithm::EdDsa, delay, clock.clone()).unwrap()
    }

    /// A new key whose name sorts after every existing one.
    fn rotate(dir: &Path) -> String {
        std::thread::sleep(Duration::from_millis(2));
        generate_key(dir, SigningAlgorithm::EdDsa).unwrap()
    }

    fn signed_kid(keys: &Keyring) -> String {
        let claims = Claims {
            iss: ISSUER.into(),
            sub: UserId::new_random(),
            sid: SessionId::new_random(),
            jti: Uuid::new_v4(),
            iat: 1_000,
            exp: 2_000,
        };
        let token = keys.sign(&claims).unwrap();
        jsonwebtoken::decode_header(&token).unwrap().kid.unwrap()
    }

    #[test]
    fn a_first_start_signs_at_once_with_the_key_it_generates() {
        let dir = tempfile::tempdir().unwrap();
        let keys = open(dir.path(), DELAY, &Clock::default());
        let files: Vec<String> = keys.current().kids().map(str::to_owned).collect();
        assert_eq!(files.len(), 1);
        assert_eq!(
            signed_kid(&keys),
            files[0],
            "the only key signs despite the delay"
        );
    }

    #[test]
    fn a_restart_signs_with_the_previous_key_until_the_newest_is_active() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Clock::default();
        let old = signed_kid(&open(dir.path(), DELAY, &clock));
        let new = rotate(dir.path());
        let restarted = open(dir.path(), DELAY, &clock);
        assert_eq!(signed_kid(&restarted), old);
        // Five seconds short: the wall clock under the offset may tick meanwhile.
        clock.advance(DELAY - Duration::from_secs(5));
        assert_eq!(signed_kid(&restarted), old, "shortly before activation");
        clock.advance(Duration::from_secs(5));
        assert_eq!(signed_kid(&restarted), new);
    }

    #[test]
    fn a_key_found_by_a_rescan_signs_after_the_delay_from_that_scan() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Clock::default();
        let keys = open(dir.path(), DELAY, &clock);
        let old = signed_kid(&keys);
        clock.advance(Duration::from_secs(3600)); // long after start: the delay counts from the scan
        let new = rotate(dir.path());
        assert_eq!(signed_kid(&keys), old, "not seen yet");
        keys.rescan();
        assert!(keys.current().has_kid(&new), "verifies at once");
        assert_eq!(signed_kid(&keys), old);
        clock.advance(Duration::from_secs(60));
        keys.rescan(); // a later scan does not restart the delay
        assert_eq!(signed_kid(&keys), old);
        clock.advance(Duration::from_secs(60));
        assert_eq!(signed_kid(&keys), new);
    }

    #[test]
    fn a_zero_delay_signs_with_a_new_key_from_the_scan_that_finds_it() {
        let dir = tempfile::tempdir().unwrap();
        let keys = open(dir.path(), Duration::ZERO, &Clock::default());
        let new = rotate(dir.path());
        keys.rescan();
        assert_eq!(signed_kid(&keys), new);
    }

    #[test]
    fn removed_keys_go_but_the_last_key_and_a_broken_directory_keep_the_current_set() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Clock::default();
        let keys = open(dir.path(), Duration::ZERO, &clock);
        let old = signed_kid(&keys);
        let new = rotate(dir.path());
        keys.rescan();
        std::fs::remove_file(dir.path().join(format!("{new}.pem"))).unwrap();
        keys.rescan();
        assert!(
            !keys.current().has_kid(&new),
            "a removed key stops verifying"
        );
        assert_eq!(signed_kid(&keys), old, "and stops signing");

        std::fs::write(dir.path().join("999999999999999-broken.pem"), "not a key").unwrap();
        keys.rescan();
        assert!(
            keys.current().has_kid(&old),
            "a broken file keeps the current keys"
        );
        std::fs::remove_file(dir.path().join("999999999999999-broken.pem")).unwrap();

        std::fs::remove_file(dir.path().join(format!("{old}.pem"))).unwrap();
        keys.rescan();
        assert_eq!(signed_kid(&keys), old, "the last key is never removed");
        std::fs::remove_dir_all(dir.path()).unwrap();
        keys.rescan();
        assert_eq!(signed_kid(&keys), old, "nor when the directory is gone");
        assert_eq!(keys.scans(), 1 + 5, "the load and five re-scans");
    }

    #[test]
    fn hidden_files_and_temp_files_are_not_keys() {
        let dir = tempfile::tempdir().unwrap();
        let keys = open(dir.path(), Duration::ZERO, &Clock::default());
        // What a Secret volume holds besides the keys, and a rotation's temp file.
        std::fs::create_dir(dir.path().join("..2026_11_29_09_00_00.000000001")).unwrap();
        std::fs::write(dir.path().join(".000000000000001-x.pem.tmp"), "partial").unwrap();
        std::fs::write(dir.path().join(".hidden.pem"), "partial").unwrap();
        keys.rescan();
        assert_eq!(keys.current().kids().count(), 1);
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".pem") && !n.starts_with('.'))
            .collect();
        assert_eq!(names.len(), 1, "rotation leaves no temp file: {names:?}");
    }
}
