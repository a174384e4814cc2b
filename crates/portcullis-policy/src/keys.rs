//! Verification keys of one issuer: parsed from a JWKS, a PEM public key, or an HMAC
//! secret, and looked up by `kid` and algorithm.

use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

/// What kind of key this is; decides which algorithms it may verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
    Hmac,
}

impl KeyKind {
    fn fits(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            KeyKind::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            KeyKind::EcP256 => alg == ES256,
            KeyKind::EcP384 => alg == ES384,
            KeyKind::Ed25519 => alg == EdDSA,
            KeyKind::Hmac => matches!(alg, HS256 | HS384 | HS512),
        }
    }
}

/// One verification key.
#[derive(Clone)]
pub(crate) struct VerifyKey {
    pub(crate) kid: Option<String>,
    pub(crate) kind: KeyKind,
    /// The one algorithm the key is for, when its JWK says so.
    pub(crate) alg: Option<Algorithm>,
    pub(crate) key: DecodingKey,
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("kind", &self.kind)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// Why key material could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// The document is not a JWKS.
    #[error("not a JWKS document: {0}")]
    NotJwks(String),
    /// A key in the JWKS could not be used.
    #[error("keys[{index}]: {message}")]
    BadJwk {
        /// Position in `keys`.
        index: usize,
        /// What is wrong.
        message: String,
    },
    /// The PEM could not be read as a public key.
    #[error("not a usable PEM public key (RSA, EC P-256/P-384 or Ed25519)")]
    BadPem,
    /// No usable key at all.
    #[error("no usable verification key")]
    Empty,
    /// An HMAC secret that is too short.
    #[error("an HMAC secret must be at least 32 bytes, found {0}")]
    ShortSecret(usize),
    /// A key kind the issuer's algorithms cannot use.
    #[error("no key fits the issuer's algorithms {0}")]
    NoFittingKey(String),
}

/// The keys of one issuer.
#[derive(Debug, Clone, Default)]
pub(crate) struct KeySet {
    pub(crate) keys: Vec<VerifyKey>,
}

/// The outcome of looking up a key for a token.
pub(crate) enum KeyLookup<'k> {
    Found(&'k VerifyKey),
    Unknown,
    Mismatch,
}

impl KeySet {
    /// Parses a JWKS document (JSON value). Keys marked `use: enc` are skipped; a key that
    /// cannot be used is an error naming its index. Symmetric keys (`oct`) are accepted
    /// only when `allow_oct` (they come from a Secret).
    pub(crate) fn from_jwks(doc: &Value, allow_oct: bool) -> Result<Self, KeyError> {
        Self::parse_jwks(doc, allow_oct, false)
    }

    /// Parses a JWKS fetched from a provider: keys Portcullis cannot use (other key types,
    /// curves or algorithms a provider also publishes, symmetric keys) are skipped rather
    /// than failing the set; a private key still fails it, and so does a set with no usable
    /// key.
    pub(crate) fn from_remote_jwks(doc: &Value) -> Result<Self, KeyError> {
        Self::parse_jwks(doc, false, true)
    }

    fn parse_jwks(doc: &Value, allow_oct: bool, skip_unusable: bool) -> Result<Self, KeyError> {
        let keys = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| KeyError::NotJwks("expected an object with a `keys` array".into()))?;
        let mut out = Vec::with_capacity(keys.len());
        for (index, jwk) in keys.iter().enumerate() {
            let bad = |message: String| KeyError::BadJwk { index, message };
            if jwk.get("use").and_then(Value::as_str) == Some("enc") {
                continue;
            }
            let str_field = |name: &str| jwk.get(name).and_then(Value::as_str);
            let kty = str_field("kty").ok_or_else(|| bad("missing kty".into()))?;
            if jwk.get("d").is_some() {
                return Err(bad(
                    "holds a private key (`d`); publish public keys only".into()
                ));
            }
            let alg = match str_field("alg") {
                None => None,
                Some(a) => match parse_algorithm(a) {
                    Some(alg) => Some(alg),
                    None if skip_unusable => continue,
                    None => return Err(bad(format!("unsupported alg {a:?}"))),
                },
            };
            let supported = matches!(
                (kty, str_field("crv")),
                ("RSA", _) | ("EC", Some("P-256" | "P-384")) | ("OKP", Some("Ed25519"))
            ) || (kty == "oct" && !skip_unusable);
            if skip_unusable && !supported {
                continue;
            }
            let need = |name: &str| {
                str_field(name).ok_or_else(|| bad(format!("{kty} key lacks `{name}`")))
            };
            let (kind, key) = match kty {
                "RSA" => {
                    let key = DecodingKey::from_rsa_components(need("n")?, need("e")?)
                        .map_err(|e| bad(format!("bad RSA key: {e}")))?;
                    (KeyKind::Rsa, key)
                }
                "EC" => {
                    let kind = match need("crv")? {
                        "P-256" => KeyKind::EcP256,
                        "P-384" => KeyKind::EcP384,
                        other => return Err(bad(format!("unsupported EC curve {other:?}"))),
                    };
                    let key = DecodingKey::from_ec_components(need("x")?, need("y")?)
                        .map_err(|e| bad(format!("bad EC key: {e}")))?;
                    (kind, key)
                }
                "OKP" => {
                    if need("crv")? != "Ed25519" {
                        return Err(bad("only the Ed25519 OKP curve is supported".into()));
                    }
                    let key = DecodingKey::from_ed_components(need("x")?)
                        .map_err(|e| bad(format!("bad Ed25519 key: {e}")))?;
                    (KeyKind::Ed25519, key)
                }
                "oct" if allow_oct => {
                    let k = need("k")?;
                    let raw = base64_url(k).ok_or_else(|| bad("`k` is not base64url".into()))?;
                    if raw.len() < 32 {
                        return Err(KeyError::ShortSecret(raw.len()));
                    }
                    let key = DecodingKey::from_secret(&raw)
                        .map_err(|e| bad(format!("bad secret: {e}")))?;
                    (KeyKind::Hmac, key)
                }
                "oct" => {
                    return Err(bad(
                        "shared secrets (kty oct) belong in a Secret, not inline".into(),
                    ));
                }
                other => return Err(bad(format!("unsupported kty {other:?}"))),
            };
            if let Some(alg) = alg
                && !kind.fits(alg)
            {
                return Err(bad(format!("alg {alg:?} does not fit a {kty} key")));
            }
            out.push(VerifyKey {
                kid: str_field("kid").map(str::to_owned),
                kind,
                alg,
                key,
            });
        }
        if out.is_empty() {
            return Err(KeyError::Empty);
        }
        Ok(Self { keys: out })
    }

    /// Parses a PEM public key (SPKI or PKCS#1 RSA).
    pub(crate) fn from_pem(pem: &[u8]) -> Result<Self, KeyError> {
        let (kind, key) = if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
            (KeyKind::Rsa, k)
        } else if let Ok(k) = DecodingKey::from_ed_pem(pem) {
            (KeyKind::Ed25519, k)
        } else if let Ok(k) = DecodingKey::from_ec_pem(pem) {
            // The curve is not exposed by the PEM parser: tell P-256 from P-384 by the size
            // of the uncompressed point (65 or 97 bytes).
            let kind = match k.try_get_as_bytes().map(<[u8]>::len) {
                Ok(65) => KeyKind::EcP256,
                Ok(97) => KeyKind::EcP384,
                _ => return Err(KeyError::BadPem),
            };
            (kind, k)
        } else {
            return Err(KeyError::BadPem);
        };
        Ok(Self {
            keys: vec![VerifyKey {
                kid: None,
                kind,
                alg: None,
                key,
            }],
        })
    }

    /// An HMAC shared secret (at least 32 bytes).
    pub(crate) fn from_secret(secret: &[u8]) -> Result<Self, KeyError> {
        if secret.len() < 32 {
            return Err(KeyError::ShortSecret(secret.len()));
        }
        let key = DecodingKey::from_secret(secret).map_err(|_| KeyError::Empty)?;
        Ok(Self {
            keys: vec![VerifyKey {
                kid: None,
                kind: KeyKind::Hmac,
                alg: None,
                key,
            }],
        })
    }

    /// Reads Secret data: a JWKS (JSON), a PEM public key, or else a raw HMAC secret.
    pub(crate) fn from_secret_data(data: &[u8]) -> Result<Self, KeyError> {
        let trimmed = data.trim_ascii();
        if trimmed.starts_with(b"{") {
            let doc: Value = serde_json::from_slice(trimmed)
                .map_err(|e| KeyError::NotJwks(format!("invalid JSON: {e}")))?;
            Self::from_jwks(&doc, true)
        } else if trimmed.starts_with(b"-----BEGIN") {
            Self::from_pem(trimmed)
        } else {
            Self::from_secret(data)
        }
    }

    /// Keeps only keys that fit at least one of `algs`; an error if none is left.
    pub(crate) fn retain_fitting(&mut self, algs: &[Algorithm]) -> Result<(), KeyError> {
        self.keys.retain(|k| {
            algs.iter()
                .any(|a| k.kind.fits(*a) && k.alg.is_none_or(|ka| ka == *a))
        });
        if self.keys.is_empty() {
            return Err(KeyError::NoFittingKey(format!("{algs:?}")));
        }
        Ok(())
    }

    /// Finds the key for a token: by `kid` when the token has one; otherwise the one key
    /// that fits the algorithm (several fitting keys without a `kid` is ambiguous: refused).
    pub(crate) fn lookup(&self, kid: Option<&str>, alg: Algorithm) -> KeyLookup<'_> {
        let fits = |k: &&VerifyKey| k.kind.fits(alg) && k.alg.is_none_or(|a| a == alg);
        match kid {
            Some(kid) => {
                let mut seen = false;
                for k in self.keys.iter().filter(|k| k.kid.as_deref() == Some(kid)) {
                    if fits(&k) {
                        return KeyLookup::Found(k);
                    }
                    seen = true;
                }
                if seen {
                    return KeyLookup::Mismatch;
                }
                // A key published without a kid (a PEM public key, say) answers for any
                // kid, but only when it is the one such key that fits.
                let mut anonymous = self.keys.iter().filter(|k| k.kid.is_none()).filter(fits);
                match (anonymous.next(), anonymous.next()) {
                    (Some(k), None) => KeyLookup::Found(k),
                    _ => KeyLookup::Unknown,
                }
            }
            None => {
                let mut fitting = self.keys.iter().filter(fits);
                match (fitting.next(), fitting.next()) {
                    (Some(k), None) => KeyLookup::Found(k),
                    (Some(_), Some(_)) => KeyLookup::Unknown,
                    (None, _) if self.keys.is_empty() => KeyLookup::Unknown,
                    (None, _) => KeyLookup::Mismatch,
                }
            }
        }
    }
}

/// Parses a JWS `alg` name into a supported algorithm; `none` and unknown names give None.
pub(crate) fn parse_algorithm(name: &str) -> Option<Algorithm> {
    use Algorithm::*;
    Some(match name {
        "RS256" => RS256,
        "RS384" => RS384,
        "RS512" => RS512,
        "PS256" => PS256,
        "PS384" => PS384,
        "PS512" => PS512,
        "ES256" => ES256,
        "ES384" => ES384,
        "EdDSA" => EdDSA,
        "HS256" => HS256,
        "HS384" => HS384,
        "HS512" => HS512,
        _ => return None,
    })
}

fn base64_url(s: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .ok()
}

/// Checks a JWKS fetched from a provider the way the compiler will read it: the number of
/// usable public keys, or why there is none (no `keys` array, a private or symmetric key,
/// a malformed key).
pub fn usable_keys(doc: &Value) -> Result<usize, KeyError> {
    KeySet::from_remote_jwks(doc).map(|k| k.keys.len())
}
