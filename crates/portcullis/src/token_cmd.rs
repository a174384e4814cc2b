//! `portcullis token mint` and `portcullis token inspect`: development tools for bearer
//! tokens.
//!
//! `mint` signs a JWT with a private key that is marked DEV-ONLY (the quickstart key in
//! `examples/quickstart/`), so people can try routes and policies without an identity
//! provider. It refuses any other key unless `--force`: minting by hand with a real
//! issuer's key would bypass that issuer.
//!
//! `inspect` decodes a token WITHOUT verifying it, to answer "what is in this token and
//! when does it expire". It prints the token's fingerprint (as the proxy logs it), never
//! the token itself.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, AlgorithmFamily, EncodingKey, Header};
use serde_json::{Map, Value};

/// The comment line that marks a key file as dev-only. It must stand on its own line
/// above the PEM block.
pub const DEV_ONLY_MARKER: &str = "# PORTCULLIS DEV-ONLY KEY: never use in production";
/// Default `iss`: the issuer the quickstart TokenPolicy trusts.
pub const DEFAULT_ISSUER: &str = "https://issuer.portcullis.local";
/// Default `aud`: the audience the quickstart TokenPolicy accepts.
pub const DEFAULT_AUDIENCE: &str = "quickstart";
/// Default `kid`: the key ID of the quickstart key in the quickstart TokenPolicy's JWKS.
pub const DEFAULT_KID: &str = "dev-1";

/// Longest input `inspect` reads: far beyond any token a proxy accepts.
const MAX_INSPECT_BYTES: usize = 64 * 1024;

/// `portcullis token ...`
#[derive(clap::Subcommand, Debug)]
#[allow(clippy::large_enum_variant)] // parsed once per process; boxing buys nothing
pub enum TokenCommand {
    /// Sign a JWT with a DEV-ONLY private key and print it (and nothing else) on stdout.
    ///
    /// The defaults (--iss, --aud, --kid, --alg) match examples/quickstart, e.g.:
    /// portcullis token mint --key examples/quickstart/dev-private.pem --sub alice
    /// --scope orders:read --ttl 5m
    Mint(MintArgs),
    /// Decode a token WITHOUT verifying it: fingerprint, header, claims, time to expiry.
    ///
    /// The token itself is never printed.
    Inspect(InspectArgs),
}

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
}

/// Arguments of `portcullis token inspect`.
#[derive(clap::Args, Debug, Clone)]
pub struct InspectArgs {
    /// The token (a leading `Bearer ` is ignored), or `-` to read it from stdin, which is
    /// also the default. Prefer stdin: arguments end up in shell history and `ps`.
    #[arg(value_name = "TOKEN")]
    pub token: Option<String>,
}

/// Runs a `token` subcommand.
pub fn run(cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Mint(args) => {
            let token = mint_token(&args, unix_now())?;
            println!("{token}");
        }
        TokenCommand::Inspect(args) => {
            let input = match args.token.as_deref() {
                None | Some("-") => read_stdin()?,
                Some(t) => t.to_owned(),
            };
            print!("{}", inspect_token(&input, unix_now())?);
        }
    }
    Ok(())
}

// === mint ===

/// Signs a token as `token mint` would, at `now` (seconds since the epoch).
pub fn mint_token(args: &MintArgs, now: i64) -> anyhow::Result<String> {
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
    let key = encoding_key(args.alg, &key_text, path)?;

    let issued_at = now.saturating_sub(secs(args.issued_ago.unwrap_or_default()));
    let expires_at = issued_at.saturating_add(secs(args.ttl));
    let mut claims = Map::new();
    claims.insert("iss".into(), args.iss.clone().into());
    claims.insert("sub".into(), args.sub.clone().into());
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
    let jti = args.jti.clone().unwrap_or_else(random_jti);
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
    jsonwebtoken::encode(&header, &claims, &key)
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

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, secs)
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

// === inspect ===

fn read_stdin() -> anyhow::Result<String> {
    let mut buf = Vec::new();
    std::io::stdin()
        .take(MAX_INSPECT_BYTES as u64 + 1)
        .read_to_end(&mut buf)
        .context("reading the token from stdin")?;
    if buf.len() > MAX_INSPECT_BYTES {
        bail!("stdin holds more than {MAX_INSPECT_BYTES} bytes: that is not a token");
    }
    String::from_utf8(buf).context("stdin is not UTF-8 text, so it holds no JWT")
}

/// The report `token inspect` prints for `input` at `now`. Never contains the token.
pub fn inspect_token(input: &str, now: i64) -> anyhow::Result<String> {
    let token = strip_bearer(input.trim());
    if token.is_empty() {
        bail!("no token given: pass it as an argument, or on stdin with `-`");
    }
    if token.len() > MAX_INSPECT_BYTES {
        bail!("the input is longer than {MAX_INSPECT_BYTES} bytes: that is not a token");
    }
    if let Some((offset, c)) = token
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        bail!(
            "not a compact JWT: character {c:?} at offset {offset}; a JWT holds only \
             base64url (A-Z a-z 0-9 - _, no '=' padding) in dot-separated segments"
        );
    }
    let segments: Vec<&str> = token.split('.').collect();
    match segments.len() {
        3 => {}
        5 => bail!(
            "an encrypted token (JWE, 5 segments): its claims cannot be read without the \
             decryption key, and Portcullis refuses JWE"
        ),
        n => bail!(
            "not a compact JWT: expected 3 dot-separated segments (header.claims.signature), \
             found {n}"
        ),
    }
    let header = decode_segment(segments[0], "header")?;
    let claims = decode_segment(segments[1], "claims")?;
    let signature = URL_SAFE_NO_PAD
        .decode(segments[2])
        .map_err(|e| anyhow::anyhow!("the signature segment is not base64url: {e}"))?;

    let mut out = String::new();
    out.push_str(
        "NOT VERIFIED: decoded without checking the signature; nothing below is trusted.\n",
    );
    out.push_str(&format!(
        "fingerprint: {}\n",
        portcullis_policy::token_digest(token).fingerprint()
    ));
    out.push_str("header:\n");
    out.push_str(&pretty(&header));
    out.push_str("\nclaims:\n");
    out.push_str(&pretty(&claims));
    out.push('\n');
    match header.get("alg").and_then(Value::as_str) {
        Some(alg) if alg.eq_ignore_ascii_case("none") => {
            out.push_str("alg:        none: an unsigned token, which Portcullis always refuses\n")
        }
        Some(_) => {}
        None => out.push_str("alg:        missing: Portcullis refuses this token\n"),
    }
    if signature.is_empty() {
        out.push_str("signature:  none (empty segment)\n");
    } else {
        out.push_str(&format!("signature:  {} bytes\n", signature.len()));
    }
    if let Some(v) = claims.get("iat") {
        out.push_str(&time_line("issued:", v, now, |d| match d {
            d if d >= 0 => format!("{} ago", human_duration(d.unsigned_abs())),
            d => format!("in {}: not valid yet", human_duration(d.unsigned_abs())),
        }));
    }
    if let Some(v) = claims.get("nbf") {
        out.push_str(&time_line("not before:", v, now, |d| match d {
            d if d >= 0 => format!("valid since {}", human_duration(d.unsigned_abs())),
            d => format!("not valid for {}", human_duration(d.unsigned_abs())),
        }));
    }
    match claims.get("exp") {
        None => out.push_str("expiry:     none: no exp claim (Portcullis refuses such tokens)\n"),
        Some(v) => out.push_str(&time_line("expiry:", v, now, |d| {
            if d < 0 {
                format!("expires in {}", human_duration(d.unsigned_abs()))
            } else {
                format!("expired {} ago", human_duration(d.unsigned_abs()))
            }
        })),
    }
    if let (Some(iat), Some(exp)) = (
        claims.get("iat").and_then(Value::as_i64),
        claims.get("exp").and_then(Value::as_i64),
    ) {
        let life = exp.saturating_sub(iat);
        if life >= 0 {
            out.push_str(&format!(
                "lifetime:   {}\n",
                human_duration(life.unsigned_abs())
            ));
        } else {
            out.push_str("lifetime:   negative: exp is before iat\n");
        }
    }
    Ok(out)
}

/// Accepts a pasted `Authorization` value: `Bearer <token>`.
fn strip_bearer(s: &str) -> &str {
    match s.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
        _ => s,
    }
}

fn decode_segment(segment: &str, name: &str) -> anyhow::Result<Map<String, Value>> {
    if segment.is_empty() {
        bail!("the {name} segment is empty");
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|e| anyhow::anyhow!("the {name} segment is not base64url: {e}"))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => bail!("the {name} segment is JSON but not an object"),
        Err(e) => bail!("the {name} segment is not JSON: {e}"),
    }
}

fn pretty(map: &Map<String, Value>) -> String {
    // Serializing a map of JSON values cannot fail.
    serde_json::to_string_pretty(map).unwrap_or_default()
}

/// One line for a NumericDate claim: label, UTC time, and `describe(now - value)`.
fn time_line(label: &str, v: &Value, now: i64, describe: impl Fn(i64) -> String) -> String {
    match v.as_i64() {
        Some(t) => format!(
            "{label:<11} {} ({})\n",
            rfc3339(t),
            describe(now.saturating_sub(t))
        ),
        None => {
            format!("{label:<11} not a whole number of seconds: Portcullis refuses this token\n")
        }
    }
}

/// `4m 12s`, `2h 5m`, `3d 1h`: the two largest units.
fn human_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3_600 % 24, secs / 60 % 60, secs % 60);
    let (major, minor) = if d > 0 {
        ((d, "d"), (h, "h"))
    } else if h > 0 {
        ((h, "h"), (m, "m"))
    } else if m > 0 {
        ((m, "m"), (s, "s"))
    } else {
        return format!("{s}s");
    };
    if minor.0 == 0 {
        format!("{}{}", major.0, major.1)
    } else {
        format!("{}{} {}{}", major.0, major.1, minor.0, minor.1)
    }
}

/// Seconds since the epoch as RFC 3339 UTC (years 0000-9999; the number otherwise).
fn rfc3339(t: i64) -> String {
    const MIN: i64 = -62_167_219_200; // 0000-01-01T00:00:00Z
    const MAX: i64 = 253_402_300_799; // 9999-12-31T23:59:59Z
    if !(MIN..=MAX).contains(&t) {
        return format!("{t} (out of range)");
    }
    let (days, rem) = (t.div_euclid(86_400), t.rem_euclid(86_400));
    // Civil from days (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use portcullis_api::{ApiRoute, TokenPolicy};
    use portcullis_policy::{Decision, DenyReason, RequestParts, Snapshot};

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(subcommand)]
        cmd: TokenCommand,
    }

    fn quickstart(file: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../examples/quickstart")
            .join(file)
    }

    fn mint_args(extra: &[&str]) -> MintArgs {
        let key = quickstart("dev-private.pem");
        let mut argv = vec![
            "portcullis",
            "mint",
            "--key",
            key.to_str().unwrap(),
            "--sub",
            "alice",
        ];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).unwrap().cmd {
            TokenCommand::Mint(a) => a,
            other => panic!("parsed {other:?}"),
        }
    }

    fn segment_json(token: &str, i: usize) -> Value {
        let seg = token.split('.').nth(i).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(seg).unwrap()).unwrap()
    }

    /// The quickstart manifests, parsed from their multi-document YAML by `kind`.
    fn quickstart_manifests() -> (Vec<ApiRoute>, Vec<TokenPolicy>) {
        use serde::Deserialize;
        let (mut routes, mut policies) = (Vec::new(), Vec::new());
        for file in ["policy.yaml", "route.yaml"] {
            let text = std::fs::read_to_string(quickstart(file)).unwrap();
            for doc in serde_yaml::Deserializer::from_str(&text) {
                let value = serde_yaml::Value::deserialize(doc).unwrap();
                match value.get("kind").and_then(|k| k.as_str()) {
                    Some("ApiRoute") => routes.push(serde_yaml::from_value(value).unwrap()),
                    Some("TokenPolicy") => policies.push(serde_yaml::from_value(value).unwrap()),
                    Some(other) => panic!("{file}: unexpected kind {other}"),
                    None if value.is_null() => {}
                    None => panic!("{file}: a document without kind"),
                }
            }
        }
        (routes, policies)
    }

    fn quickstart_snapshot(policies_edit: impl FnOnce(&mut [TokenPolicy])) -> Snapshot {
        let (routes, mut policies) = quickstart_manifests();
        assert_eq!((routes.len(), policies.len()), (1, 1));
        policies_edit(&mut policies);
        let (snapshot, errors) = portcullis_policy::compile(&routes, &policies, &[]);
        assert!(errors.is_empty(), "quickstart manifests: {errors:?}");
        snapshot
    }

    fn decide(
        snapshot: &Snapshot,
        method: &str,
        path: &str,
        token: Option<&str>,
    ) -> Result<(), DenyReason> {
        let bearer = token.map(|t| format!("Bearer {t}"));
        let mut req = RequestParts::new(method, "localhost", path);
        if let Some(b) = &bearer {
            req = req.with_authorization(b);
        }
        match snapshot.authorize(&req) {
            Decision::Allow(_) => Ok(()),
            Decision::Deny(d) => Err(d.reason),
            Decision::Introspect(_) => panic!("the quickstart has no introspection"),
        }
    }

    #[test]
    fn mint_then_inspect_roundtrip() {
        let now = unix_now();
        let args = mint_args(&[
            "--scope",
            "orders:read",
            "--scope",
            "orders:write",
            "--ttl",
            "5m",
            "--claim",
            "tenant=acme",
            "--claim",
            "level=3",
        ]);
        let token = mint_token(&args, now).unwrap();

        // It verifies with the public half, and carries what was asked for.
        let public = std::fs::read(quickstart("dev-public.pem")).unwrap();
        let mut validation = jsonwebtoken::Validation::new(Algorithm::RS256);
        validation.set_issuer(&[DEFAULT_ISSUER]);
        validation.set_audience(&[DEFAULT_AUDIENCE]);
        let data = jsonwebtoken::decode::<Map<String, Value>>(
            &token,
            &jsonwebtoken::DecodingKey::from_rsa_pem(&public).unwrap(),
            &validation,
        )
        .unwrap();
        assert_eq!(data.header.kid.as_deref(), Some(DEFAULT_KID));
        let c = data.claims;
        assert_eq!(c["sub"], "alice");
        assert_eq!(c["scope"], "orders:read orders:write");
        assert_eq!(c["aud"], DEFAULT_AUDIENCE);
        assert_eq!(c["iat"], now);
        assert_eq!(c["exp"], now + 300);
        assert_eq!(c["tenant"], "acme");
        assert_eq!(c["level"], 3);
        assert_eq!(c["jti"].as_str().unwrap().len(), 32);

        let report = inspect_token(&token, now + 48).unwrap();
        assert!(report.starts_with("NOT VERIFIED"), "{report}");
        let fp = portcullis_policy::token_digest(&token)
            .fingerprint()
            .to_string();
        assert!(report.contains(&format!("fingerprint: {fp}")), "{report}");
        assert!(report.contains("\"alg\": \"RS256\""), "{report}");
        assert!(report.contains("\"sub\": \"alice\""), "{report}");
        assert!(report.contains("expires in 4m 12s"), "{report}");
        assert!(report.contains("lifetime:   5m"), "{report}");
        for part in token.split('.') {
            assert!(!report.contains(part), "the report leaks the token");
        }
        // A pasted Authorization value works too.
        assert_eq!(
            inspect_token(&format!("Bearer {token}\n"), now + 48).unwrap(),
            report
        );
    }

    #[test]
    fn two_mints_get_different_jtis() {
        let args = mint_args(&[]);
        let a = segment_json(&mint_token(&args, 1_000).unwrap(), 1);
        let b = segment_json(&mint_token(&args, 1_000).unwrap(), 1);
        assert_ne!(a["jti"], b["jti"]);
        assert!(a.get("scope").is_none());
    }

    #[test]
    fn refuses_a_key_not_marked_dev_only_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let text = std::fs::read_to_string(quickstart("dev-private.pem")).unwrap();
        let unmarked: String = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();
        let path = dir.path().join("prod.pem");
        std::fs::write(&path, unmarked).unwrap();
        let mut args = mint_args(&["--scope", "orders:read"]);
        args.key = path.clone();
        let err = mint_token(&args, unix_now()).unwrap_err().to_string();
        assert!(err.contains("not marked as a dev-only key"), "{err}");
        assert!(err.contains("--force"), "{err}");

        // The marker below the PEM block does not count.
        let mut late = std::fs::read_to_string(&path).unwrap();
        late.push_str(DEV_ONLY_MARKER);
        late.push('\n');
        std::fs::write(&path, late).unwrap();
        assert!(mint_token(&args, unix_now()).is_err());

        args.force = true;
        let token = mint_token(&args, unix_now()).unwrap();
        assert_eq!(token.split('.').count(), 3);
    }

    #[test]
    fn issued_ago_mints_an_expired_token() {
        let now = unix_now();
        let args = mint_args(&[
            "--scope",
            "orders:read",
            "--ttl",
            "5m",
            "--issued-ago",
            "10m",
        ]);
        let token = mint_token(&args, now).unwrap();
        let claims = segment_json(&token, 1);
        assert_eq!(claims["iat"], now - 600);
        assert_eq!(claims["exp"], now - 300);
        let report = inspect_token(&token, now).unwrap();
        assert!(report.contains("expired 5m ago"), "{report}");
        assert!(report.contains("issued:     "), "{report}");

        let snapshot = quickstart_snapshot(|_| {});
        assert_eq!(
            decide(&snapshot, "GET", "/orders", Some(&token)),
            Err(DenyReason::Expired)
        );
    }

    #[test]
    fn quickstart_manifests_compile_and_accept_minted_tokens() {
        let reader = mint_token(&mint_args(&["--scope", "orders:read"]), unix_now()).unwrap();
        let writer = mint_token(
            &mint_args(&["--scope", "orders:write", "--jti", "revoke-me"]),
            unix_now(),
        )
        .unwrap();
        let snapshot = quickstart_snapshot(|_| {});
        assert_eq!(decide(&snapshot, "GET", "/orders", Some(&reader)), Ok(()));
        assert_eq!(
            decide(&snapshot, "GET", "/orders/42", Some(&reader)),
            Ok(())
        );
        assert_eq!(decide(&snapshot, "GET", "/events", Some(&reader)), Ok(()));
        assert_eq!(
            decide(&snapshot, "POST", "/orders", Some(&reader)),
            Err(DenyReason::InsufficientScope)
        );
        assert_eq!(decide(&snapshot, "POST", "/orders", Some(&writer)), Ok(()));
        assert_eq!(
            decide(&snapshot, "DELETE", "/orders/42", Some(&writer)),
            Ok(())
        );
        assert_eq!(decide(&snapshot, "GET", "/health", None), Ok(()));
        assert_eq!(
            decide(&snapshot, "GET", "/orders", None),
            Err(DenyReason::MissingToken)
        );
        assert_eq!(
            decide(&snapshot, "GET", "/elsewhere", Some(&reader)),
            Err(DenyReason::NoRoute)
        );

        // A token for another audience, or over maxTokenLifetime, is refused.
        let other_aud = mint_token(
            &mint_args(&["--scope", "orders:read", "--aud", "other"]),
            unix_now(),
        )
        .unwrap();
        assert_eq!(
            decide(&snapshot, "GET", "/orders", Some(&other_aud)),
            Err(DenyReason::WrongAudience)
        );
        let long = mint_token(
            &mint_args(&["--scope", "orders:read", "--ttl", "2h"]),
            unix_now(),
        )
        .unwrap();
        assert_eq!(
            decide(&snapshot, "GET", "/orders", Some(&long)),
            Err(DenyReason::LifetimeTooLong)
        );

        // The revocation the policy's comment shows works.
        let revoked = quickstart_snapshot(|p| {
            p[0].spec.revocations.push(portcullis_api::Revocation {
                jti: Some("revoke-me".into()),
                ..Default::default()
            });
        });
        assert_eq!(
            decide(&revoked, "POST", "/orders", Some(&writer)),
            Err(DenyReason::RevokedJti)
        );
        assert_eq!(decide(&revoked, "GET", "/orders", Some(&reader)), Ok(()));
    }

    #[test]
    fn quickstart_jwks_is_the_public_half_of_the_dev_key() {
        let (_, policies) = quickstart_manifests();
        let jwk = &policies[0].spec.issuers[0]
            .jwks
            .as_ref()
            .unwrap()
            .inline
            .as_ref()
            .unwrap()
            .keys[0];
        let from_jwk = jsonwebtoken::DecodingKey::from_rsa_components(
            jwk.n.as_deref().unwrap(),
            jwk.e.as_deref().unwrap(),
        )
        .unwrap();
        let token = mint_token(&mint_args(&[]), unix_now()).unwrap();
        let mut validation = jsonwebtoken::Validation::new(Algorithm::RS256);
        validation.set_audience(&[DEFAULT_AUDIENCE]);
        jsonwebtoken::decode::<Map<String, Value>>(&token, &from_jwk, &validation).unwrap();
        assert_eq!(jwk.kid.as_deref(), Some(DEFAULT_KID));
        assert_eq!(policies[0].spec.issuers[0].issuer, DEFAULT_ISSUER);
        assert_eq!(policies[0].spec.issuers[0].audiences, [DEFAULT_AUDIENCE]);
    }

    #[test]
    fn inspect_names_what_is_wrong_with_malformed_input() {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256"}"#);
        let claims = URL_SAFE_NO_PAD.encode(br#"{"sub":"x","exp":1}"#);
        let cases: &[(String, &str)] = &[
            (String::new(), "no token given"),
            ("   \n".into(), "no token given"),
            ("abc".into(), "expected 3 dot-separated segments"),
            ("a.b".into(), "found 2"),
            ("a.b.c.d.e".into(), "encrypted token (JWE"),
            ("a b.c".into(), "character ' '"),
            (format!("{header}=.{claims}.c2ln"), "character '='"),
            (format!(".{claims}.c2ln"), "header segment is empty"),
            (
                format!("{header}.A.c2ln"),
                "claims segment is not base64url",
            ),
            (
                format!("{header}.{}.c2ln", URL_SAFE_NO_PAD.encode(b"not json")),
                "claims segment is not JSON",
            ),
            (
                format!("{header}.{}.c2ln", URL_SAFE_NO_PAD.encode(b"[1]")),
                "claims segment is JSON but not an object",
            ),
            (
                format!("{header}.{claims}.A"),
                "signature segment is not base64url",
            ),
            ("x".repeat(MAX_INSPECT_BYTES + 1), "longer than"),
        ];
        for (input, want) in cases {
            let err = inspect_token(input, 0).unwrap_err().to_string();
            assert!(err.contains(want), "{input:?}: {err}");
        }

        // Unsigned and exp-less tokens are shown, with a warning.
        let none = URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
        let no_exp = URL_SAFE_NO_PAD.encode(br#"{"sub":"x"}"#);
        let report = inspect_token(&format!("{none}.{no_exp}."), 0).unwrap();
        assert!(report.contains("unsigned token"), "{report}");
        assert!(report.contains("signature:  none"), "{report}");
        assert!(report.contains("no exp claim"), "{report}");
    }

    #[test]
    fn cli_parses_mint_options() {
        let args = mint_args(&[
            "--aud",
            "a",
            "--aud",
            "b",
            "--kid",
            "",
            "--alg",
            "RS384",
            "--jti",
            "j1",
            "--claim",
            "roles=[\"x\",\"y\"]",
            "--ttl",
            "90s",
        ]);
        assert_eq!(args.ttl, Duration::from_secs(90));
        assert_eq!(args.alg, Algorithm::RS384);
        let token = mint_token(&args, 1_000).unwrap();
        let (header, claims) = (segment_json(&token, 0), segment_json(&token, 1));
        assert_eq!(header["alg"], "RS384");
        assert!(header.get("kid").is_none());
        assert_eq!(claims["aud"], serde_json::json!(["a", "b"]));
        assert_eq!(claims["roles"], serde_json::json!(["x", "y"]));
        assert_eq!(claims["jti"], "j1");
        assert_eq!(claims["exp"], 1_090);

        let bad = |argv: &[&str]| {
            let mut full = vec!["portcullis", "mint", "--key", "k", "--sub", "s"];
            full.extend_from_slice(argv);
            Cli::try_parse_from(full).unwrap_err().to_string()
        };
        assert!(bad(&["--alg", "none"]).contains("never accepted"));
        assert!(bad(&["--alg", "XS1"]).contains("unknown algorithm"));
        assert!(bad(&["--ttl", "soon"]).contains("not a duration"));
        assert!(bad(&["--claim", "novalue"]).contains("NAME=VALUE"));

        // The wrong key type for the algorithm is a clear error.
        let ec = mint_args(&["--alg", "ES256"]);
        let err = mint_token(&ec, 1_000).unwrap_err().to_string();
        assert!(err.contains("not an EC (PKCS#8) private key"), "{err}");

        let parsed = Cli::try_parse_from(["portcullis", "inspect"]).unwrap();
        assert!(matches!(
            parsed.cmd,
            TokenCommand::Inspect(InspectArgs { token: None })
        ));
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn formats_times() {
        assert_eq!(human_duration(0), "0s");
        assert_eq!(human_duration(252), "4m 12s");
        assert_eq!(human_duration(180), "3m");
        assert_eq!(human_duration(3_660), "1h 1m");
        assert_eq!(human_duration(90_000), "1d 1h");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
        assert!(rfc3339(i64::MAX).contains("out of range"));
    }
}
