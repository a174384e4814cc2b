//! `portcullis token mint`: sign a JWT with a DEV-ONLY key.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use jsonwebtoken::{Algorithm, AlgorithmFamily, EncodingKey, Header};
use serde_json::{Map, Value};

use super::secs;

/// The comment line that marks a key file as dev-only. It must stand on its own line
/// above the PEM block.
pub const DEV_ONLY_MARKER: &str = "# PORTCULLIS DEV-ONLY KEY: never use in production";
/// Default `iss`: the issuer the quickstart TokenPolicy trusts.
pub const DEFAULT_ISSUER: &str = "https://issuer.portcullis.local";
/// Default `aud`: the audience the quickstart TokenPolicy accepts.
pub const DEFAULT_AUDIENCE: &str = "quickstart";
/// Default `kid`: the key ID of the quickstart key in the quickstart TokenPolicy's JWKS.
pub const DEFAULT_KID: &str = "dev-1";

/// Arguments of `portcullis token mint`.
#[derive(clap::Args, Debug, Clone)]
pub struct MintArgs {
    /// PEM private key to sign with (RSA for RS*/PS*, EC for ES*, Ed25519 for EdDSA; the
    /// raw secret for HS*). It must carry the line
    /// "# PORTCULLIS DEV-ONLY KEY: never use in production" above the PEM block, or
    /// --force.
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,

    /// The `sub` claim.
    #[arg(long, value_name = "SUBJECT")]
    pub sub: String,

    /// A scope to grant; repeat for more. Written space-separated into the `scope` claim
    /// (left out when no scope is given).
    #[arg(long = "scope", value_name = "SCOPE")]
    pub scopes: Vec<String>,

    /// Lifetime: `exp` = `iat` + TTL (e.g. 30s, 5m, 1h).
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration_arg)]
    pub ttl: Duration,

    /// Pretend the token was issued this long ago (`iat` = now - DURATION). With a TTL
    /// shorter than this the token is already expired: `--ttl 5m --issued-ago 10m`.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_arg)]
    pub issued_ago: Option<Duration>,

    /// The `iss` claim.
    #[arg(long, value_name = "URL", default_value = DEFAULT_ISSUER)]
    pub iss: String,

    /// The `aud` claim; repeat for several (then `aud` is an array).
    #[arg(long = "aud", value_name = "AUDIENCE", default_values_t = [DEFAULT_AUDIENCE.to_owned()])]
    pub aud: Vec<String>,

    /// The `kid` header; an empty string leaves it out.
    #[arg(long, value_name = "KID", default_value = DEFAULT_KID)]
    pub kid: String,

    /// Signature algorithm: RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384,
    /// EdDSA, HS256, HS384 or HS512.
    #[arg(long, value_name = "ALG", default_value = "RS256", value_parser = parse_algorithm)]
    pub alg: Algorithm,

    /// The `jti` claim (default: 128 random bits, hex).
    #[arg(long, value_name = "ID")]
    pub jti: Option<String>,

    /// An extra claim, NAME=VALUE; VALUE is read as JSON when it parses (42, true,
    /// ["a","b"]) and as a string otherwise. Applied last, so it overrides any claim
    /// above. Repeat for more.
    #[arg(long = "claim", value_name = "NAME=VALUE", value_parser = parse_claim)]
    pub claims: Vec<(String, Value)>,

    /// Sign even with a key that is not marked dev-only.
    #[arg(long)]
    pub force: bool,

    /// Mint this many tokens, one per line, for load tests with many distinct tokens. With
    /// more than one, token i (from 1) has `sub` SUBJECT-i and `jti` ID-i (with --jti) or
    /// its own random `jti`.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub count: u32,
}

/// Signs a token as `token mint` would, at `now` (seconds since the epoch).
#[cfg(test)]
pub fn mint_token(args: &MintArgs, now: i64) -> anyhow::Result<String> {
    let key = signing_key(args)?;
    sign(args, &key, now, None)
}

/// Signs `args.count` tokens as `token mint --count` would: the key is read once.
pub fn mint_tokens(args: &MintArgs, now: i64) -> anyhow::Result<Vec<String>> {
    let key = signing_key(args)?;
    if args.count <= 1 {
        return Ok(vec![sign(args, &key, now, None)?]);
    }
    (1..=args.count)
        .map(|i| sign(args, &key, now, Some(i)))
        .collect()
}

/// Reads the key file, refusing one not marked dev-only unless `--force`.
fn signing_key(args: &MintArgs) -> anyhow::Result<EncodingKey> {
    let path = args.key.as_path();
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading key file {}", path.display()))?;
    let (dev_only, key_text) = split_key_file(&text);
    if !dev_only {
        if !args.force {
            bail!(
                "refusing to sign with {}: it is not marked as a dev-only key.\n\
                 `token mint` is for development keys, which carry the line\n  {DEV_ONLY_MARKER}\n\
                 above the PEM block. Minting tokens by hand with a real issuer's key \
                 bypasses that issuer; pass --force if you really mean to.",
                path.display()
            );
        }
        eprintln!(
            "warning: signing with {}, which is not marked dev-only (--force)",
            path.display()
        );
    }
    encoding_key(args.alg, &key_text, path)
}

/// One token; `index` (from 1) numbers the `sub` and `jti` of one of several.
fn sign(
    args: &MintArgs,
    key: &EncodingKey,
    now: i64,
    index: Option<u32>,
) -> anyhow::Result<String> {
    let path = args.key.as_path();
    let numbered = |base: &str| match index {
        Some(i) => format!("{base}-{i}"),
        None => base.to_owned(),
    };
    let issued_at = now.saturating_sub(secs(args.issued_ago.unwrap_or_default()));
    let expires_at = issued_at.saturating_add(secs(args.ttl));
    let mut claims = Map::new();
    claims.insert("iss".into(), args.iss.clone().into());
    claims.insert("sub".into(), numbered(&args.sub).into());
    match args.aud.as_slice() {
        [] => {}
        [one] => {
            claims.insert("aud".into(), one.clone().into());
        }
        many => {
            claims.insert("aud".into(), many.to_vec().into());
        }
    }
    claims.insert("iat".into(), issued_at.into());
    claims.insert("exp".into(), expires_at.into());
    let jti = args.jti.as_deref().map_or_else(random_jti, numbered);
    claims.insert("jti".into(), jti.into());
    let scopes: Vec<&str> = args
        .scopes
        .iter()
        .flat_map(|s| s.split_whitespace())
        .collect();
    if !scopes.is_empty() {
        claims.insert("scope".into(), scopes.join(" ").into());
    }
    for (name, value) in &args.claims {
        claims.insert(name.clone(), value.clone());
    }

    let mut header = Header::new(args.alg);
    if !args.kid.is_empty() {
        header.kid = Some(args.kid.clone());
    }
    jsonwebtoken::encode(&header, &claims, key)
        .with_context(|| format!("signing with {} ({:?})", path.display(), args.alg))
}

/// Splits a key file into whether it is marked dev-only and its content without comment
/// lines (lines starting with `#`). The marker counts only above the PEM block.
fn split_key_file(text: &str) -> (bool, String) {
    let mut dev_only = false;
    let mut in_pem = false;
    let mut content = String::with_capacity(text.len());
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') {
            dev_only |= !in_pem && trimmed == DEV_ONLY_MARKER;
            continue;
        }
        if trimmed.starts_with("-----BEGIN") {
            in_pem = true;
        }
        content.push_str(line);
        content.push('\n');
    }
    (dev_only, content)
}

/// Builds the signing key the algorithm needs from the key file's content.
fn encoding_key(alg: Algorithm, text: &str, path: &Path) -> anyhow::Result<EncodingKey> {
    let (result, wanted) = match alg.family() {
        AlgorithmFamily::Rsa => (EncodingKey::from_rsa_pem(text.as_bytes()), "an RSA"),
        AlgorithmFamily::Ec => (EncodingKey::from_ec_pem(text.as_bytes()), "an EC (PKCS#8)"),
        AlgorithmFamily::Ed => (EncodingKey::from_ed_pem(text.as_bytes()), "an Ed25519"),
        AlgorithmFamily::Hmac => {
            let secret = text.trim();
            if secret.is_empty() {
                bail!("{} holds no shared secret for {alg:?}", path.display());
            }
            (
                EncodingKey::from_secret(secret.as_bytes()),
                "a shared-secret",
            )
        }
    };
    result.map_err(|e| {
        anyhow::anyhow!(
            "{} is not {wanted} private key in PEM form, which {alg:?} needs ({e}); \
             use --alg RS256 for an RSA key, ES256 for a P-256 key, EdDSA for an Ed25519 key",
            path.display()
        )
    })
}

fn parse_duration_arg(s: &str) -> Result<Duration, String> {
    portcullis_api::parse_duration(s)
}

fn parse_algorithm(s: &str) -> Result<Algorithm, String> {
    if s.eq_ignore_ascii_case("none") {
        return Err("alg none is never accepted: tokens must be signed".into());
    }
    s.parse().map_err(|_| {
        format!(
            "unknown algorithm {s:?}: use one of {}",
            portcullis_api::SUPPORTED_ALGORITHMS.join(", ")
        )
    })
}

fn parse_claim(s: &str) -> Result<(String, Value), String> {
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not NAME=VALUE"))?;
    if name.is_empty() {
        return Err(format!("{s:?} has an empty claim name"));
    }
    let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
    Ok((name.to_owned(), value))
}

/// 128 random bits, hex: from the OS, or (where /dev/urandom is missing) from the
/// OS-seeded keys of std's `RandomState` mixed with the time.
fn random_jti() -> String {
    let mut bytes = [0u8; 16];
    let from_os = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if from_os.is_err() {
        use std::hash::{BuildHasher, Hasher};
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        for chunk in bytes.chunks_mut(8) {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(nanos);
            h.write_u32(std::process::id());
            chunk.copy_from_slice(&h.finish().to_le_bytes());
        }
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
