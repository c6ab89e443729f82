//! Access tokens: Ed25519-signed JWTs (`kid` in the header), the signing keys on disk, and the
//! JWKS document that lets Meiro backends verify tokens themselves.
//!
//! Only EdDSA is accepted: `alg: none` does not parse, HS256 "signed" with our public key and
//! any other algorithm fail the allow-list, and an unknown `kid` has no key to verify with.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::store::{SessionId, UnixTime, UserId};

const PEM_TAG: &str = "PRIVATE KEY";

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

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key directory {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("key file {path} is not an Ed25519 PKCS#8 PEM key")]
    BadKey { path: PathBuf },
    #[error("could not generate a key")]
    Generate,
}

struct SigningKey {
    kid: String,
    key: EncodingKey,
}

/// Every key that verifies, and the newest one, which signs.
pub struct KeySet {
    signing: SigningKey,
    verifying: HashMap<String, DecodingKey>,
    jwks: Bytes,
    issuer: String,
    validation: Validation,
}

impl KeySet {
    /// Loads every `*.pem` in `dir` (creating the directory and a first key when there is
    /// none). The lexically greatest file name is the newest key: names start with the
    /// creation time.
    pub fn load_or_generate(dir: &Path, issuer: &str) -> Result<KeySet, KeyError> {
        let mut files = pem_files(dir)?;
        if files.is_empty() {
            generate_key(dir)?;
            files = pem_files(dir)?;
        }
        let mut verifying = HashMap::new();
        let mut jwks_keys = Vec::new();
        let mut signing = None;
        for path in files {
            let (kid, pkcs8, public) = read_key(&path)?;
            verifying.insert(kid.clone(), DecodingKey::from_ed_der(&public));
            jwks_keys.push(serde_json::json!({
                "kty": "OKP",
                "crv": "Ed25519",
                "alg": "EdDSA",
                "use": "sig",
                "kid": kid,
                "x": URL_SAFE_NO_PAD.encode(&public),
            }));
            signing = Some(SigningKey {
                kid,
                key: EncodingKey::from_ed_der(&pkcs8),
            });
        }
        let signing = signing.ok_or(KeyError::Generate)?;
        let jwks = serde_json::to_vec(&serde_json::json!({ "keys": jwks_keys }))
            .expect("a JSON value always serializes");

        let mut validation = Validation::new(Algorithm::EdDSA);
        // Expiry is checked by the caller against the injectable clock (and refresh/logout
        // must accept expired tokens), so the library checks signature, alg and issuer only.
        validation.validate_exp = false;
        validation.leeway = 0;
        validation.set_issuer(&[issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);

        Ok(KeySet {
            signing,
            verifying,
            jwks: Bytes::from(jwks),
            issuer: issuer.to_owned(),
            validation,
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// `{"keys":[…]}` for `/.well-known/jwks.json`.
    pub fn jwks_json(&self) -> Bytes {
        self.jwks.clone()
    }

    pub fn sign(&self, claims: &Claims) -> Result<String, TokenError> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.signing.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.signing.key).map_err(TokenError::Signing)
    }

    /// Checks the header, `kid`, signature and issuer. Does NOT check expiry: see
    /// [`is_expired`].
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        let key = header
            .kid
            .as_deref()
            .and_then(|kid| self.verifying.get(kid))
            .ok_or(TokenError::UnknownKey)?;
        jsonwebtoken::decode::<Claims>(token, key, &self.validation)
            .map(|data| data.claims)
            .map_err(TokenError::Invalid)
    }
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

/// Writes a new Ed25519 key (0600) into `dir` and returns its `kid`. Running gateways pick it
/// up on restart; tokens signed by older keys keep verifying because old files stay.
pub fn generate_key(dir: &Path) -> Result<String, KeyError> {
    let io = |source| KeyError::Io {
        path: dir.to_owned(),
        source,
    };
    fs::create_dir_all(dir).map_err(io)?;
    let pkcs8 =
        Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| KeyError::Generate)?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| KeyError::Generate)?;
    let created_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    // Zero-padded creation time (ms) first, so file names sort oldest to newest even for two
    // rotations in the same second.
    let kid = format!(
        "{created_ms:015}-{}",
        hex8(&aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            pair.public_key().as_ref()
        ))
    );
    let path = dir.join(format!("{kid}.pem"));
    let pem = pem::encode(&pem::Pem::new(PEM_TAG, pkcs8.as_ref().to_vec()));
    write_private(&path, pem.as_bytes()).map_err(|source| KeyError::Io {
        path: path.clone(),
        source,
    })?;
    Ok(kid)
}

fn hex8(digest: &aws_lc_rs::digest::Digest) -> String {
    digest.as_ref()[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(unix)]
pub(crate) fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

#[cfg(not(unix))]
pub(crate) fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

fn pem_files(dir: &Path) -> Result<Vec<PathBuf>, KeyError> {
    let io = |source| KeyError::Io {
        path: dir.to_owned(),
        source,
    };
    fs::create_dir_all(dir).map_err(io)?;
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.extension().is_some_and(|e| e == "pem") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Returns (kid, PKCS#8 DER, raw 32-byte public key).
fn read_key(path: &Path) -> Result<(String, Vec<u8>, Vec<u8>), KeyError> {
    let bad = || KeyError::BadKey {
        path: path.to_owned(),
    };
    let text = fs::read(path).map_err(|source| KeyError::Io {
        path: path.to_owned(),
        source,
    })?;
    let pem = pem::parse(text).map_err(|_| bad())?;
    if pem.tag() != PEM_TAG {
        return Err(bad());
    }
    let pair = Ed25519KeyPair::from_pkcs8(pem.contents()).map_err(|_| bad())?;
    let kid = path
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or_else(bad)?
        .to_owned();
    Ok((
        kid,
        pem.contents().to_vec(),
        pair.public_key().as_ref().to_vec(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        KeySet::load_or_generate(dir, "https://gate.test").unwrap()
    }

    #[test]
    fn signs_and_verifies_and_keeps_the_kid() {
        let dir = tempfile::tempdir().unwrap();
        let keys = keyset(dir.path());
        let c = claims("https://gate.test");
        let token = keys.sign(&c).unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, Algorithm::EdDSA);
        assert_eq!(header.kid.as_deref(), Some(keys.signing.kid.as_str()));
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
        let token = first.sign(&claims("https://gate.test")).unwrap();
        let again = keyset(dir.path());
        assert!(again.verify(&token).is_ok(), "a restart keeps verifying");
    }

    #[test]
    fn rotation_signs_with_the_new_key_and_still_verifies_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let old = keyset(dir.path());
        let old_token = old.sign(&claims("https://gate.test")).unwrap();
        // A later creation time sorts after the first key.
        std::thread::sleep(std::time::Duration::from_millis(2));
        let new_kid = generate_key(dir.path()).unwrap();
        let rotated = keyset(dir.path());
        assert_eq!(rotated.signing.kid, new_kid);
        assert!(rotated.verify(&old_token).is_ok());
        let jwks: serde_json::Value = serde_json::from_slice(&rotated.jwks_json()).unwrap();
        assert_eq!(jwks["keys"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn rejects_wrong_issuer_unknown_kid_tampering_and_foreign_algorithms() {
        let dir = tempfile::tempdir().unwrap();
        let keys = keyset(dir.path());

        let wrong_iss = keys.sign(&claims("https://evil.test")).unwrap();
        assert!(matches!(
            keys.verify(&wrong_iss),
            Err(TokenError::Invalid(_))
        ));

        let other_dir = tempfile::tempdir().unwrap();
        let foreign = keyset(other_dir.path())
            .sign(&claims("https://gate.test"))
            .unwrap();
        assert!(matches!(keys.verify(&foreign), Err(TokenError::UnknownKey)));

        let good = keys.sign(&claims("https://gate.test")).unwrap();
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
            keys.signing.kid
        ));
        let none_token = format!("{none_header}.{forged_payload}.");
        assert!(keys.verify(&none_token).is_err());

        // HS256 keyed with our public key, under our kid (the classic confusion attack)
        let public = &keys.jwks_json();
        let jwks: serde_json::Value = serde_json::from_slice(public).unwrap();
        let x = jwks["keys"][0]["x"].as_str().unwrap();
        let mut hs_header = Header::new(Algorithm::HS256);
        hs_header.kid = Some(keys.signing.kid.clone());
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
    fn expiry_is_exclusive() {
        assert!(!is_expired(100, 99));
        assert!(is_expired(100, 100));
    }
}
