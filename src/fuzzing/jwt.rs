//! Target `jwt_header`: `Keyring::verify`, the one entry point every access token goes
//! through, on token strings the fuzzer builds. Nothing it makes can carry a valid signature,
//! so every one must be refused; a real token with anything changed but the signature's
//! base64 spelling must be refused too, and `alg: none` or HMAC never verify.

use std::sync::OnceLock;
use std::time::Duration;

use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::Input;
use crate::auth::Keyring;
use crate::auth::clock::Clock;
use crate::auth::key_files::generate_key;
use crate::auth::tokens::{Claims, SigningAlgorithm};
use crate::store::{SessionId, UserId};

const ISSUER: &str = "https://gate.fuzz";

struct Keys {
    keyring: Keyring,
    /// The EdDSA key's kid, then the ES256 key's.
    kids: [String; 2],
    /// Public material an attacker has, as HMAC secrets (the JWKS, the raw keys).
    public: Vec<Vec<u8>>,
    /// One genuine token per key.
    genuine: [String; 2],
    claims: Claims,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!(
            "meiro-gate-fuzz-keys-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4()
        ));
        let ed = generate_key(&dir, SigningAlgorithm::EdDsa).expect("an EdDSA key");
        // Key files sort by creation time in milliseconds.
        std::thread::sleep(Duration::from_millis(2));
        let es = generate_key(&dir, SigningAlgorithm::Es256).expect("an ES256 key");
        let keyring = Keyring::open(
            &dir,
            ISSUER,
            SigningAlgorithm::EdDsa,
            Duration::from_secs(3600),
            Clock::default(),
        )
        .expect("the fuzz keyring");
        // The keys are loaded; an unknown kid's re-scan then finds no directory and keeps them.
        let _ = std::fs::remove_dir_all(&dir);
        let jwks: serde_json::Value = serde_json::from_slice(&keyring.jwks_json()).unwrap();
        let mut public = vec![keyring.jwks_json().to_vec()];
        for key in jwks["keys"].as_array().unwrap() {
            let coordinate = |c: &str| {
                key[c]
                    .as_str()
                    .map(|s| URL_SAFE_NO_PAD.decode(s).unwrap())
                    .unwrap_or_default()
            };
            public.push(coordinate("x"));
            let mut point = vec![4u8];
            point.extend(coordinate("x"));
            point.extend(coordinate("y"));
            public.push(point);
            public.push(key.to_string().into_bytes());
        }
        let claims = Claims {
            iss: ISSUER.to_owned(),
            sub: UserId::new_random(),
            sid: SessionId::new_random(),
            jti: uuid::Uuid::new_v4(),
            iat: 1_000,
            exp: 2_000_000_000,
        };
        let set = keyring.current();
        // The older key signs now; the newer one signs once its activation delay is over.
        let genuine = [
            set.sign(&claims, 0).unwrap(),
            set.sign(&claims, i64::MAX).unwrap(),
        ];
        assert_eq!(set.signing_kid(0), ed);
        assert_eq!(set.signing_kid(i64::MAX), es);
        drop(set);
        Keys {
            keyring,
            kids: [ed, es],
            public,
            genuine,
            claims,
        }
    })
}

/// A header the fuzzer wrote, with `KID0`/`KID1` standing for the real kids so it can name
/// keys that exist.
fn header_json(keys: &Keys, raw: &[u8]) -> String {
    String::from_utf8_lossy(raw)
        .replace("KID0", &keys.kids[0])
        .replace("KID1", &keys.kids[1])
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Input: a mode byte, then
/// - 0: a token string;
/// - 1: header JSON, payload JSON (length-prefixed), signature bytes;
/// - 2: header JSON, payload JSON (empty: valid claims), a byte choosing an HMAC and a piece
///   of public key material as its secret (the algorithm-confusion attack);
/// - 3: a byte choosing a genuine token, then either a replacement header JSON or a position
///   and byte to change in the token.
pub fn jwt_header(data: &[u8]) {
    let keys = keys();
    let mut input = Input::new(data);
    let mode = input.byte() % 4;
    let token = match mode {
        0 => String::from_utf8_lossy(input.rest()).into_owned(),
        1 => {
            let header = header_json(keys, input.chunk());
            let payload = input.chunk().to_vec();
            let signature = input.rest();
            format!(
                "{}.{}.{}",
                b64(header.as_bytes()),
                b64(&payload),
                b64(signature)
            )
        }
        2 => {
            let header = header_json(keys, input.chunk());
            let payload = match input.chunk() {
                [] => serde_json::to_vec(&keys.claims).unwrap(),
                payload => payload.to_vec(),
            };
            let choice = usize::from(input.byte());
            let algorithm = [hmac::HMAC_SHA256, hmac::HMAC_SHA384, hmac::HMAC_SHA512][choice % 3];
            let secret = &keys.public[(choice / 3) % keys.public.len()];
            let signing_input = format!("{}.{}", b64(header.as_bytes()), b64(&payload));
            let tag = hmac::sign(&hmac::Key::new(algorithm, secret), signing_input.as_bytes());
            format!("{signing_input}.{}", b64(tag.as_ref()))
        }
        _ => {
            let genuine = &keys.genuine[usize::from(input.byte() % 2)];
            let header = input.chunk();
            if !header.is_empty() {
                let (_, rest) = genuine.split_once('.').unwrap();
                format!("{}.{rest}", b64(header_json(keys, header).as_bytes()))
            } else {
                let mut bytes = genuine.clone().into_bytes();
                if !bytes.is_empty() {
                    let at = usize::from(input.u16()) % bytes.len();
                    bytes[at] = input.byte();
                }
                String::from_utf8_lossy(&bytes).into_owned()
            }
        }
    };
    check(keys, &token);
}

fn check(keys: &Keys, token: &str) {
    let verified = keys.keyring.verify(token);
    let Ok(claims) = verified else { return };
    // Only a genuine token verifies: same header and claims as signed, and a signature that
    // decodes to the same bytes (base64's spare bits aside).
    let genuine = keys
        .genuine
        .iter()
        .find(|g| {
            let (a, b) = (segments(g), segments(token));
            a.0 == b.0 && a.1 == b.1 && URL_SAFE_NO_PAD.decode(a.2).ok() == decode_lenient(b.2)
        })
        .unwrap_or_else(|| panic!("a forged token verified: {token:?}"));
    assert_eq!(claims, keys.claims, "{genuine}");
    let header = jsonwebtoken::decode_header(token).expect("a verified header parses");
    let alg = format!("{:?}", header.alg);
    assert!(alg == "EdDSA" || alg == "ES256", "verified with alg {alg}");
}

fn segments(token: &str) -> (&str, &str, &str) {
    let mut parts = token.splitn(3, '.');
    (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    )
}

/// Signature bytes however the token spelt them (with or without padding, spare bits set).
fn decode_lenient(text: &str) -> Option<Vec<u8>> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    let lenient = GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    lenient.decode(text).ok()
}
