//! The signing keys on disk: one PKCS#8 PEM file per key in `auth.keys_dir`, named by its
//! `kid` (creation time first, so names sort oldest to newest), written 0600 and atomically so
//! a replica scanning the directory never reads half a key.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair,
};

use crate::types::SigningAlgorithm;

pub(crate) const PEM_TAG: &str = "PRIVATE KEY";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key directory {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("key file {path} is not an Ed25519 or P-256 PKCS#8 PEM key")]
    BadKey { path: PathBuf },
    #[error("could not generate a key")]
    Generate,
}

/// `meiro-gate keys rotate` (and a first start): writes a new key of algorithm `alg` (PKCS#8
/// PEM, 0600) into `dir` and returns its `kid`. Running gateways pick it up at their next
/// re-scan and sign with it `auth.key_activation_delay` later; tokens signed by older keys keep
/// verifying as long as their files stay.
pub fn generate_key(dir: &Path, alg: SigningAlgorithm) -> Result<String, KeyError> {
    let io = |source| KeyError::Io {
        path: dir.to_owned(),
        source,
    };
    fs::create_dir_all(dir).map_err(io)?;
    let rng = SystemRandom::new();
    let (pkcs8, public) = match alg {
        SigningAlgorithm::EdDsa => {
            let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| KeyError::Generate)?;
            let pair =
                Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| KeyError::Generate)?;
            (pkcs8.as_ref().to_vec(), pair.public_key().as_ref().to_vec())
        }
        SigningAlgorithm::Es256 => {
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .map_err(|_| KeyError::Generate)?;
            let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
                .map_err(|_| KeyError::Generate)?;
            (pkcs8.as_ref().to_vec(), pair.public_key().as_ref().to_vec())
        }
    };
    let created_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    // Zero-padded creation time (ms) first, so file names sort oldest to newest even for two
    // rotations in the same second.
    let kid = format!(
        "{created_ms:015}-{}",
        hex8(&aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            &public
        ))
    );
    let path = dir.join(format!("{kid}.pem"));
    let pem = pem::encode(&pem::Pem::new(PEM_TAG, pkcs8));
    write_private_atomic(&path, pem.as_bytes()).map_err(|source| KeyError::Io {
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

/// Writes `path` so that a concurrent directory scan sees either no file or the whole of it:
/// a hidden temp file (scans skip it) written, synced, renamed into place, then the directory
/// synced so the rename survives a crash.
fn write_private_atomic(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("key");
    let temp = path.with_file_name(format!(".{name}.tmp"));
    let written = write_private(&temp, contents).and_then(|()| fs::rename(&temp, path));
    if let Err(e) = written {
        let _ = fs::remove_file(&temp);
        return Err(e);
    }
    #[cfg(unix)]
    if let Some(dir) = path.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Creates `dir` if needed (a first start); every key in it, oldest first.
pub(crate) fn create_and_read_keys(dir: &Path) -> Result<Vec<KeyFile>, KeyError> {
    fs::create_dir_all(dir).map_err(|source| KeyError::Io {
        path: dir.to_owned(),
        source,
    })?;
    read_keys(dir)
}

/// Every key in `dir`, oldest first. Fails on the first unreadable or malformed key file, so a
/// half-broken directory is noticed instead of silently dropping keys.
pub(crate) fn read_keys(dir: &Path) -> Result<Vec<KeyFile>, KeyError> {
    pem_files(dir)?
        .iter()
        .map(|path| read_key(path))
        .collect::<Result<_, _>>()
}

/// The `*.pem` files of `dir`, sorted by name. Names starting with a dot are skipped: our temp
/// files, and the `..data` links and timestamped directories of a Kubernetes Secret volume.
pub(super) fn pem_files(dir: &Path) -> Result<Vec<PathBuf>, KeyError> {
    let io = |source| KeyError::Io {
        path: dir.to_owned(),
        source,
    };
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let hidden = entry.file_name().as_encoded_bytes().starts_with(b".");
        let path = entry.path();
        if !hidden && path.extension().is_some_and(|e| e == "pem") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// A key file as read: its algorithm is what the PKCS#8 document holds.
pub(crate) struct KeyFile {
    pub(crate) kid: String,
    pub(super) alg: SigningAlgorithm,
    pub(super) pkcs8: Vec<u8>,
    /// Ed25519: the 32-byte key; P-256: the 65-byte uncompressed point.
    pub(super) public: Vec<u8>,
}

pub(super) fn read_key(path: &Path) -> Result<KeyFile, KeyError> {
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
    // The PKCS#8 algorithm identifier decides: a document parses as at most one of the two.
    let pkcs8 = pem.contents();
    let (alg, public) = if let Ok(pair) = Ed25519KeyPair::from_pkcs8(pkcs8) {
        (SigningAlgorithm::EdDsa, pair.public_key().as_ref().to_vec())
    } else if let Ok(pair) = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8) {
        (SigningAlgorithm::Es256, pair.public_key().as_ref().to_vec())
    } else {
        return Err(bad());
    };
    let kid = path
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or_else(bad)?
        .to_owned();
    Ok(KeyFile {
        kid,
        alg,
        pkcs8: pkcs8.to_vec(),
        public,
    })
}
