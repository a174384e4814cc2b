//! API keys: their format, and what a Secret says about one.
//!
//! A key reads `pcl_` + 12 characters of key id + 32 characters of secret + 6 characters of
//! checksum, all base62 (`[0-9A-Za-z]`), 54 characters in all, e.g.
//! `pcl_3fZk9QxW2bLm` `7Hq...` (one word, no separators, so it is selected whole by a
//! double click and matched by `pcl_[0-9A-Za-z]{50}`). The checksum is the CRC32 (IEEE) of
//! everything before it, base62, zero-padded: like GitHub's `ghp_` tokens, a secret scanner
//! can tell a real key from a look-alike without asking anyone, and the gateway refuses a
//! mistyped key without a lookup.
//!
//! The key itself is never stored. A Secret labelled `portcullis.dev/api-key: "true"` holds
//! its id, the SHA-256 of the whole key (lowercase hex), the consumer it belongs to, its
//! scopes and an optional expiry; a TokenPolicy's `apiKeys.selector` picks the Secrets of its
//! namespace it trusts. The id is not secret: it names the key in revocations
//! (`revocations[].apiKeyId`), logs and `kubectl get secrets`.

use sha2::{Digest, Sha256};

/// What every API key starts with.
pub const PREFIX: &str = "pcl_";
/// Characters of key id after the prefix.
pub const ID_LEN: usize = 12;
/// Characters of secret after the id.
pub const SECRET_LEN: usize = 32;
/// Characters of checksum at the end.
pub const CHECKSUM_LEN: usize = 6;
/// Length of a whole key.
pub const KEY_LEN: usize = PREFIX.len() + ID_LEN + SECRET_LEN + CHECKSUM_LEN;

/// The label that marks a Secret as holding an API key (value `"true"`). A TokenPolicy's
/// selector is matched only among Secrets that carry it.
pub const SECRET_LABEL: &str = "portcullis.dev/api-key";
/// The `type` of an API-key Secret (informational: selection is by label).
pub const SECRET_TYPE: &str = "portcullis.dev/api-key";
/// Secret data key: the key id (12 base62 characters).
pub const DATA_KEY_ID: &str = "keyId";
/// Secret data key: lowercase hex SHA-256 of the whole key.
pub const DATA_SHA256: &str = "sha256";
/// Secret data key: the consumer the key belongs to.
pub const DATA_CONSUMER: &str = "consumer";
/// Secret data key: space-separated scopes.
pub const DATA_SCOPES: &str = "scopes";
/// Secret data key (optional): RFC 3339 instant after which the key is refused.
pub const DATA_EXPIRES_AT: &str = "expiresAt";
/// Secret data key (optional): RFC 3339 instant the key was created (its `iat`, for
/// `subject` + `issuedBefore` revocations of the consumer).
pub const DATA_CREATED_AT: &str = "createdAt";
/// Every data key a Secret of an API key may hold: what the controller sends to proxies.
pub const DATA_KEYS: [&str; 6] = [
    DATA_KEY_ID,
    DATA_SHA256,
    DATA_CONSUMER,
    DATA_SCOPES,
    DATA_EXPIRES_AT,
    DATA_CREATED_AT,
];

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Why a string is not an API key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ApiKeyFormatError {
    /// It does not start with `pcl_`.
    #[error("an API key starts with {PREFIX}")]
    Prefix,
    /// Not 54 characters.
    #[error("an API key is {KEY_LEN} characters long")]
    Length,
    /// A character outside `[0-9A-Za-z]` after the prefix.
    #[error("an API key holds only letters and digits after {PREFIX}")]
    Character,
    /// The checksum does not match: mistyped or made up.
    #[error("the API key's checksum does not match (mistyped or truncated?)")]
    Checksum,
}

/// A well-formed API key, borrowed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ApiKey<'k> {
    key: &'k str,
}

impl std::fmt::Debug for ApiKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret part.
        write!(f, "ApiKey({PREFIX}{}…)", self.id())
    }
}

impl<'k> ApiKey<'k> {
    /// Checks the format and the checksum.
    pub fn parse(key: &'k str) -> Result<Self, ApiKeyFormatError> {
        let rest = key.strip_prefix(PREFIX).ok_or(ApiKeyFormatError::Prefix)?;
        if key.len() != KEY_LEN {
            return Err(ApiKeyFormatError::Length);
        }
        if !rest.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(ApiKeyFormatError::Character);
        }
        let (body, sum) = key.split_at(KEY_LEN - CHECKSUM_LEN);
        if checksum(body).as_bytes() != sum.as_bytes() {
            return Err(ApiKeyFormatError::Checksum);
        }
        Ok(Self { key })
    }

    /// Whether `s` looks like an API key (the prefix): the gateway then judges it as one
    /// (and refuses it if malformed) rather than as a JWT or an opaque token.
    pub fn looks_like(s: &str) -> bool {
        s.starts_with(PREFIX)
    }

    /// The key id: public, names the key in Secrets, revocations and logs.
    pub fn id(&self) -> &'k str {
        &self.key[PREFIX.len()..PREFIX.len() + ID_LEN]
    }

    /// SHA-256 of the whole key: what a Secret stores.
    pub fn sha256(&self) -> [u8; 32] {
        Sha256::digest(self.key.as_bytes()).into()
    }

    /// The whole key.
    pub fn as_str(&self) -> &'k str {
        self.key
    }
}

/// A new key from `random` (at least 44 bytes from the OS's CSPRNG; the caller supplies
/// them, so this crate stays free of IO): 12 id characters and 32 secret characters, each
/// drawn without modulo bias by rejection, then the checksum. Returns `None` when
/// `random` runs out before 44 characters are drawn (give it 128 bytes and that happens
/// with probability below 2^-100).
pub fn generate(random: &[u8]) -> Option<String> {
    let mut key = String::with_capacity(KEY_LEN);
    key.push_str(PREFIX);
    // 62 * 4 = 248: bytes below 248 map evenly onto base62 with `% 62`.
    let mut chars = random
        .iter()
        .filter(|&&b| b < 248)
        .map(|&b| BASE62[(b % 62) as usize] as char);
    for _ in 0..ID_LEN + SECRET_LEN {
        key.push(chars.next()?);
    }
    let sum = checksum(&key);
    key.push_str(&sum);
    Some(key)
}

/// Base62 of the CRC32 of `body`, zero-padded to six characters (62^6 > 2^32).
fn checksum(body: &str) -> String {
    let mut n = u64::from(crc32(body.as_bytes()));
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// CRC-32/ISO-HDLC (the zlib, PNG and GitHub-token one), bit by bit: keys are short.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_check_value() {
        // The catalogue's check value for CRC-32/ISO-HDLC.
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn generated_keys_parse_and_carry_their_id() {
        let random: Vec<u8> = (0..=255u8).cycle().skip(7).take(128).collect();
        let key = generate(&random).unwrap();
        assert_eq!(key.len(), KEY_LEN);
        let parsed = ApiKey::parse(&key).unwrap();
        assert_eq!(parsed.id(), &key[4..16]);
        assert_eq!(parsed.as_str(), key);
        assert!(!format!("{parsed:?}").contains(&key[16..48]));
    }

    #[test]
    fn every_single_character_change_is_caught() {
        let random: Vec<u8> = (0..128u8).map(|i| i.wrapping_mul(37)).collect();
        let key = generate(&random).unwrap();
        for i in PREFIX.len()..KEY_LEN {
            for c in [b'0', b'a', b'Z'] {
                let mut bytes = key.clone().into_bytes();
                if bytes[i] == c {
                    continue;
                }
                bytes[i] = c;
                let other = String::from_utf8(bytes).unwrap();
                assert_eq!(
                    ApiKey::parse(&other),
                    Err(ApiKeyFormatError::Checksum),
                    "{i}"
                );
            }
        }
    }

    #[test]
    fn malformed_keys_are_named() {
        let key = generate(&[1u8; 128]).unwrap();
        assert_eq!(ApiKey::parse("ghp_x"), Err(ApiKeyFormatError::Prefix));
        assert_eq!(
            ApiKey::parse(&key[..KEY_LEN - 1]),
            Err(ApiKeyFormatError::Length)
        );
        let bad = format!("{}-{}", &key[..10], &key[11..]);
        assert_eq!(ApiKey::parse(&bad), Err(ApiKeyFormatError::Character));
        assert_eq!(generate(&[250u8; 128]), None);
    }
}
