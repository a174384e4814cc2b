//! What `apikey create` checks in its arguments before it makes anything: the consumer,
//! scopes, labels and names, by the rules the API server and the gateway apply.

use anyhow::bail;
use portcullis_policy::apikey;

/// The longest consumer name accepted (it is a principal's subject at the gateway).
const MAX_CONSUMER_LEN: usize = 253;

/// Checks a consumer name: not empty, no surrounding spaces, no control characters.
pub fn check_consumer(consumer: &str) -> anyhow::Result<()> {
    if consumer.trim().is_empty() {
        bail!("--consumer is empty");
    }
    if consumer.trim() != consumer || consumer.chars().any(char::is_control) {
        bail!("--consumer {consumer:?} has surrounding spaces or control characters");
    }
    if consumer.len() > MAX_CONSUMER_LEN {
        bail!("--consumer is longer than {MAX_CONSUMER_LEN} bytes");
    }
    Ok(())
}

/// The scopes of `--scope` (each may hold several, space-separated) then `--scopes`, in
/// order, without duplicates; each an RFC 6749 scope token (printable ASCII, no space,
/// `"` or `\`).
pub fn scopes(repeated: &[String], joined: Option<&str>) -> anyhow::Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for s in repeated
        .iter()
        .map(String::as_str)
        .chain(joined)
        .flat_map(str::split_whitespace)
    {
        if let Some(c) = s
            .chars()
            .find(|&c| !matches!(c, '\x21' | '\x23'..='\x5b' | '\x5d'..='\x7e'))
        {
            bail!("scope {s:?} holds {c:?}: a scope is printable ASCII without '\"' or '\\'");
        }
        if !out.iter().any(|o| o == s) {
            out.push(s.to_owned());
        }
    }
    Ok(out)
}

/// A `--label KEY=VALUE`, checked as Kubernetes checks labels (for clap).
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    let (key, value) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))?;
    let name = match key.rsplit_once('/') {
        Some((prefix, name)) => {
            if !is_dns_subdomain(prefix) {
                return Err(format!(
                    "label key {key:?}: the prefix before '/' must be a DNS subdomain such as example.com"
                ));
            }
            name
        }
        None => key,
    };
    if name.is_empty() || !is_label_value(name) {
        return Err(format!(
            "label key {key:?}: the name must be 1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ));
    }
    if !is_label_value(value) {
        return Err(format!(
            "label value {value:?}: at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ));
    }
    if key == apikey::SECRET_LABEL {
        return Err(format!(
            "{key} is set to \"true\" on every API-key Secret; choose another label"
        ));
    }
    Ok((key.to_owned(), value.to_owned()))
}

/// Checks a Secret name (`--name`, `--rotate`): a DNS-1123 subdomain.
pub fn check_name(flag: &str, name: &str) -> anyhow::Result<()> {
    if !is_dns_subdomain(name) {
        bail!(
            "{flag} {name:?} is not a Secret name: lowercase letters, digits, '-' and '.', at most 253, starting and ending with a letter or digit"
        );
    }
    Ok(())
}

/// Checks a namespace: a DNS-1123 label.
pub fn check_namespace(ns: &str) -> anyhow::Result<()> {
    if !is_dns_label(ns) {
        bail!(
            "--namespace {ns:?} is not a namespace name: 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit"
        );
    }
    Ok(())
}

/// A DNS-1123 label: 1-63 of `[a-z0-9-]`, alphanumeric at each end.
pub(super) fn is_dns_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS-1123 subdomain: dot-separated labels, at most 253 characters.
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// A label value (also a label key's name part): empty, or up to 63 of `[A-Za-z0-9-_.]`
/// with an alphanumeric at each end.
fn is_label_value(s: &str) -> bool {
    let ends = |c: Option<u8>| c.is_none_or(|c| c.is_ascii_alphanumeric());
    s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && ends(s.bytes().next())
        && ends(s.bytes().last())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_scopes_names_are_checked() {
        assert_eq!(
            parse_label("example.com/tier=gold").unwrap(),
            ("example.com/tier".to_owned(), "gold".to_owned())
        );
        assert_eq!(parse_label("empty=").unwrap().1, "");
        for bad in [
            "novalue",
            "=v",
            "k=has space",
            "k=-dash",
            "Bad_Prefix/k=v",
            "/k=v",
            "portcullis.dev/api-key=false",
        ] {
            assert!(parse_label(bad).is_err(), "{bad}");
        }
        assert!(parse_label(&format!("k={}", "v".repeat(64))).is_err());

        let s = scopes(&["a b".into(), "c".into(), "a".into()], Some(" d  c ")).unwrap();
        assert_eq!(s, ["a", "b", "c", "d"]);
        assert!(scopes(&["bad\"quote".into()], None).is_err());
        assert!(scopes(&[], Some("back\\slash")).is_err());
        assert!(scopes(&[], None).unwrap().is_empty());

        assert!(check_name("--name", "apikey-a.b-1").is_ok());
        for bad in ["", "Upper", "-x", "x_y", "a..b"] {
            assert!(check_name("--name", bad).is_err(), "{bad}");
        }
        assert!(check_namespace("shop").is_ok());
        assert!(check_namespace("a.b").is_err());
        assert!(check_consumer("alice").is_ok());
        for bad in ["", " ", " alice", "al\nice"] {
            assert!(check_consumer(bad).is_err(), "{bad:?}");
        }
    }
}
