//! `portcullis token inspect`: decode a token WITHOUT verifying it.

use std::io::Read;

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

/// Longest input `inspect` reads: far beyond any token a proxy accepts.
pub(super) const MAX_INSPECT_BYTES: usize = 64 * 1024;

/// Arguments of `portcullis token inspect`.
#[derive(clap::Args, Debug, Clone)]
pub struct InspectArgs {
    /// The token (a leading `Bearer ` is ignored), or `-` to read it from stdin, which is
    /// also the default. Prefer stdin: arguments end up in shell history and `ps`.
    #[arg(value_name = "TOKEN")]
    pub token: Option<String>,
}

/// Reads stdin as text, at most [`MAX_INSPECT_BYTES`].
pub(super) fn read_stdin() -> anyhow::Result<String> {
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
pub(super) fn human_duration(secs: u64) -> String {
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
pub(super) fn rfc3339(t: i64) -> String {
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
