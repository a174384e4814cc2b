//! Tests of `portcullis token`: mint, inspect and thumbprint against the quickstart.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use clap::Parser;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

use super::inspect::{MAX_INSPECT_BYTES, human_duration, rfc3339};
use super::mint::{DEFAULT_AUDIENCE, DEFAULT_ISSUER, DEFAULT_KID, DEV_ONLY_MARKER};
use super::*;
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
        Decision::Pending(_) => panic!("the quickstart has no introspection"),
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
fn count_mints_distinct_numbered_tokens_that_all_verify() {
    let tokens = mint_tokens(
        &mint_args(&["--count", "3", "--jti", "load", "--scope", "orders:read"]),
        unix_now(),
    )
    .unwrap();
    assert_eq!(tokens.len(), 3);
    for (i, token) in tokens.iter().enumerate() {
        let claims = segment_json(token, 1);
        assert_eq!(claims["sub"], format!("alice-{}", i + 1));
        assert_eq!(claims["jti"], format!("load-{}", i + 1));
        assert_eq!(claims["scope"], "orders:read");
    }
    let snapshot = quickstart_snapshot(|_| {});
    for token in &tokens {
        assert_eq!(decide(&snapshot, "GET", "/orders", Some(token)), Ok(()));
    }
    // One token: the plain `sub` and `jti`, as without --count.
    let one = mint_tokens(&mint_args(&["--jti", "solo"]), unix_now()).unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(segment_json(&one[0], 1)["sub"], "alice");
    assert_eq!(segment_json(&one[0], 1)["jti"], "solo");
    let zero = Cli::try_parse_from([
        "portcullis",
        "mint",
        "--key",
        "k",
        "--sub",
        "s",
        "--count",
        "0",
    ]);
    assert!(zero.is_err(), "--count 0 must be refused");
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
fn thumbprint_of_the_rfc_7638_example_key() {
    // RFC 7638 section 3.1.
    let jwk = r#"{"kty":"RSA","n":"0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw","e":"AQAB","alg":"RS256","kid":"2011-04-29"}"#;
    assert_eq!(
        key_thumbprints(jwk).unwrap(),
        vec![(
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs".to_string(),
            "RSA".to_string(),
            Some("2011-04-29".to_string())
        )]
    );
}

#[test]
fn thumbprint_of_a_pem_key_revokes_its_tokens() {
    // The quickstart key as PEM and as the policy's JWK: one thumbprint, and revoking
    // it refuses the tokens it signed (cross-checks this with the proxy's reading).
    let pem = std::fs::read_to_string(quickstart("dev-public.pem")).unwrap();
    let found = key_thumbprints(&pem).unwrap();
    let [(from_pem, kty, kid)] = &found[..] else {
        panic!("one key expected: {found:?}")
    };
    assert_eq!((kty.as_str(), kid), ("RSA", &None));
    let from_pem = from_pem.clone();
    let (_, policies) = quickstart_manifests();
    let jwks = serde_json::to_string(
        policies[0].spec.issuers[0]
            .jwks
            .as_ref()
            .unwrap()
            .inline
            .as_ref()
            .unwrap(),
    )
    .unwrap();
    let from_jwk = key_thumbprints(&jwks).unwrap();
    assert_eq!(from_jwk.len(), 1);
    assert_eq!(from_jwk[0].0, from_pem);

    let reader = mint_token(&mint_args(&["--scope", "orders:read"]), unix_now()).unwrap();
    let revoked = quickstart_snapshot(|p| {
        p[0].spec.revocations.push(portcullis_api::Revocation {
            jwk_thumbprint: Some(from_pem.clone()),
            ..Default::default()
        });
    });
    assert_eq!(
        decide(&revoked, "GET", "/orders", Some(&reader)),
        Err(DenyReason::RevokedKey)
    );
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
