//! TLS material: the certificate store picked by SNI, the rustls server and upstream client configurations, and the
//! development certificate authority used by the bundled demo.
//!
//! This module turns files into rustls objects and answers "which certificate for this name". It must not do
//! network I/O, must not know about routes or configuration files, and must not hold any mutable state: a reload
//! builds a new [`CertStore`] and the caller swaps it in (the resolver that reads the live snapshot lives with the
//! snapshot). Private keys are never logged or printed by `Debug`.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs;
use std::io;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use sha2::{Digest as _, Sha256};
use x509_parser::certificate::X509Certificate;
use x509_parser::der_parser::asn1_rs::Tag;
use x509_parser::error::X509Error;
use x509_parser::extensions::{GeneralName, ParsedExtension};

/// File name of the certificate written by [`ensure_self_signed`].
const SELF_SIGNED_FILE: &str = "self-signed.pem";
/// Sub-directory of the certificate directory holding the development CA.
const CA_DIR: &str = "ca";
/// Certificate file of the development CA inside its directory.
const CA_CERT_FILE: &str = "ca.pem";
/// Private key file of the development CA inside its directory.
const CA_KEY_FILE: &str = "ca.key";
/// Common name of the CA created by [`DevCa::load_or_create`].
const DEV_CA_NAME: &str = "Portcullis development CA";
/// Lifetime of a newly created development CA.
const DEV_CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Lifetime of the demo certificate issued by [`ensure_self_signed`].
const SELF_SIGNED_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// [`ensure_self_signed`] reissues a certificate that expires sooner than this.
const REISSUE_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Backdating of `notBefore` so that peers with a slightly slow clock accept a certificate issued just now.
const CLOCK_SKEW: Duration = Duration::from_secs(300);
/// The ALPN protocol of TLS-ALPN-01 validation (RFC 8737 §6.2).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";
/// Number of TLS 1.2 sessions kept for stateful resumption (RFC 5246 §7.3); TLS 1.3 uses tickets.
const SESSION_CACHE_SIZE: usize = 1024;

/// Errors from loading, building or generating TLS material.
///
/// All of them are configuration or startup problems (internal class): none happens per request.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate directory could not be listed.
    #[error("cannot read certificate directory {path}")]
    ReadDir {
        /// The directory.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// A file could not be read.
    #[error("cannot read file {path}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// A file or directory could not be written.
    #[error("cannot write {path}")]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// A file is not valid PEM.
    #[error("file {path} is not valid PEM")]
    Pem {
        /// The file.
        path: PathBuf,
        /// The parse error reported by `rustls-pemfile`.
        #[source]
        source: io::Error,
    },
    /// A certificate file holds no `CERTIFICATE` block.
    #[error("file {path} contains no certificate")]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// A certificate file has neither an embedded key nor a sibling `.key` file.
    #[error("certificate file {path} has no matching key file (expected {key_path})")]
    CertWithoutKey {
        /// The certificate file.
        path: PathBuf,
        /// The key file that was looked for.
        key_path: PathBuf,
    },
    /// A `.key` file has no sibling certificate file.
    #[error(
        "key file {path} has no matching certificate file (expected {crt_path} or {pem_path})"
    )]
    KeyWithoutCert {
        /// The key file.
        path: PathBuf,
        /// The `.crt` file that was looked for.
        crt_path: PathBuf,
        /// The `.pem` file that was looked for.
        pem_path: PathBuf,
    },
    /// Both `NAME.crt` and `NAME.pem` exist, so the certificate for `NAME` is ambiguous.
    #[error("both {crt_path} and {pem_path} exist; keep only one certificate file per name")]
    AmbiguousCertificate {
        /// The `.crt` file.
        crt_path: PathBuf,
        /// The `.pem` file.
        pem_path: PathBuf,
    },
    /// A combined PEM holds a private key and a sibling `.key` file exists too.
    #[error("file {pem_path} contains a private key but {key_path} exists too; keep only one key")]
    AmbiguousKey {
        /// The combined PEM file.
        pem_path: PathBuf,
        /// The separate key file.
        key_path: PathBuf,
    },
    /// A key file holds no (unencrypted) private key.
    #[error("key file {path} contains no unencrypted private key")]
    NoPrivateKey {
        /// The file.
        path: PathBuf,
    },
    /// A file holds more than one private key.
    #[error("file {path} contains more than one private key")]
    MultipleKeys {
        /// The file.
        path: PathBuf,
    },
    /// The private key is of a type or curve the crypto provider cannot sign with.
    #[error("private key in {path} is not supported (use RSA, ECDSA P-256/P-384 or Ed25519)")]
    UnsupportedKey {
        /// The file holding the key.
        path: PathBuf,
        /// The error reported by rustls.
        #[source]
        source: rustls::Error,
    },
    /// The private key does not belong to the leaf certificate.
    #[error("private key {key_path} does not match certificate {cert_path}")]
    KeyMismatch {
        /// The file holding the certificate chain.
        cert_path: PathBuf,
        /// The file holding the key.
        key_path: PathBuf,
    },
    /// Comparing the key with the certificate failed for another reason (usually a malformed certificate).
    #[error("cannot check private key {key_path} against certificate {cert_path}")]
    KeyCheck {
        /// The file holding the certificate chain.
        cert_path: PathBuf,
        /// The file holding the key.
        key_path: PathBuf,
        /// The error reported by rustls.
        #[source]
        source: rustls::Error,
    },
    /// The leaf certificate is not valid X.509.
    #[error("certificate in {path} cannot be parsed")]
    Certificate {
        /// The file.
        path: PathBuf,
        /// The error reported by `x509-parser`.
        #[source]
        source: X509Error,
    },
    /// The leaf certificate has no DNS subjectAltName, so no client could verify it (RFC 6125 §6.4.4: the
    /// common name is not consulted).
    #[error("certificate in {path} has no DNS subjectAltName")]
    NoDnsNames {
        /// The file.
        path: PathBuf,
    },
    /// The configured default host name is covered by no loaded certificate.
    #[error("default certificate name {name} is not covered by any certificate in {dir}")]
    DefaultNotCovered {
        /// The configured name.
        name: String,
        /// The certificate directory.
        dir: PathBuf,
    },
    /// rustls refused to build the server configuration.
    #[error("cannot build tls server configuration")]
    ServerConfig {
        /// The error reported by rustls.
        #[source]
        source: rustls::Error,
    },
    /// rustls refused to build the client configuration.
    #[error("cannot build tls client configuration")]
    ClientConfig {
        /// The error reported by rustls.
        #[source]
        source: rustls::Error,
    },
    /// The extra CA file holds no certificate.
    #[error("ca file {path} contains no certificate")]
    NoCaCertificate {
        /// The file.
        path: PathBuf,
    },
    /// A certificate in the extra CA file cannot be used as a trust anchor.
    #[error("certificate in ca file {path} is not a usable trust anchor")]
    InvalidCaCertificate {
        /// The file.
        path: PathBuf,
        /// The error reported by rustls.
        #[source]
        source: rustls::Error,
    },
    /// rcgen failed to generate a key or certificate.
    #[error("cannot generate {what}")]
    Generate {
        /// What was being generated.
        what: &'static str,
        /// The error reported by rcgen.
        #[source]
        source: rcgen::Error,
    },
    /// A certificate was requested without any name.
    #[error("cannot issue a certificate without any dns name")]
    NoNames,
    /// The requested validity does not fit in a certificate date.
    #[error("certificate validity {validity:?} is out of range")]
    Validity {
        /// The requested validity.
        validity: Duration,
    },
    /// Only one of the two development CA files exists; refusing to overwrite it.
    #[error(
        "development ca file {present} exists but {missing} is missing; restore it or remove both"
    )]
    CaIncomplete {
        /// The file that exists.
        present: PathBuf,
        /// The file that is missing.
        missing: PathBuf,
    },
    /// The development CA key cannot be loaded.
    #[error("cannot load development ca key {path}")]
    CaKey {
        /// The key file.
        path: PathBuf,
        /// The error reported by rcgen.
        #[source]
        source: rcgen::Error,
    },
    /// The development CA key does not belong to its certificate.
    #[error("development ca key {key_path} does not match certificate {cert_path}")]
    CaKeyMismatch {
        /// The certificate file.
        cert_path: PathBuf,
        /// The key file.
        key_path: PathBuf,
    },
    /// The development CA certificate has a subject that cannot be reproduced byte for byte, so certificates
    /// issued from it would not chain (RFC 5280 §7.1 compares issuer and subject names).
    #[error("development ca certificate {path} has a subject name this tool cannot reproduce")]
    CaSubject {
        /// The certificate file.
        path: PathBuf,
    },
}

/// One certificate chain with its key, as loaded from the certificate directory.
#[derive(Clone)]
pub struct CertEntry {
    /// The chain (leaf first) and signing key handed to rustls.
    pub certified: Arc<CertifiedKey>,
    /// Lowercased DNS subjectAltNames of the leaf, possibly wildcards such as `*.example.test`.
    pub names: Vec<String>,
    /// The file the chain was read from.
    pub source: PathBuf,
    /// End of the leaf's validity period.
    pub not_after: SystemTime,
}

impl CertEntry {
    /// Whether this certificate is valid for `host` (already lowercase, no port): an exact subjectAltName or a
    /// wildcard standing for exactly one whole leftmost label (RFC 6125 §6.4.3), so `*.a.b` covers `x.a.b` but
    /// neither `a.b` nor `y.x.a.b`.
    pub fn covers(&self, host: &str) -> bool {
        self.names.iter().any(|name| name_covers(name, host))
    }
}

impl fmt::Debug for CertEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The signing key is deliberately absent.
        f.debug_struct("CertEntry")
            .field("names", &self.names)
            .field("source", &self.source)
            .field("not_after", &self.not_after)
            .field("chain_len", &self.certified.cert.len())
            .finish_non_exhaustive()
    }
}

/// Whether the subjectAltName `pattern` covers `host` (RFC 6125 §6.4.3, restricted to a whole-label wildcard in
/// the leftmost position as RFC 9525 §6.3 requires).
fn name_covers(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => match host.split_once('.') {
            Some((label, rest)) => !suffix.is_empty() && !label.is_empty() && rest == suffix,
            None => false,
        },
        None => pattern == host,
    }
}

/// Lowercases a name and drops a trailing root dot, the form used for every lookup.
fn normalize_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// [`normalize_name`] without allocating in the usual case (SNI is normally sent lowercase, without the root dot).
fn normalized(name: &str) -> Cow<'_, str> {
    if name.ends_with('.') || name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(normalize_name(name))
    } else {
        Cow::Borrowed(name)
    }
}

/// The set of server certificates, indexed for SNI lookups.
#[derive(Default)]
pub struct CertStore {
    entries: Vec<Arc<CertEntry>>,
    /// Exact DNS name -> index into `entries`.
    exact: HashMap<String, usize>,
    /// Parent domain of a wildcard (`a.b` for `*.a.b`) -> index into `entries`.
    wildcard: HashMap<String, usize>,
    /// Certificate for clients without (matching) SNI.
    default: Option<usize>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("entries", &self.entries)
            .field(
                "default",
                &self
                    .default
                    .and_then(|i| self.entries.get(i))
                    .map(|e| &e.source),
            )
            .finish()
    }
}

/// The files found for one `NAME` in the certificate directory.
#[derive(Default)]
struct PairFiles {
    pem: Option<PathBuf>,
    crt: Option<PathBuf>,
    key: Option<PathBuf>,
}

/// Certificates and private keys read from one PEM file.
struct PemContents {
    certs: Vec<CertificateDer<'static>>,
    keys: Vec<PrivateKeyDer<'static>>,
}

impl CertStore {
    /// A store without certificates: [`CertStore::find`] always answers `None`.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Loads every certificate/key pair in `dir` (top level only, subdirectories and hidden files ignored).
    ///
    /// Pairs are `NAME.pem` holding chain and key, or `NAME.crt`/`NAME.pem` with `NAME.key`. RSA, ECDSA
    /// (P-256/P-384) and Ed25519 keys in PKCS#8, PKCS#1 or SEC1 PEM are accepted. `default_name` picks the
    /// certificate for clients that send no SNI or an SNI that matches nothing; when `None`, the first entry in
    /// file-name order is the default. When two certificates carry the same name, the one that expires last wins,
    /// so a renewed certificate can be dropped next to the old one. An expired certificate is loaded with a warning.
    ///
    /// # Errors
    ///
    /// Every problem found, all at once: unreadable directory or file, invalid PEM, certificate without key, key
    /// without certificate, ambiguous pairs, unsupported key, key that does not match its certificate, leaf without
    /// DNS subjectAltName, and `default_name` covered by no certificate.
    pub fn load_dir(dir: &Path, default_name: Option<&str>) -> Result<CertStore, Vec<TlsError>> {
        let listing = fs::read_dir(dir).map_err(|source| {
            vec![TlsError::ReadDir {
                path: dir.to_path_buf(),
                source,
            }]
        })?;

        let mut errors = Vec::new();
        // BTreeMap keeps file-name order, which decides the implicit default.
        let mut pairs: BTreeMap<String, PairFiles> = BTreeMap::new();
        for item in listing {
            let item = match item {
                Ok(item) => item,
                Err(source) => {
                    errors.push(TlsError::ReadDir {
                        path: dir.to_path_buf(),
                        source,
                    });
                    continue;
                }
            };
            let path = item.path();
            let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            // Hidden files are editor backups and our own temporary files (see write_atomically).
            if file_name.starts_with('.') {
                continue;
            }
            let Some((stem, ext)) = file_name.rsplit_once('.') else {
                continue;
            };
            if !matches!(ext, "pem" | "crt" | "key") {
                continue;
            }
            // fs::metadata follows symlinks, as certificate managers often link into the directory; a dangling
            // link is an unreadable file, not something to skip silently.
            match fs::metadata(&path) {
                Ok(meta) if meta.is_file() => {}
                Ok(_) => continue,
                Err(source) => {
                    errors.push(TlsError::ReadFile { path, source });
                    continue;
                }
            }
            let files = pairs.entry(stem.to_owned()).or_default();
            match ext {
                "pem" => files.pem = Some(path),
                "crt" => files.crt = Some(path),
                _ => files.key = Some(path),
            }
        }

        let mut store = CertStore::empty();
        for (stem, files) in pairs {
            match load_pair(dir, &stem, files) {
                Ok(entry) => store.push(entry),
                Err(error) => errors.push(error),
            }
        }

        match default_name.map(normalize_name) {
            Some(name) => match store.covering_index(&name) {
                Some(index) => store.default = Some(index),
                None => errors.push(TlsError::DefaultNotCovered {
                    name,
                    dir: dir.to_path_buf(),
                }),
            },
            None => store.default = (!store.entries.is_empty()).then_some(0),
        }

        if errors.is_empty() {
            Ok(store)
        } else {
            Err(errors)
        }
    }

    /// Adds an entry to the indexes; on a name collision the certificate that expires last wins.
    fn push(&mut self, entry: CertEntry) {
        let index = self.entries.len();
        for name in &entry.names {
            let (map, key) = match name.strip_prefix("*.") {
                Some(parent) => (&mut self.wildcard, parent),
                None => (&mut self.exact, name.as_str()),
            };
            match map.get(key).and_then(|&i| self.entries.get(i)) {
                Some(existing) if existing.not_after >= entry.not_after => {}
                _ => {
                    map.insert(key.to_owned(), index);
                }
            }
        }
        self.entries.push(Arc::new(entry));
    }

    /// Index of the certificate for `host` (normalized): exact name first, then a one-label wildcard.
    fn covering_index(&self, host: &str) -> Option<usize> {
        if let Some(&index) = self.exact.get(host) {
            return Some(index);
        }
        let (label, parent) = host.split_once('.')?;
        if label.is_empty() {
            return None;
        }
        self.wildcard.get(parent).copied()
    }

    /// The certificate for a ClientHello's SNI: exact name, then one-label wildcard, then the default.
    ///
    /// Returns `None` only when the store is empty.
    pub fn find(&self, sni: Option<&str>) -> Option<Arc<CertEntry>> {
        let index = sni
            .and_then(|name| self.covering_index(&normalized(name)))
            .or(self.default)?;
        self.entries.get(index).cloned()
    }

    /// All loaded certificates, in file-name order.
    pub fn entries(&self) -> &[Arc<CertEntry>] {
        &self.entries
    }

    /// Whether no certificate is loaded.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The certificate that would be served for `host`, without falling back to the default; used to reject at
    /// configuration time a route whose host no certificate covers.
    pub fn covering(&self, host: &str) -> Option<Arc<CertEntry>> {
        let index = self.covering_index(&normalized(host))?;
        self.entries.get(index).cloned()
    }
}

/// Reads a PEM file into its certificates and private keys; other blocks (CRLs, EC parameters) are skipped.
fn read_pem(path: &Path) -> Result<PemContents, TlsError> {
    let bytes = fs::read(path).map_err(|source| TlsError::ReadFile {
        path: path.to_path_buf(),
        source,
    })?;
    let mut contents = PemContents {
        certs: Vec::new(),
        keys: Vec::new(),
    };
    for item in rustls_pemfile::read_all(&mut bytes.as_slice()) {
        let item = item.map_err(|source| TlsError::Pem {
            path: path.to_path_buf(),
            source,
        })?;
        match item {
            rustls_pemfile::Item::X509Certificate(cert) => contents.certs.push(cert),
            rustls_pemfile::Item::Pkcs1Key(key) => contents.keys.push(key.into()),
            rustls_pemfile::Item::Pkcs8Key(key) => contents.keys.push(key.into()),
            rustls_pemfile::Item::Sec1Key(key) => contents.keys.push(key.into()),
            _ => {}
        }
    }
    Ok(contents)
}

/// Takes the single private key of a file.
fn single_key(
    path: &Path,
    keys: Vec<PrivateKeyDer<'static>>,
) -> Result<PrivateKeyDer<'static>, TlsError> {
    let mut keys = keys.into_iter();
    match (keys.next(), keys.next()) {
        (Some(key), None) => Ok(key),
        (None, _) => Err(TlsError::NoPrivateKey {
            path: path.to_path_buf(),
        }),
        (Some(_), Some(_)) => Err(TlsError::MultipleKeys {
            path: path.to_path_buf(),
        }),
    }
}

/// Loads the pair named `stem` from the files found for it.
fn load_pair(dir: &Path, stem: &str, files: PairFiles) -> Result<CertEntry, TlsError> {
    let key_path = dir.join(format!("{stem}.key"));
    let cert_path = match (files.crt, files.pem) {
        (Some(crt_path), Some(pem_path)) => {
            return Err(TlsError::AmbiguousCertificate { crt_path, pem_path })
        }
        (Some(path), None) | (None, Some(path)) => path,
        (None, None) => {
            return Err(TlsError::KeyWithoutCert {
                path: files.key.unwrap_or(key_path),
                crt_path: dir.join(format!("{stem}.crt")),
                pem_path: dir.join(format!("{stem}.pem")),
            })
        }
    };

    let pem = read_pem(&cert_path)?;
    if pem.certs.is_empty() {
        return Err(TlsError::NoCertificate { path: cert_path });
    }
    let (key, key_path) = match files.key {
        Some(key_path) if !pem.keys.is_empty() => {
            return Err(TlsError::AmbiguousKey {
                pem_path: cert_path,
                key_path,
            })
        }
        Some(key_path) => {
            let keys = read_pem(&key_path)?.keys;
            (single_key(&key_path, keys)?, key_path)
        }
        None if pem.keys.is_empty() => {
            return Err(TlsError::CertWithoutKey {
                path: cert_path,
                key_path,
            })
        }
        None => (single_key(&cert_path, pem.keys)?, cert_path.clone()),
    };

    let leaf = parse_leaf(&cert_path, &pem.certs[0])?;
    let provider = rustls::crypto::ring::default_provider();
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|source| TlsError::UnsupportedKey {
            path: key_path.clone(),
            source,
        })?;
    let certified = CertifiedKey::new(pem.certs, signing_key);
    match certified.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(TlsError::KeyMismatch {
                cert_path,
                key_path,
            });
        }
        // The ring provider derives the public key for every key type it loads, so this is not expected; rustls
        // itself accepts such keys (CertifiedKey::from_der), and so do we.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            tracing::warn!(tls.cert_path = %cert_path.display(), "cannot check that the private key matches the certificate");
        }
        Err(source) => {
            return Err(TlsError::KeyCheck {
                cert_path,
                key_path,
                source,
            })
        }
    }

    if leaf.not_after <= SystemTime::now() {
        tracing::warn!(
            tls.cert_path = %cert_path.display(),
            tls.names = ?leaf.names,
            tls.not_after_unix = unix_secs(leaf.not_after),
            "certificate has expired; clients will reject it"
        );
    }
    Ok(CertEntry {
        certified: Arc::new(certified),
        names: leaf.names,
        source: cert_path,
        not_after: leaf.not_after,
    })
}

/// What the store needs from a leaf certificate.
struct LeafInfo {
    names: Vec<String>,
    not_after: SystemTime,
}

/// Parses an X.509 certificate, naming `path` in the error.
fn parse_x509<'a>(path: &Path, der: &'a [u8]) -> Result<X509Certificate<'a>, TlsError> {
    match x509_parser::parse_x509_certificate(der) {
        Ok((_, cert)) => Ok(cert),
        Err(x509_parser::nom::Err::Error(source) | x509_parser::nom::Err::Failure(source)) => {
            Err(TlsError::Certificate {
                path: path.to_path_buf(),
                source,
            })
        }
        Err(x509_parser::nom::Err::Incomplete(_)) => Err(TlsError::Certificate {
            path: path.to_path_buf(),
            source: X509Error::InvalidCertificate,
        }),
    }
}

/// Extracts the DNS subjectAltNames and expiry of a leaf certificate.
fn parse_leaf(path: &Path, der: &CertificateDer<'_>) -> Result<LeafInfo, TlsError> {
    let cert = parse_x509(path, der)?;
    let san = cert
        .subject_alternative_name()
        .map_err(|source| TlsError::Certificate {
            path: path.to_path_buf(),
            source,
        })?;
    let mut names: Vec<String> = Vec::new();
    for general_name in san.iter().flat_map(|ext| ext.value.general_names.iter()) {
        if let GeneralName::DNSName(name) = general_name {
            let name = normalize_name(name);
            if !name.is_empty() && !names.contains(&name) {
                names.push(name);
            }
        }
    }
    if names.is_empty() {
        return Err(TlsError::NoDnsNames {
            path: path.to_path_buf(),
        });
    }
    Ok(LeafInfo {
        names,
        not_after: system_time_from_unix(cert.validity().not_after.timestamp()),
    })
}

/// Converts seconds since the epoch (possibly negative) to a `SystemTime`, saturating at the epoch.
fn system_time_from_unix(secs: i64) -> SystemTime {
    u64::try_from(secs)
        .ok()
        .and_then(|secs| UNIX_EPOCH.checked_add(Duration::from_secs(secs)))
        .unwrap_or(UNIX_EPOCH)
}

/// Seconds since the epoch, for log fields.
fn unix_secs(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A cheap fingerprint of the top-level files of `dir` (names, sizes, modification times) for change polling.
///
/// A missing or unreadable directory gives a stable value, so polling does not flap while it is absent.
pub fn dir_fingerprint(dir: &Path) -> u64 {
    let mut files: Vec<(Vec<u8>, u64, u128)> = Vec::new();
    if let Ok(listing) = fs::read_dir(dir) {
        for item in listing.flatten() {
            let path = item.path();
            let Ok(meta) = fs::metadata(&path) else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            let modified = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            files.push((
                item.file_name().as_encoded_bytes().to_vec(),
                meta.len(),
                modified,
            ));
        }
    }
    files.sort();
    // SHA-256 rather than std's hasher so the value does not depend on the toolchain; the input is tiny.
    let mut hasher = Sha256::new();
    for (name, len, modified) in &files {
        hasher.update((name.len() as u64).to_le_bytes());
        hasher.update(name);
        hasher.update(len.to_le_bytes());
        hasher.update(modified.to_le_bytes());
    }
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(first)
}

/// Builds the server configuration: TLS 1.2 and 1.3 only, ring provider, ALPN `h2`, `http/1.1`, `acme-tls/1`, the given
/// certificate resolver, and session resumption (stateful cache for TLS 1.2, tickets for both versions).
///
/// # Errors
///
/// [`TlsError::ServerConfig`] when rustls rejects the provider or the ticketer cannot be created.
pub fn server_config(
    resolver: Arc<dyn ResolvesServerCert>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // Listing the versions explicitly keeps older protocols out even if a future rustls default changes
    // (RFC 8996 deprecates TLS 1.0 and 1.1).
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|source| TlsError::ServerConfig { source })?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    // Server preference order: h2 first when the client offers both (RFC 7301 §3.2). `acme-tls/1` is only ever
    // offered alone, by TLS-ALPN-01 validators (RFC 8737 §3); the listener closes those connections.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_SIZE);
    config.ticketer = rustls::crypto::ring::Ticketer::new()
        .map_err(|source| TlsError::ServerConfig { source })?;
    Ok(Arc::new(config))
}

/// Builds the client configuration for HTTPS upstreams: the Mozilla roots from `webpki-roots` plus, when given,
/// every CA certificate in the PEM file `extra_ca`. ALPN offers `http/1.1` only, as the upstream client speaks
/// HTTP/1.1.
///
/// # Errors
///
/// The extra CA file cannot be read, is not PEM, holds no certificate or holds one rustls cannot use as a trust
/// anchor (each error names the file), or rustls rejects the configuration.
pub fn client_config(extra_ca: Option<&Path>) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = extra_ca {
        let certs = read_pem(path)?.certs;
        if certs.is_empty() {
            return Err(TlsError::NoCaCertificate {
                path: path.to_path_buf(),
            });
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|source| TlsError::InvalidCaCertificate {
                    path: path.to_path_buf(),
                    source,
                })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|source| TlsError::ClientConfig { source })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A development certificate authority (ECDSA P-256), for the bundled demo's self-signed TLS and for tests.
pub struct DevCa {
    /// The CA certificate as rcgen needs it for signing (same subject and key as `cert_pem`).
    cert: rcgen::Certificate,
    key: KeyPair,
    /// The CA certificate as stored, appended to issued chains.
    cert_pem: String,
}

impl fmt::Debug for DevCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevCa")
            .field("subject", &self.cert.params().distinguished_name)
            .finish_non_exhaustive()
    }
}

/// `now + validity` as a certificate date.
fn offset_after(now: SystemTime, validity: Duration) -> Result<time::OffsetDateTime, TlsError> {
    now.checked_add(validity)
        .map(time::OffsetDateTime::from)
        .ok_or(TlsError::Validity { validity })
}

/// A random positive serial number (RFC 5280 §4.1.2.2: at most 20 octets, unique per issuer).
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

/// Certificate parameters of a development CA with the given subject and key identifier.
fn ca_params(
    distinguished_name: DistinguishedName,
    key_identifier_method: KeyIdMethod,
) -> Result<CertificateParams, TlsError> {
    let now = SystemTime::now();
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name;
    params.key_identifier_method = key_identifier_method;
    // pathLenConstraint 0: this CA signs leaves only (RFC 5280 §4.2.1.9).
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial());
    params.not_before = time::OffsetDateTime::from(now - CLOCK_SKEW);
    params.not_after = offset_after(now, DEV_CA_VALIDITY)?;
    Ok(params)
}

impl DevCa {
    /// Generates a new CA with a fresh ECDSA P-256 key and the given common name, valid for ten years.
    ///
    /// # Errors
    ///
    /// [`TlsError::Generate`] when rcgen fails.
    pub fn generate(common_name: &str) -> Result<DevCa, TlsError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|source| {
            TlsError::Generate {
                what: "ca key",
                source,
            }
        })?;
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, common_name);
        let cert = ca_params(name, KeyIdMethod::Sha256)?
            .self_signed(&key)
            .map_err(|source| TlsError::Generate {
                what: "ca certificate",
                source,
            })?;
        let cert_pem = cert.pem();
        Ok(DevCa {
            cert,
            key,
            cert_pem,
        })
    }

    /// Loads `dir/ca.pem` and `dir/ca.key`, or creates both (the key with mode 0600 on unix) when neither exists.
    ///
    /// # Errors
    ///
    /// Only one of the two files exists, a file cannot be read, written or parsed, the key does not match the
    /// certificate, or the certificate's subject cannot be reproduced for signing.
    pub fn load_or_create(dir: &Path) -> Result<DevCa, TlsError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        match (cert_path.is_file(), key_path.is_file()) {
            (true, true) => Self::load(&cert_path, &key_path),
            (false, false) => {
                create_private_dir(dir)?;
                let ca = Self::generate(DEV_CA_NAME)?;
                // Key first: a crash in between leaves a lone key, which load_or_create reports instead of
                // silently replacing a CA that clients may already trust.
                write_atomically(&key_path, ca.key.serialize_pem().as_bytes(), true)?;
                write_atomically(&cert_path, ca.cert_pem.as_bytes(), false)?;
                Ok(ca)
            }
            (true, false) => Err(TlsError::CaIncomplete {
                present: cert_path,
                missing: key_path,
            }),
            (false, true) => Err(TlsError::CaIncomplete {
                present: key_path,
                missing: cert_path,
            }),
        }
    }

    /// Loads an existing CA. rcgen (without its x509-parser feature) cannot sign with a parsed certificate, so the
    /// signing certificate is rebuilt from the stored subject, key identifier and key, and checked to carry the
    /// same subject bytes: issued leaves then chain to the stored `ca.pem`.
    fn load(cert_path: &Path, key_path: &Path) -> Result<DevCa, TlsError> {
        let key_pem = fs::read_to_string(key_path).map_err(|source| TlsError::ReadFile {
            path: key_path.to_path_buf(),
            source,
        })?;
        let key = KeyPair::from_pem(&key_pem).map_err(|source| TlsError::CaKey {
            path: key_path.to_path_buf(),
            source,
        })?;
        let cert_pem = fs::read_to_string(cert_path).map_err(|source| TlsError::ReadFile {
            path: cert_path.to_path_buf(),
            source,
        })?;
        let der = read_pem(cert_path)?
            .certs
            .into_iter()
            .next()
            .ok_or_else(|| TlsError::NoCertificate {
                path: cert_path.to_path_buf(),
            })?;
        let stored = parse_x509(cert_path, &der)?;
        if stored.public_key().raw != key.public_key_der().as_slice() {
            return Err(TlsError::CaKeyMismatch {
                cert_path: cert_path.to_path_buf(),
                key_path: key_path.to_path_buf(),
            });
        }
        let subject = distinguished_name_of(&stored).ok_or_else(|| TlsError::CaSubject {
            path: cert_path.to_path_buf(),
        })?;
        // Keep the stored subjectKeyIdentifier so issued leaves carry a matching authorityKeyIdentifier, which
        // OpenSSL uses to find the issuer (RFC 5280 §4.2.1.1).
        let key_identifier_method = stored
            .iter_extensions()
            .find_map(|ext| match ext.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(id) => {
                    Some(KeyIdMethod::PreSpecified(id.0.to_vec()))
                }
                _ => None,
            })
            .unwrap_or(KeyIdMethod::Sha256);
        let cert = ca_params(subject, key_identifier_method)?
            .self_signed(&key)
            .map_err(|source| TlsError::Generate {
                what: "ca certificate",
                source,
            })?;
        let rebuilt = parse_x509(cert_path, cert.der())?;
        if rebuilt.subject().as_raw() != stored.subject().as_raw() {
            return Err(TlsError::CaSubject {
                path: cert_path.to_path_buf(),
            });
        }
        Ok(DevCa {
            cert,
            key,
            cert_pem,
        })
    }

    /// The CA certificate in PEM, as clients should trust it.
    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// Issues a leaf certificate (ECDSA P-256, serverAuth) for `names` (wildcards allowed), valid from now for
    /// `validity`. Returns the chain PEM (leaf, then this CA) and the leaf's private key in PKCS#8 PEM.
    ///
    /// # Errors
    ///
    /// [`TlsError::NoNames`] for an empty list, [`TlsError::Validity`] when the end date overflows, and
    /// [`TlsError::Generate`] when rcgen rejects a name or fails to sign.
    pub fn issue(
        &self,
        names: &[String],
        validity: Duration,
    ) -> Result<(String, String), TlsError> {
        let first = names.first().ok_or(TlsError::NoNames)?;
        let now = SystemTime::now();
        let mut params =
            CertificateParams::new(names.to_vec()).map_err(|source| TlsError::Generate {
                what: "certificate names",
                source,
            })?;
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, first.as_str());
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        params.not_before = time::OffsetDateTime::from(now - CLOCK_SKEW);
        params.not_after = offset_after(now, validity)?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|source| {
            TlsError::Generate {
                what: "leaf key",
                source,
            }
        })?;
        let leaf = params
            .signed_by(&key, &self.cert, &self.key)
            .map_err(|source| TlsError::Generate {
                what: "leaf certificate",
                source,
            })?;
        let mut chain = leaf.pem();
        if !chain.ends_with('\n') {
            chain.push('\n');
        }
        chain.push_str(&self.cert_pem);
        Ok((chain, key.serialize_pem()))
    }
}

/// Rebuilds an rcgen subject from a parsed certificate; `None` when an attribute uses a string type rcgen cannot
/// write identically.
fn distinguished_name_of(cert: &X509Certificate<'_>) -> Option<DistinguishedName> {
    let mut name = DistinguishedName::new();
    for attr in cert.subject().iter_attributes() {
        let oid: Vec<u64> = attr.attr_type().iter()?.collect();
        let text = attr.as_str().ok()?;
        let value = match attr.attr_value().tag() {
            Tag::Utf8String => DnValue::Utf8String(text.to_owned()),
            Tag::PrintableString => DnValue::PrintableString(text.try_into().ok()?),
            Tag::Ia5String => DnValue::Ia5String(text.try_into().ok()?),
            _ => return None,
        };
        name.push(DnType::from_oid(&oid), value);
    }
    Some(name)
}

/// Creates a directory (and parents); the last component gets mode 0700 on unix when newly created.
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), TlsError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|source| TlsError::Write {
        path: dir.to_path_buf(),
        source,
    })
}

/// Writes `path` through a hidden temporary file and a rename, so a directory poller never loads half a file;
/// `private` files get mode 0600 on unix from creation on.
pub(crate) fn write_atomically(
    path: &Path,
    contents: &[u8],
    private: bool,
) -> Result<(), TlsError> {
    let write_error = |source| TlsError::Write {
        path: path.to_path_buf(),
        source,
    };
    let file_name = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
        write_error(io::Error::new(
            io::ErrorKind::InvalidInput,
            "path has no file name",
        ))
    })?;
    let tmp = path.with_file_name(format!(".{file_name}.tmp"));
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(write_error(e)),
    }
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(&tmp).map_err(write_error)?;
    file.write_all(contents).map_err(write_error)?;
    file.sync_all().map_err(write_error)?;
    drop(file);
    fs::rename(&tmp, path).map_err(write_error)
}

/// Whether the combined PEM at `path` is a usable certificate for `hosts`, issued by `ca`, valid for more than
/// [`REISSUE_BEFORE`]. Any read or parse problem counts as "no": the file is ours and gets replaced.
fn self_signed_is_current(path: &Path, hosts: &[String], ca: &DevCa) -> bool {
    let Ok(pem) = read_pem(path) else {
        return false;
    };
    let (Some(leaf), Some(issuer)) = (pem.certs.first(), pem.certs.get(1)) else {
        return false;
    };
    let Ok(ca_der) = read_pem_str(&ca.cert_pem) else {
        return false;
    };
    if issuer.as_ref() != ca_der.as_slice() || pem.keys.len() != 1 {
        return false;
    }
    let Ok(info) = parse_leaf(path, leaf) else {
        return false;
    };
    let fresh_until = SystemTime::now().checked_add(REISSUE_BEFORE);
    let entry_covers = |host: &String| info.names.iter().any(|name| name_covers(name, host));
    fresh_until.is_some_and(|t| info.not_after > t) && hosts.iter().all(entry_covers)
}

/// DER of the first certificate in a PEM string.
fn read_pem_str(pem: &str) -> Result<Vec<u8>, io::Error> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .next()
        .unwrap_or_else(|| Err(io::Error::new(io::ErrorKind::InvalidData, "no certificate")))
        .map(|der| der.as_ref().to_vec())
}

/// For the demo: makes sure `certs_dir` holds a certificate covering every name in `hosts`, issued by the
/// development CA kept in `certs_dir/ca/` (created on first use).
///
/// Writes `certs_dir/self-signed.pem` (chain and key in one file, mode 0600), reissuing it when it misses a host,
/// expires within 30 days or was issued by another CA; otherwise leaves it untouched. Returns the path of the CA
/// certificate (`certs_dir/ca/ca.pem`), for the user's `curl --cacert`.
///
/// # Errors
///
/// [`TlsError::NoNames`] when `hosts` is empty, and any error of [`DevCa::load_or_create`] or [`DevCa::issue`],
/// or a failure to write the certificate.
pub fn ensure_self_signed(certs_dir: &Path, hosts: &[String]) -> Result<PathBuf, TlsError> {
    let mut names: Vec<String> = Vec::new();
    for host in hosts {
        let host = normalize_name(host);
        if !host.is_empty() && !names.contains(&host) {
            names.push(host);
        }
    }
    if names.is_empty() {
        return Err(TlsError::NoNames);
    }
    let ca_dir = certs_dir.join(CA_DIR);
    fs::create_dir_all(certs_dir).map_err(|source| TlsError::Write {
        path: certs_dir.to_path_buf(),
        source,
    })?;
    let ca = DevCa::load_or_create(&ca_dir)?;
    let path = certs_dir.join(SELF_SIGNED_FILE);
    if self_signed_is_current(&path, &names, &ca) {
        tracing::debug!(tls.cert_path = %path.display(), "self-signed certificate is current");
    } else {
        let (chain, key) = ca.issue(&names, SELF_SIGNED_VALIDITY)?;
        write_atomically(&path, format!("{chain}{key}").as_bytes(), true)?;
        tracing::info!(tls.cert_path = %path.display(), tls.names = ?names, "issued self-signed certificate");
    }
    Ok(ca_dir.join(CA_CERT_FILE))
}

#[cfg(test)]
// STYLE: unwrap/expect are fine in tests; the crate-wide lint has no test exemption without a clippy.toml.
#[allow(clippy::expect_used, clippy::unwrap_used)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier as _;
    use std::process::Command;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    fn test_ca() -> DevCa {
        DevCa::generate("portcullis test ca").expect("generate test ca")
    }

    fn write(path: &Path, contents: &str) {
        fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// Writes `dir/NAME.pem` (chain) and `dir/NAME.key` issued by `ca`.
    fn write_pair(ca: &DevCa, dir: &Path, name: &str, dns: &[&str]) {
        let (chain, key) = ca.issue(&names(dns), 30 * DAY).expect("issue");
        write(&dir.join(format!("{name}.pem")), &chain);
        write(&dir.join(format!("{name}.key")), &key);
    }

    /// Runs `openssl` with `args` in `dir`, failing the test with a clear message when it is not installed.
    fn openssl(dir: &Path, args: &[&str]) {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap_or_else(|e| {
                panic!("this test needs the openssl command-line tool on PATH: {e}")
            });
        assert!(
            output.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// A self-signed certificate made by openssl: `-newkey` takes e.g. `rsa:2048` or `ed25519`.
    fn openssl_self_signed(dir: &Path, key_args: &[&str], cert: &str, key: &str, dns: &str) {
        let subject = format!("/CN={dns}");
        let san = format!("subjectAltName=DNS:{dns}");
        let mut args = vec!["req", "-x509"];
        args.extend_from_slice(key_args);
        args.extend_from_slice(&["-nodes", "-days", "30", "-subj", &subject, "-addext", &san]);
        args.extend_from_slice(&["-keyout", key, "-out", cert]);
        openssl(dir, &args);
    }

    fn first_line(path: &Path) -> String {
        fs::read_to_string(path)
            .expect("read")
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned()
    }

    fn store_names(store: &CertStore) -> Vec<Vec<String>> {
        store.entries().iter().map(|e| e.names.clone()).collect()
    }

    fn entry_with(names_list: &[&str]) -> CertEntry {
        let ca = test_ca();
        let (chain, key) = ca.issue(&names(names_list), DAY).expect("issue");
        let certs = rustls_pemfile::certs(&mut chain.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("certs");
        let key = rustls_pemfile::private_key(&mut key.as_bytes())
            .expect("pem")
            .expect("key");
        let signing = rustls::crypto::ring::default_provider()
            .key_provider
            .load_private_key(key)
            .expect("load key");
        CertEntry {
            certified: Arc::new(CertifiedKey::new(certs, signing)),
            names: names(names_list),
            source: PathBuf::from("test.pem"),
            not_after: SystemTime::now() + DAY,
        }
    }

    #[test]
    fn wildcard_covers_exactly_one_label() {
        let entry = entry_with(&["*.a.example.test", "exact.example.test"]);
        assert!(entry.covers("x.a.example.test"));
        assert!(entry.covers("exact.example.test"));
        assert!(
            !entry.covers("a.example.test"),
            "wildcard does not cover its parent"
        );
        assert!(
            !entry.covers("y.x.a.example.test"),
            "wildcard covers one label only"
        );
        assert!(!entry.covers(".a.example.test"), "empty label");
        assert!(!entry.covers("other.example.test"));
        assert!(!entry.covers("sub.exact.example.test"));
        assert!(!name_covers("*.", "x."));
        assert!(!name_covers("*.a.b", "*.a.b.c"));
    }

    #[test]
    fn load_dir_accepts_every_supported_pair_and_key_format() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let ca = test_ca();
        // ECDSA P-256, PKCS#8, NAME.pem + NAME.key.
        write_pair(&ca, d, "a-ecdsa", &["ecdsa.example.test"]);
        // Combined NAME.pem: chain then key.
        let (chain, key) = ca
            .issue(&names(&["*.combined.example.test"]), 30 * DAY)
            .expect("issue");
        write(&d.join("b-combined.pem"), &format!("{chain}{key}"));
        // RSA, PKCS#1, NAME.crt + NAME.key.
        openssl_self_signed(
            d,
            &["-newkey", "rsa:2048"],
            "c-rsa.crt",
            "rsa8.tmp",
            "rsa.example.test",
        );
        openssl(
            d,
            &[
                "rsa",
                "-in",
                "rsa8.tmp",
                "-traditional",
                "-out",
                "c-rsa.key",
            ],
        );
        assert_eq!(
            first_line(&d.join("c-rsa.key")),
            "-----BEGIN RSA PRIVATE KEY-----"
        );
        // ECDSA P-384, SEC1 (with an EC PARAMETERS block in front, as `openssl ecparam -genkey` writes it).
        openssl(
            d,
            &[
                "ecparam",
                "-name",
                "secp384r1",
                "-genkey",
                "-out",
                "d-p384.key",
            ],
        );
        assert!(fs::read_to_string(d.join("d-p384.key"))
            .expect("read")
            .contains("BEGIN EC PRIVATE KEY"));
        openssl_self_signed(
            d,
            &["-key", "d-p384.key"],
            "d-p384.crt",
            "/dev/null",
            "p384.example.test",
        );
        // Ed25519, PKCS#8.
        openssl_self_signed(
            d,
            &["-newkey", "ed25519"],
            "e-ed25519.crt",
            "e-ed25519.key",
            "ed25519.example.test",
        );
        // Ignored: other extensions, hidden files, subdirectories (even with broken pairs inside).
        fs::remove_file(d.join("rsa8.tmp")).expect("remove");
        write(&d.join("README.txt"), "not a certificate");
        write(&d.join(".editor.pem.swp"), "junk");
        fs::create_dir(d.join("archive")).expect("mkdir");
        write(&d.join("archive/lonely.crt"), "junk");

        let store = CertStore::load_dir(d, None).expect("load");
        assert_eq!(
            store_names(&store),
            vec![
                names(&["ecdsa.example.test"]),
                names(&["*.combined.example.test"]),
                names(&["rsa.example.test"]),
                names(&["p384.example.test"]),
                names(&["ed25519.example.test"]),
            ]
        );
        assert_eq!(
            store.entries()[0].certified.cert.len(),
            2,
            "chain keeps the CA"
        );
        assert_eq!(store.entries()[2].source, d.join("c-rsa.crt"));
        assert!(store
            .entries()
            .iter()
            .all(|e| e.not_after > SystemTime::now() + 20 * DAY));
        let debug = format!("{store:?}");
        assert!(debug.contains("rsa.example.test") && !debug.contains("PRIVATE"));
    }

    #[test]
    fn load_dir_reports_two_broken_pairs_together() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let ca = test_ca();
        write_pair(&ca, d, "good", &["good.example.test"]);
        let (chain, key) = ca
            .issue(&names(&["lonely.example.test"]), DAY)
            .expect("issue");
        write(&d.join("lonely.crt"), &chain);
        write(&d.join("orphan.key"), &key);

        let errors = CertStore::load_dir(d, None).expect_err("broken pairs");
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            matches!(&errors[0], TlsError::CertWithoutKey { path, key_path }
                if *path == d.join("lonely.crt") && *key_path == d.join("lonely.key")),
            "{errors:?}"
        );
        assert!(
            matches!(&errors[1], TlsError::KeyWithoutCert { path, .. } if *path == d.join("orphan.key")),
            "{errors:?}"
        );
        assert_eq!(
            errors[0].to_string(),
            format!(
                "certificate file {} has no matching key file (expected {})",
                d.join("lonely.crt").display(),
                d.join("lonely.key").display()
            )
        );
    }

    #[test]
    fn load_dir_reports_every_kind_of_problem() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let ca = test_ca();
        // Certificate-only combined PEM.
        let (chain, key) = ca
            .issue(&names(&["nokey.example.test"]), DAY)
            .expect("issue");
        write(&d.join("a-nokey.pem"), &chain);
        // Both NAME.crt and NAME.pem.
        write(&d.join("b-ambiguous.crt"), &chain);
        write(&d.join("b-ambiguous.pem"), &chain);
        write(&d.join("b-ambiguous.key"), &key);
        // Combined PEM with a key and a NAME.key as well.
        write(&d.join("c-twokeys.pem"), &format!("{chain}{key}"));
        write(&d.join("c-twokeys.key"), &key);
        // Key file without a key.
        write(&d.join("d-emptykey.pem"), &chain);
        write(&d.join("d-emptykey.key"), "# nothing here\n");
        // Not PEM at all.
        write(
            &d.join("e-garbage.pem"),
            "-----BEGIN CERTIFICATE-----\n%%%%\n-----END CERTIFICATE-----\n",
        );
        // Dangling symlink: unreadable.
        #[cfg(unix)]
        std::os::unix::fs::symlink(d.join("missing-target"), d.join("f-dangling.pem"))
            .expect("symlink");
        // Leaf without DNS subjectAltName.
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, "no-san");
        let no_san_key = KeyPair::generate().expect("key");
        let no_san = params.self_signed(&no_san_key).expect("self-signed");
        write(
            &d.join("g-nosan.pem"),
            &format!("{}{}", no_san.pem(), no_san_key.serialize_pem()),
        );

        let errors = CertStore::load_dir(d, Some("elsewhere.example.test")).expect_err("problems");
        let kinds: Vec<&str> = errors
            .iter()
            .map(|e| match e {
                TlsError::CertWithoutKey { .. } => "cert without key",
                TlsError::AmbiguousCertificate { .. } => "ambiguous certificate",
                TlsError::AmbiguousKey { .. } => "ambiguous key",
                TlsError::NoPrivateKey { .. } => "no private key",
                TlsError::Pem { .. } => "pem",
                TlsError::ReadFile { .. } => "read file",
                TlsError::NoDnsNames { .. } => "no dns names",
                TlsError::DefaultNotCovered { .. } => "default not covered",
                other => panic!("unexpected error {other}"),
            })
            .collect();
        let mut sorted = kinds.clone();
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            vec![
                "ambiguous certificate",
                "ambiguous key",
                "cert without key",
                "default not covered",
                "no dns names",
                "no private key",
                "pem",
                "read file",
            ],
            "{errors:#?}"
        );
        for error in &errors {
            let message = error.to_string();
            assert!(
                message.contains(&*d.to_string_lossy()) || message.contains("elsewhere"),
                "{message}"
            );
        }
    }

    #[test]
    fn load_dir_rejects_key_that_does_not_match_certificate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let ca = test_ca();
        let (chain, _) = ca.issue(&names(&["one.example.test"]), DAY).expect("issue");
        let (_, other_key) = ca.issue(&names(&["one.example.test"]), DAY).expect("issue");
        write(&d.join("one.crt"), &chain);
        write(&d.join("one.key"), &other_key);
        let errors = CertStore::load_dir(d, None).expect_err("mismatch");
        assert!(
            matches!(errors.as_slice(), [TlsError::KeyMismatch { cert_path, key_path }]
                if *cert_path == d.join("one.crt") && *key_path == d.join("one.key")),
            "{errors:?}"
        );
    }

    #[test]
    fn load_dir_fails_for_missing_dir_and_accepts_empty_dir() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope");
        let errors = CertStore::load_dir(&missing, None).expect_err("missing dir");
        assert!(matches!(errors.as_slice(), [TlsError::ReadDir { path, .. }] if *path == missing));

        let store = CertStore::load_dir(dir.path(), None).expect("empty dir");
        assert!(store.is_empty());
        assert!(store.find(None).is_none() && store.find(Some("x.test")).is_none());
        assert!(CertStore::empty().find(Some("x.test")).is_none());
        let errors = CertStore::load_dir(dir.path(), Some("x.test")).expect_err("default on empty");
        assert!(
            matches!(errors.as_slice(), [TlsError::DefaultNotCovered { name, .. }] if name == "x.test")
        );
    }

    #[test]
    fn expired_certificate_loads_with_a_warning() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = test_ca();
        let mut params = CertificateParams::new(names(&["old.example.test"])).expect("params");
        params.not_before = time::OffsetDateTime::from(SystemTime::now() - 10 * DAY);
        params.not_after = time::OffsetDateTime::from(SystemTime::now() - DAY);
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &ca.cert, &ca.key).expect("sign");
        write(
            &dir.path().join("old.pem"),
            &format!("{}{}", cert.pem(), key.serialize_pem()),
        );
        let store = CertStore::load_dir(dir.path(), None).expect("expired is not an error");
        let entry = store.find(Some("old.example.test")).expect("entry");
        assert!(entry.not_after < SystemTime::now());
    }

    #[test]
    fn find_prefers_exact_then_wildcard_then_default() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let ca = test_ca();
        write_pair(&ca, d, "a-wild", &["*.example.test"]);
        write_pair(&ca, d, "b-exact", &["api.example.test"]);
        write_pair(&ca, d, "c-other", &["other.test"]);

        let first_is_default = CertStore::load_dir(d, None).expect("load");
        assert_eq!(
            first_is_default.find(None).expect("default").names,
            names(&["*.example.test"])
        );

        let store = CertStore::load_dir(d, Some("OTHER.test")).expect("load");
        let find = |sni: Option<&str>| store.find(sni).expect("some").names.clone();
        assert_eq!(
            find(Some("api.example.test")),
            names(&["api.example.test"]),
            "exact beats wildcard"
        );
        assert_eq!(
            find(Some("API.example.test.")),
            names(&["api.example.test"]),
            "normalized"
        );
        assert_eq!(find(Some("www.example.test")), names(&["*.example.test"]));
        assert_eq!(
            find(Some("a.b.example.test")),
            names(&["other.test"]),
            "default, not wildcard"
        );
        assert_eq!(find(Some("example.test")), names(&["other.test"]));
        assert_eq!(find(None), names(&["other.test"]));

        assert_eq!(
            store.covering("www.example.test").expect("covered").names,
            names(&["*.example.test"])
        );
        assert!(
            store.covering("a.b.example.test").is_none(),
            "covering never falls back"
        );
        assert!(store.covering("nothing.test").is_none());
    }

    #[test]
    fn renewed_certificate_wins_over_older_one_for_the_same_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = test_ca();
        let (short, short_key) = ca.issue(&names(&["r.example.test"]), DAY).expect("issue");
        let (long, long_key) = ca
            .issue(&names(&["r.example.test"]), 60 * DAY)
            .expect("issue");
        write(&dir.path().join("a-long.pem"), &format!("{long}{long_key}"));
        write(
            &dir.path().join("b-short.pem"),
            &format!("{short}{short_key}"),
        );
        let store = CertStore::load_dir(dir.path(), None).expect("load");
        let chosen = store.find(Some("r.example.test")).expect("entry");
        assert_eq!(chosen.source, dir.path().join("a-long.pem"));
    }

    #[test]
    fn dev_ca_is_persisted_and_reloaded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_dir = dir.path().join("ca");
        let created = DevCa::load_or_create(&ca_dir).expect("create");
        let loaded = DevCa::load_or_create(&ca_dir).expect("load");
        assert_eq!(created.cert_pem(), loaded.cert_pem());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(ca_dir.join("ca.key"))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A leaf issued by the reloaded CA must chain to the stored ca.pem.
        let (chain, _) = loaded
            .issue(&names(&["reload.example.test"]), DAY)
            .expect("issue");
        let certs = rustls_pemfile::certs(&mut chain.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("certs");
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots_from(&ca_dir.join("ca.pem"))),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .expect("verifier");
        let server_name =
            rustls::pki_types::ServerName::try_from("reload.example.test").expect("name");
        verifier
            .verify_server_cert(
                &certs[0],
                &certs[1..],
                &server_name,
                &[],
                rustls::pki_types::UnixTime::now(),
            )
            .expect("leaf from reloaded ca verifies against stored ca.pem");

        fs::remove_file(ca_dir.join("ca.pem")).expect("remove");
        let error = DevCa::load_or_create(&ca_dir).expect_err("lone key");
        assert!(matches!(error, TlsError::CaIncomplete { .. }), "{error}");
    }

    #[test]
    fn ensure_self_signed_is_idempotent_and_reissues_for_a_new_host() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().join("certs");
        let hosts = names(&["app.localhost", "*.demo.localhost"]);
        let ca_path = ensure_self_signed(&d, &hosts).expect("first");
        assert_eq!(ca_path, d.join("ca/ca.pem"));
        let cert_path = d.join("self-signed.pem");
        let first = fs::read(&cert_path).expect("read");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(&cert_path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }

        ensure_self_signed(&d, &names(&["x.demo.localhost", "app.localhost"])).expect("second");
        assert_eq!(
            fs::read(&cert_path).expect("read"),
            first,
            "covered hosts leave the file alone"
        );

        ensure_self_signed(&d, &names(&["app.localhost", "new.localhost"])).expect("third");
        assert_ne!(
            fs::read(&cert_path).expect("read"),
            first,
            "a new host reissues"
        );

        let store = CertStore::load_dir(&d, Some("new.localhost")).expect("load");
        assert_eq!(store.entries().len(), 1, "the ca directory is not loaded");
        assert!(
            store.entries()[0].covers("app.localhost")
                && store.entries()[0].covers("new.localhost")
        );
        assert_eq!(
            fs::read_to_string(&ca_path).expect("ca"),
            DevCa::load_or_create(&d.join("ca")).expect("ca").cert_pem()
        );

        assert!(matches!(
            ensure_self_signed(&d, &[]),
            Err(TlsError::NoNames)
        ));
    }

    #[test]
    fn ensure_self_signed_reissues_a_certificate_close_to_expiry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let hosts = names(&["soon.localhost"]);
        ensure_self_signed(d, &hosts).expect("first");
        let ca = DevCa::load_or_create(&d.join("ca")).expect("ca");
        let (chain, key) = ca.issue(&hosts, 10 * DAY).expect("issue");
        let short = format!("{chain}{key}");
        write(&d.join("self-signed.pem"), &short);
        ensure_self_signed(d, &hosts).expect("second");
        assert_ne!(
            fs::read_to_string(d.join("self-signed.pem")).expect("read"),
            short
        );
        let store = CertStore::load_dir(d, None).expect("load");
        assert!(store.entries()[0].not_after > SystemTime::now() + 300 * DAY);
    }

    fn roots_from(path: &Path) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        let pem = fs::read(path).expect("read ca");
        let (added, ignored) =
            roots.add_parsable_certificates(rustls_pemfile::certs(&mut pem.as_slice()).flatten());
        assert_eq!((added, ignored), (1, 0));
        roots
    }

    /// Resolver as the listener will build it: SNI lookup in a store.
    #[derive(Debug)]
    struct StoreResolver(CertStore);

    impl ResolvesServerCert for StoreResolver {
        fn resolve(&self, hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
            self.0
                .find(hello.server_name())
                .map(|entry| Arc::clone(&entry.certified))
        }
    }

    /// Handshakes over an in-memory pipe and returns the leaf certificate's DNS names and the negotiated ALPN.
    async fn handshake(
        server: Arc<rustls::ServerConfig>,
        client: rustls::ClientConfig,
        sni: &str,
    ) -> (Vec<String>, Option<Vec<u8>>, rustls::ProtocolVersion) {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let acceptor = tokio_rustls::TlsAcceptor::from(server);
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).expect("server name");
        let server_task = tokio::spawn(async move {
            let mut stream = acceptor.accept(server_io).await.expect("server handshake");
            let mut buf = [0u8; 4];
            stream.read_exact(&mut buf).await.expect("read");
            stream.write_all(&buf).await.expect("echo");
            stream.flush().await.expect("flush");
        });
        let mut stream = connector
            .connect(name, client_io)
            .await
            .expect("client handshake");
        stream.write_all(b"ping").await.expect("write");
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf).await.expect("read echo");
        assert_eq!(&buf, b"ping");
        server_task.await.expect("server task");
        let (_, conn) = stream.get_ref();
        let leaf = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .expect("peer certificate");
        let info = parse_leaf(Path::new("peer"), leaf).expect("parse leaf");
        (
            info.names,
            conn.alpn_protocol().map(<[u8]>::to_vec),
            conn.protocol_version().expect("version"),
        )
    }

    #[tokio::test]
    async fn handshake_selects_certificate_by_sni_and_negotiates_h2() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let ca = DevCa::load_or_create(&d.join("ca")).expect("ca");
        write_pair(&ca, d, "a-api", &["api.example.test"]);
        write_pair(&ca, d, "b-wild", &["*.apps.example.test"]);
        let store = CertStore::load_dir(d, Some("api.example.test")).expect("load");
        let server = server_config(Arc::new(StoreResolver(store))).expect("server config");

        let client = || {
            let mut config = client_config(Some(&d.join("ca/ca.pem"))).expect("client config");
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            config
        };

        let (leaf_names, alpn, version) =
            handshake(Arc::clone(&server), client(), "web.apps.example.test").await;
        assert_eq!(leaf_names, names(&["*.apps.example.test"]));
        assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
        assert_eq!(version, rustls::ProtocolVersion::TLSv1_3);

        let (leaf_names, _, _) = handshake(Arc::clone(&server), client(), "api.example.test").await;
        assert_eq!(leaf_names, names(&["api.example.test"]));

        // The upstream client configuration offers only http/1.1, and TLS 1.2 still works.
        let mut tls12_client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS12])
        .expect("tls12")
        .with_root_certificates(roots_from(&d.join("ca/ca.pem")))
        .with_no_client_auth();
        tls12_client.alpn_protocols = client_config(None).expect("client config").alpn_protocols;
        let (leaf_names, alpn, version) = handshake(server, tls12_client, "api.example.test").await;
        assert_eq!(leaf_names, names(&["api.example.test"]));
        assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
        assert_eq!(version, rustls::ProtocolVersion::TLSv1_2);
    }

    #[test]
    fn server_config_allows_only_tls12_and_tls13() {
        let server =
            server_config(Arc::new(StoreResolver(CertStore::empty()))).expect("server config");
        let suites = &server.crypto_provider().cipher_suites;
        assert!(!suites.is_empty());
        for suite in suites {
            let version = suite.version().version;
            assert!(
                matches!(
                    version,
                    rustls::ProtocolVersion::TLSv1_2 | rustls::ProtocolVersion::TLSv1_3
                ),
                "unexpected {version:?}"
            );
        }
        assert_eq!(
            server.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec(), b"acme-tls/1".to_vec()]
        );
        assert!(server.ticketer.enabled(), "tickets enabled for resumption");

        // A TLS 1.1 ClientHello (RFC 4346 §7.4.1.2) without supported_versions must be refused.
        let mut hello = vec![0x03, 0x02]; // client_version TLS 1.1
        hello.extend_from_slice(&[0x11; 32]); // random
        hello.push(0); // empty session id
        hello.extend_from_slice(&[0x00, 0x02, 0x00, 0x2f]); // TLS_RSA_WITH_AES_128_CBC_SHA
        hello.extend_from_slice(&[0x01, 0x00]); // null compression
        let mut handshake = vec![0x01, 0x00, 0x00, u8::try_from(hello.len()).expect("short")];
        handshake.extend_from_slice(&hello);
        let mut record = vec![
            0x16,
            0x03,
            0x02,
            0x00,
            u8::try_from(handshake.len()).expect("short"),
        ];
        record.extend_from_slice(&handshake);

        let mut conn = rustls::ServerConnection::new(server).expect("connection");
        conn.read_tls(&mut record.as_slice()).expect("read");
        let error = conn.process_new_packets().expect_err("tls 1.1 refused");
        assert!(
            matches!(error, rustls::Error::PeerIncompatible(_)),
            "unexpected error {error:?}"
        );
    }

    #[test]
    fn client_config_names_a_bad_ca_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = client_config(None).expect("webpki roots only");
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);

        let missing = dir.path().join("missing.pem");
        let error = client_config(Some(&missing)).expect_err("missing");
        assert!(matches!(&error, TlsError::ReadFile { path, .. } if *path == missing));
        assert!(error.to_string().contains("missing.pem"));

        let empty = dir.path().join("empty.pem");
        write(&empty, "no pem here\n");
        let error = client_config(Some(&empty)).expect_err("empty");
        assert!(matches!(&error, TlsError::NoCaCertificate { path } if *path == empty));

        let ca = dir.path().join("ca.pem");
        write(&ca, &test_ca().cert_pem());
        client_config(Some(&ca)).expect("extra ca");
    }

    #[test]
    fn dir_fingerprint_tracks_top_level_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let missing = dir.path().join("missing");
        assert_eq!(dir_fingerprint(&missing), dir_fingerprint(&missing));

        let empty = dir_fingerprint(d);
        write(&d.join("a.pem"), "one");
        let one = dir_fingerprint(d);
        assert_ne!(one, empty);
        assert_eq!(dir_fingerprint(d), one, "stable without changes");

        fs::create_dir(d.join("sub")).expect("mkdir");
        write(&d.join("sub/b.pem"), "ignored");
        assert_eq!(dir_fingerprint(d), one, "subdirectories are ignored");

        write(&d.join("a.pem"), "longer");
        assert_ne!(dir_fingerprint(d), one, "size change is seen");

        fs::rename(d.join("a.pem"), d.join("b.pem")).expect("rename");
        let renamed = dir_fingerprint(d);
        fs::rename(d.join("b.pem"), d.join("a.pem")).expect("rename back");
        assert_ne!(renamed, dir_fingerprint(d), "name change is seen");
    }
}
