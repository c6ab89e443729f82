//! Access tokens: JWTs signed with Ed25519 (EdDSA) or P-256 (ES256) keys (`kid` in the header),
//! and the JWKS document that lets Meiro backends verify tokens themselves. The key files they
//! are built from are `key_files`'.
//!
//! Each key verifies only with its own algorithm: `alg: none` does not parse, HS256 "signed"
//! with our public key, an ES256 header on an Ed25519 key (and the reverse) and any other
//! algorithm fail that key's allow-list, and an unknown `kid` has no key to verify with.

use std::collections::HashMap;

use aws_lc_rs::rand::SystemRandom;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::key_files::KeyFile;
use crate::types::{SessionId, UnixTime, UserId};

pub use crate::types::SigningAlgorithm;

fn jwt_algorithm(alg: SigningAlgorithm) -> Algorithm {
    match alg {
        SigningAlgorithm::EdDsa => Algorithm::EdDSA,
        SigningAlgorithm::Es256 => Algorithm::ES256,
    }
}

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: UserId,
    pub sid: SessionId,
    pub jti: Uuid,
    pub iat: UnixTime,
    pub exp: UnixTime,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("token signed with an unknown key")]
    UnknownKey,
    #[error("invalid token: {0}")]
    Invalid(#[source] jsonwebtoken::errors::Error),
    #[error("signing failed: {0}")]
    Signing(#[source] jsonwebtoken::errors::Error),
}

struct SigningKey {
    kid: String,
    alg: SigningAlgorithm,
    key: EncodingKey,
    /// From this time on (this replica's clock) the key may sign: see [`KeySet::signing_key`].
    active_from: UnixTime,
}

/// A public key and the only algorithm it verifies.
struct VerifyingKey {
    key: DecodingKey,
    /// Allows exactly this key's algorithm, so a header naming another one fails.
    validation: Validation,
}

/// One snapshot of the key directory: every key that verifies, and which of them signs when.
/// Immutable; [`super::keyring::Keyring`] swaps in a new one when the directory changes.
pub struct KeySet {
    /// Oldest first (file names start with the creation time); never empty.
    signers: Vec<SigningKey>,
    verifying: HashMap<String, VerifyingKey>,
    jwks: Bytes,
    issuer: String,
}

impl KeySet {
    /// Builds the set from key files; `active_from(kid)` says when each may start signing.
    /// `None` when `files` is empty.
    pub(crate) fn build(
        files: Vec<KeyFile>,
        issuer: &str,
        active_from: impl Fn(&str) -> UnixTime,
    ) -> Option<KeySet> {
        let mut verifying = HashMap::new();
        let mut jwks_keys = Vec::new();
        let mut signers = Vec::with_capacity(files.len());
        for key in files {
            let (decoding, encoding, jwk) = match key.alg {
                SigningAlgorithm::EdDsa => (
                    DecodingKey::from_ed_der(&key.public),
                    EncodingKey::from_ed_der(&key.pkcs8),
                    serde_json::json!({
                        "kty": "OKP",
                        "crv": "Ed25519",
                        "alg": "EdDSA",
                        "use": "sig",
                        "kid": key.kid,
                        "x": URL_SAFE_NO_PAD.encode(&key.public),
                    }),
                ),
                SigningAlgorithm::Es256 => {
                    // An uncompressed SEC1 point: 0x04, then x and y (32 bytes each).
                    let (x, y) = key.public[1..].split_at(32);
                    (
                        DecodingKey::from_ec_der(&key.public),
                        EncodingKey::from_ec_der(&key.pkcs8),
                        serde_json::json!({
                            "kty": "EC",
                            "crv": "P-256",
                            "alg": "ES256",
                            "use": "sig",
                            "kid": key.kid,
                            "x": URL_SAFE_NO_PAD.encode(x),
                            "y": URL_SAFE_NO_PAD.encode(y),
                        }),
                    )
                }
            };
            jwks_keys.push(jwk);
            verifying.insert(
                key.kid.clone(),
                VerifyingKey {
                    key: decoding,
                    validation: validation(key.alg, issuer),
                },
            );
            signers.push(SigningKey {
                active_from: active_from(&key.kid),
                kid: key.kid,
                alg: key.alg,
                key: encoding,
            });
        }
        if signers.is_empty() {
            return None;
        }
        // Every key is published, active or not: a backend that verifies tokens itself (JWKS)
        // then has a new key before any token signed with it exists.
        let jwks = serde_json::to_vec(&serde_json::json!({ "keys": jwks_keys }))
            .expect("a JSON value always serializes");
        Some(KeySet {
            signers,
            verifying,
            jwks: Bytes::from(jwks),
            issuer: issuer.to_owned(),
        })
    }

    /// The key that signs at `now`: the newest active one. When none is active yet (every
    /// key was replaced at once), the one that activates first (the newest of those).
    fn signing_key(&self, now: UnixTime) -> &SigningKey {
        self.signers
            .iter()
            .rev()
            .find(|k| k.active_from <= now)
            .or_else(|| self.signers.iter().rev().min_by_key(|k| k.active_from))
            .expect("a key set is never empty")
    }

    /// The `kid` of the key that signs at `now`.
    pub fn signing_kid(&self, now: UnixTime) -> &str {
        &self.signing_key(now).kid
    }

    /// The algorithm of the key that signs at `now`.
    pub fn signing_algorithm(&self, now: UnixTime) -> SigningAlgorithm {
        self.signing_key(now).alg
    }

    /// Every `kid` that verifies, oldest first.
    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.signers.iter().map(|k| k.kid.as_str())
    }

    pub(crate) fn has_kid(&self, kid: &str) -> bool {
        self.verifying.contains_key(kid)
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// `{"keys":[…]}` for `/.well-known/jwks.json`.
    pub fn jwks_json(&self) -> Bytes {
        self.jwks.clone()
    }

    /// Signs with the key that is the signing key at `now`.
    pub fn sign(&self, claims: &Claims, now: UnixTime) -> Result<String, TokenError> {
        let signing = self.signing_key(now);
        let mut header = Header::new(jwt_algorithm(signing.alg));
        header.kid = Some(signing.kid.clone());
        jsonwebtoken::encode(&header, claims, &signing.key).map_err(TokenError::Signing)
    }

    /// Checks the header, `kid`, that `alg` is that key's algorithm, the signature and the
    /// issuer. Does NOT check expiry: see [`is_expired`].
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        self.verify_with_kid(header.kid.as_deref(), token)
    }

    /// [`KeySet::verify`] with the header's `kid` already read.
    pub(crate) fn verify_with_kid(
        &self,
        kid: Option<&str>,
        token: &str,
    ) -> Result<Claims, TokenError> {
        let key = kid
            .and_then(|kid| self.verifying.get(kid))
            .ok_or(TokenError::UnknownKey)?;
        // `key.validation` allows only the key's own algorithm: jsonwebtoken rejects any other
        // header `alg` before looking at the signature.
        jsonwebtoken::decode::<Claims>(token, &key.key, &key.validation)
            .map(|data| data.claims)
            .map_err(TokenError::Invalid)
    }
}

/// What the library checks for a key of `alg`: that algorithm only, signature, issuer.
fn validation(alg: SigningAlgorithm, issuer: &str) -> Validation {
    let mut validation = Validation::new(jwt_algorithm(alg));
    // Expiry is checked by the caller against the injectable clock (and refresh/logout
    // must accept expired tokens), so the library checks signature, alg and issuer only.
    validation.validate_exp = false;
    validation.leeway = 0;
    validation.set_issuer(&[issuer]);
    validation.set_required_spec_claims(&["exp", "iss", "sub"]);
    validation
}

/// `N` random bytes, base64url without padding: for one-time tokens and nonces.
pub(crate) fn random_base64url<const N: usize>() -> Result<String, super::AuthError> {
    let mut bytes = [0u8; N];
    aws_lc_rs::rand::SecureRandom::fill(&SystemRandom::new(), &mut bytes)
        .map_err(|_| super::AuthError::Internal("the system random source failed".into()))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// A token is valid up to, not including, its `exp` second (RFC 7519 §4.1.4).
pub fn is_expired(exp: UnixTime, now: UnixTime) -> bool {
    now >= exp
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::path::Path;

    use aws_lc_rs::signature::EcdsaKeyPair;

    use crate::auth::key_files::{
        KeyError, PEM_TAG, create_and_read_keys, generate_key, pem_files, read_key, read_keys,
    };

    fn claims(iss: &str) -> Claims {
        Claims {
            iss: iss.into(),
            sub: UserId::new_random(),
            sid: SessionId::new_random(),
            jti: Uuid::new_v4(),
            iat: 1_000,
            exp: 2_000,
        }
    }

    fn keyset(dir: &Path) -> KeySet {
        keyset_of(dir, SigningAlgorithm::EdDsa)
    }

    /// Any time: every key of [`keyset_of`] is active from 0.
    const NOW: UnixTime = 1_000;

    /// The keys of `dir` (a first key of `alg` generated if there is none), all active.
    fn keyset_of(dir: &Path, alg: SigningAlgorithm) -> KeySet {
        if create_and_read_keys(dir).unwrap().is_empty() {
            generate_key(dir, alg).unwrap();
        }
        KeySet::build(read_keys(dir).unwrap(), "https://gate.test", |_| 0).unwrap()
    }

    /// `claims` signed with `key` under a header naming `alg` and `kid`, whatever they are.
    fn forge(alg: Algorithm, kid: &str, key: &EncodingKey) -> String {
        let mut header = Header::new(alg);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, &claims("https://gate.test"), key).unwrap()
    }

    #[test]
    fn signs_and_verifies_and_keeps_the_kid() {
        let dir = tempfile::tempdir().unwrap();
        let keys = keyset(dir.path());
        let c = claims("https://gate.test");
        let token = keys.sign(&c, NOW).unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, Algorithm::EdDSA);
        assert_eq!(header.kid.as_deref(), Some(keys.signing_kid(NOW)));
        assert_eq!(keys.verify(&token).unwrap(), c);
    }

    #[cfg(unix)]
    #[test]
    fn key_files_are_private_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let first = keyset(dir.path());
        let files = pem_files(dir.path()).unwrap();
        assert_eq!(files.len(), 1);
        let mode = fs::metadata(&files[0]).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let token = first.sign(&claims("https://gate.test"), NOW).unwrap();
        let again = keyset(dir.path());
        assert!(again.verify(&token).is_ok(), "a restart keeps verifying");
    }

    #[test]
    fn rotation_signs_with_the_new_key_and_still_verifies_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let old = keyset(dir.path());
        let old_token = old.sign(&claims("https://gate.test"), NOW).unwrap();
        // A later creation time sorts after the first key.
        std::thread::sleep(std::time::Duration::from_millis(2));
        let new_kid = generate_key(dir.path(), SigningAlgorithm::EdDsa).unwrap();
        let rotated = keyset(dir.path());
        assert_eq!(rotated.signing_kid(NOW), new_kid);
        assert!(rotated.verify(&old_token).is_ok());
        let jwks: serde_json::Value = serde_json::from_slice(&rotated.jwks_json()).unwrap();
        assert_eq!(jwks["keys"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn rejects_wrong_issuer_unknown_kid_tampering_and_foreign_algorithms() {
        let dir = tempfile::tempdir().unwrap();
        let keys = keyset(dir.path());

        let wrong_iss = keys.sign(&claims("https://evil.test"), NOW).unwrap();
        assert!(matches!(
            keys.verify(&wrong_iss),
            Err(TokenError::Invalid(_))
        ));

        let other_dir = tempfile::tempdir().unwrap();
        let foreign = keyset(other_dir.path())
            .sign(&claims("https://gate.test"), NOW)
            .unwrap();
        assert!(matches!(keys.verify(&foreign), Err(TokenError::UnknownKey)));

        let good = keys.sign(&claims("https://gate.test"), NOW).unwrap();
        let mut parts: Vec<&str> = good.split('.').collect();
        let mut forged_claims = claims("https://gate.test");
        forged_claims.exp = i64::MAX / 2;
        let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged_claims).unwrap());
        parts[1] = &forged_payload;
        assert!(matches!(
            keys.verify(&parts.join(".")),
            Err(TokenError::Invalid(_))
        ));

        // alg: none with our kid
        let none_header = URL_SAFE_NO_PAD.encode(format!(
            r#"{{"alg":"none","typ":"JWT","kid":"{}"}}"#,
            keys.signing_kid(NOW)
        ));
        let none_token = format!("{none_header}.{forged_payload}.");
        assert!(keys.verify(&none_token).is_err());

        // HS256 keyed with our public key, under our kid (the classic confusion attack)
        let public = &keys.jwks_json();
        let jwks: serde_json::Value = serde_json::from_slice(public).unwrap();
        let x = jwks["keys"][0]["x"].as_str().unwrap();
        let mut hs_header = Header::new(Algorithm::HS256);
        hs_header.kid = Some(keys.signing_kid(NOW).to_owned());
        let hs_token = jsonwebtoken::encode(
            &hs_header,
            &claims("https://gate.test"),
            &EncodingKey::from_secret(&URL_SAFE_NO_PAD.decode(x).unwrap()),
        )
        .unwrap();
        assert!(keys.verify(&hs_token).is_err());

        assert!(matches!(keys.verify("garbage"), Err(TokenError::Malformed)));
    }

    #[test]
    fn es256_signs_and_verifies_and_keeps_the_kid() {
        let dir = tempfile::tempdir().unwrap();
        let keys = keyset_of(dir.path(), SigningAlgorithm::Es256);
        assert_eq!(keys.signing_algorithm(NOW), SigningAlgorithm::Es256);
        let c = claims("https://gate.test");
        let token = keys.sign(&c, NOW).unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, Algorithm::ES256);
        assert_eq!(header.kid.as_deref(), Some(keys.signing_kid(NOW)));
        assert_eq!(keys.verify(&token).unwrap(), c);
        // A P-256 signature is r || s, 64 bytes.
        let signature = URL_SAFE_NO_PAD
            .decode(token.rsplit('.').next().unwrap())
            .unwrap();
        assert_eq!(signature.len(), 64);

        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let mut forged = c.clone();
        forged.exp += 1;
        parts[1] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        assert!(matches!(
            keys.verify(&parts.join(".")),
            Err(TokenError::Invalid(_))
        ));
    }

    #[cfg(unix)]
    #[test]
    fn es256_key_files_are_private_pkcs8_and_keep_their_algorithm() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let first = keyset_of(dir.path(), SigningAlgorithm::Es256);
        let files = pem_files(dir.path()).unwrap();
        assert_eq!(files.len(), 1);
        let mode = fs::metadata(&files[0]).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = fs::read_to_string(&files[0]).unwrap();
        assert!(text.starts_with("-----BEGIN PRIVATE KEY-----"), "{text}");
        assert_eq!(
            files[0].file_stem().unwrap().to_str().unwrap(),
            first.signing_kid(NOW)
        );
        let token = first.sign(&claims("https://gate.test"), NOW).unwrap();
        // Loaded with another configured algorithm, the file still is what it is.
        let again = keyset_of(dir.path(), SigningAlgorithm::EdDsa);
        assert_eq!(again.signing_algorithm(NOW), SigningAlgorithm::Es256);
        assert!(again.verify(&token).is_ok());
    }

    #[test]
    fn es256_jwks_publishes_the_ec_point_only() {
        let dir = tempfile::tempdir().unwrap();
        let keys = keyset_of(dir.path(), SigningAlgorithm::Es256);
        let jwks: serde_json::Value = serde_json::from_slice(&keys.jwks_json()).unwrap();
        let key = &jwks["keys"][0];
        let mut names: Vec<&str> = key
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        names.sort_unstable();
        assert_eq!(names, ["alg", "crv", "kid", "kty", "use", "x", "y"]);
        assert_eq!(key["kty"], "EC");
        assert_eq!(key["crv"], "P-256");
        assert_eq!(key["alg"], "ES256");
        assert_eq!(key["use"], "sig");
        assert_eq!(key["kid"], keys.signing_kid(NOW));
        for coordinate in ["x", "y"] {
            let bytes = URL_SAFE_NO_PAD
                .decode(key[coordinate].as_str().unwrap())
                .unwrap();
            assert_eq!(bytes.len(), 32, "{coordinate}");
        }
        // What a Meiro backend does with it: build the key from the JWK and verify a token.
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(key.clone()).unwrap();
        let decoding = DecodingKey::from_jwk(&jwk).unwrap();
        let token = keys.sign(&claims("https://gate.test"), NOW).unwrap();
        let mut validation = Validation::new(Algorithm::ES256);
        validation.validate_exp = false;
        assert!(jsonwebtoken::decode::<Claims>(&token, &decoding, &validation).is_ok());
    }

    #[test]
    fn a_mixed_key_set_verifies_each_key_with_its_own_algorithm() {
        let dir = tempfile::tempdir().unwrap();
        let ed = keyset_of(dir.path(), SigningAlgorithm::EdDsa);
        let ed_token = ed.sign(&claims("https://gate.test"), NOW).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let es_kid = generate_key(dir.path(), SigningAlgorithm::Es256).unwrap();

        let mixed = keyset_of(dir.path(), SigningAlgorithm::Es256);
        assert_eq!(mixed.signing_kid(NOW), es_kid, "the newest key signs");
        assert_eq!(mixed.signing_algorithm(NOW), SigningAlgorithm::Es256);
        let es_token = mixed.sign(&claims("https://gate.test"), NOW).unwrap();
        assert_eq!(
            jsonwebtoken::decode_header(&es_token).unwrap().alg,
            Algorithm::ES256
        );
        assert!(mixed.verify(&ed_token).is_ok(), "old Ed25519 token");
        assert!(mixed.verify(&es_token).is_ok(), "new ES256 token");

        let jwks: serde_json::Value = serde_json::from_slice(&mixed.jwks_json()).unwrap();
        let kinds: Vec<(&str, &str)> = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| (k["kty"].as_str().unwrap(), k["alg"].as_str().unwrap()))
            .collect();
        assert_eq!(kinds, [("OKP", "EdDSA"), ("EC", "ES256")]);
    }

    #[test]
    fn a_header_alg_other_than_the_keys_own_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let ed = keyset_of(dir.path(), SigningAlgorithm::EdDsa);
        let ed_kid = ed.signing_kid(NOW).to_owned();
        std::thread::sleep(std::time::Duration::from_millis(2));
        generate_key(dir.path(), SigningAlgorithm::Es256).unwrap();
        let keys = keyset_of(dir.path(), SigningAlgorithm::Es256);
        let es_kid = keys.signing_kid(NOW).to_owned();
        let es_pkcs8 = read_key(&dir.path().join(format!("{es_kid}.pem")))
            .unwrap()
            .pkcs8;
        let ed_pkcs8 = read_key(&dir.path().join(format!("{ed_kid}.pem")))
            .unwrap()
            .pkcs8;

        // Genuine signatures by our own keys, each under the other key's kid.
        let es_under_ed_kid = forge(
            Algorithm::ES256,
            &ed_kid,
            &EncodingKey::from_ec_der(&es_pkcs8),
        );
        let ed_under_es_kid = forge(
            Algorithm::EdDSA,
            &es_kid,
            &EncodingKey::from_ed_der(&ed_pkcs8),
        );
        for token in [&es_under_ed_kid, &ed_under_es_kid] {
            match keys.verify(token) {
                Err(TokenError::Invalid(e)) => assert_eq!(
                    *e.kind(),
                    jsonwebtoken::errors::ErrorKind::InvalidAlgorithm,
                    "{token}"
                ),
                other => panic!("{token}: {other:?}"),
            }
        }

        // HS256 keyed with the published EC x coordinate under the ES256 kid.
        let jwks: serde_json::Value = serde_json::from_slice(&keys.jwks_json()).unwrap();
        let x = jwks["keys"][1]["x"].as_str().unwrap();
        let hs = forge(
            Algorithm::HS256,
            &es_kid,
            &EncodingKey::from_secret(&URL_SAFE_NO_PAD.decode(x).unwrap()),
        );
        assert!(keys.verify(&hs).is_err());

        // alg: none under the ES256 kid.
        let none_header =
            URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"none","typ":"JWT","kid":"{es_kid}"}}"#));
        let payload =
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims("https://gate.test")).unwrap());
        assert!(keys.verify(&format!("{none_header}.{payload}.")).is_err());
    }

    #[test]
    fn a_key_of_another_curve_is_a_bad_key() {
        let dir = tempfile::tempdir().unwrap();
        let p384 = EcdsaKeyPair::generate_pkcs8(
            &aws_lc_rs::signature::ECDSA_P384_SHA384_FIXED_SIGNING,
            &SystemRandom::new(),
        )
        .unwrap();
        let path = dir.path().join("000000000000001-p384.pem");
        let pem = pem::encode(&pem::Pem::new(PEM_TAG, p384.as_ref().to_vec()));
        fs::write(&path, pem).unwrap();
        assert!(matches!(
            read_keys(dir.path()),
            Err(KeyError::BadKey { .. })
        ));
    }

    #[test]
    fn algorithm_names_are_the_jws_names() {
        for alg in [SigningAlgorithm::EdDsa, SigningAlgorithm::Es256] {
            assert_eq!(SigningAlgorithm::parse(alg.as_str()), Some(alg));
            assert_eq!(
                serde_json::to_value(alg).unwrap(),
                serde_json::Value::from(alg.as_str())
            );
        }
        for other in ["eddsa", "es256", "HS256", "none", "RS256", ""] {
            assert_eq!(SigningAlgorithm::parse(other), None, "{other}");
        }
        assert_eq!(SigningAlgorithm::default(), SigningAlgorithm::EdDsa);
    }

    /// Three keys in one directory, oldest first, with distinct creation times.
    fn three_keys(dir: &Path) -> Vec<String> {
        (0..3)
            .map(|_| {
                std::thread::sleep(std::time::Duration::from_millis(2));
                generate_key(dir, SigningAlgorithm::EdDsa).unwrap()
            })
            .collect()
    }

    fn keyset_active_from(dir: &Path, active_from: &[(&str, UnixTime)]) -> KeySet {
        let map: HashMap<&str, UnixTime> = active_from.iter().copied().collect();
        KeySet::build(read_keys(dir).unwrap(), "https://gate.test", |kid| map[kid]).unwrap()
    }

    #[test]
    fn the_newest_active_key_signs_and_a_key_signs_from_its_activation_second_on() {
        let dir = tempfile::tempdir().unwrap();
        let kids = three_keys(dir.path());
        let keys = keyset_active_from(
            dir.path(),
            &[(&kids[0], 0), (&kids[1], 100), (&kids[2], 200)],
        );
        assert_eq!(keys.signing_kid(99), kids[0]);
        assert_eq!(
            keys.signing_kid(100),
            kids[1],
            "active at its activation second"
        );
        assert_eq!(keys.signing_kid(199), kids[1]);
        assert_eq!(keys.signing_kid(200), kids[2]);
        let token = keys.sign(&claims("https://gate.test"), 150).unwrap();
        assert_eq!(
            jsonwebtoken::decode_header(&token).unwrap().kid.as_deref(),
            Some(kids[1].as_str())
        );
        // Inactive keys verify all the same: another replica may already sign with them.
        let newest_only =
            keyset_active_from(dir.path(), &[(&kids[0], 0), (&kids[1], 0), (&kids[2], 0)]);
        let by_newest = newest_only.sign(&claims("https://gate.test"), 0).unwrap();
        assert!(keys.verify(&by_newest).is_ok());
    }

    #[test]
    fn an_older_key_activating_later_does_not_displace_a_newer_active_one() {
        let dir = tempfile::tempdir().unwrap();
        let kids = three_keys(dir.path());
        // The oldest file reappeared (re-added to the Secret) after the others were active.
        let keys = keyset_active_from(
            dir.path(),
            &[(&kids[0], 500), (&kids[1], 0), (&kids[2], 300)],
        );
        assert_eq!(keys.signing_kid(100), kids[1]);
        assert_eq!(
            keys.signing_kid(600),
            kids[2],
            "newest active, not last activated"
        );
    }

    #[test]
    fn with_no_active_key_the_first_to_activate_signs() {
        let dir = tempfile::tempdir().unwrap();
        let kids = three_keys(dir.path());
        let keys = keyset_active_from(
            dir.path(),
            &[(&kids[0], 300), (&kids[1], 200), (&kids[2], 200)],
        );
        // Every key was replaced at once: nothing is active, so signing must not wait.
        assert_eq!(
            keys.signing_kid(0),
            kids[2],
            "earliest activation, newest of a tie"
        );
        assert_eq!(keys.signing_kid(250), kids[2]);
    }

    #[test]
    fn expiry_is_exclusive() {
        assert!(!is_expired(100, 99));
        assert!(is_expired(100, 100));
    }
}
