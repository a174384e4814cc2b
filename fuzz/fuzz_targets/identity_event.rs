//! Identity events: Back-Channel Logout tokens (`Snapshot::logout_token`) and Security
//! Event Tokens (`Snapshot::security_event`), the two parsers that turn bytes an identity
//! provider (or anyone who can reach the endpoint) sends into revocations.
//!
//! The snapshot (compiled once): the fixture policy (`shop/default`, five real keys for
//! `https://auth.example.com`) with back-channel logout for client `gw` and a push stream
//! `s1` from transmitter `https://tx.example.com`, whose keys are the fixture's RSA key.
//!
//! Input, by the first byte:
//! - even: the rest, as UTF-8 (lossy), is a logout token for `shop/default`;
//! - odd: the rest is a SET for stream `s1`;
//! - with bit 1 set, the rest is instead `header JSON \0 claims JSON`, signed with the
//!   trusted RSA key: the JSON checks see fuzzed input behind a good signature.
//!
//! Invariants: nothing panics; the same input gets the same verdict; an accepted logout
//! token was signed by a key trusted for its issuer, names the gateway's client in `aud`,
//! carries the back-channel-logout event as an object, `sub` or `sid`, a `jti`, no
//! `nonce`, and an `iat` in the window; every revocation an event yields uses only the
//! `subject`/`email` (with `issuedBefore`) or `sessionId` selectors, names its issuer,
//! expires, and carries the event's `jti` as its source.
#![no_main]

use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use libfuzzer_sys::fuzz_target;
use portcullis_api::Revocation;
use portcullis_fuzz::fixture::{self, ISSUER, NOW};
use portcullis_policy::Snapshot;
use serde_json::{Value, json};

const TRANSMITTER: &str = "https://tx.example.com";
const EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

fn snapshot() -> &'static Snapshot {
    static S: OnceLock<Snapshot> = OnceLock::new();
    S.get_or_init(|| {
        let mut policy = serde_json::to_value(fixture::policy()).unwrap();
        policy["spec"]["identityEvents"] = json!({
            "backChannelLogout": {"audiences": ["gw"], "maxAge": "2m"},
            "retention": "1h",
            "sharedSignals": [{
                "name": "s1", "transmitter": TRANSMITTER, "audience": "gw",
                "push": {"authorizationSecretRef": {"name": "hmac", "key": "key"}},
                "subjects": {"issuer": ISSUER},
            }],
        });
        let policy = serde_json::from_value(policy).unwrap();
        let mut options = fixture::options();
        let url = portcullis_policy::ssf_configuration_url(TRANSMITTER);
        let kind = portcullis_policy::RemoteSourceKind::Discovery {
            issuer: TRANSMITTER.into(),
        };
        let key = portcullis_policy::source_key(&url, &kind, None);
        options
            .remote_jwks
            .insert(key, json!({"keys": [fixture::keys().rsa.jwk]}));
        let (s, errors) =
            portcullis_policy::compile_with(&options, &[], &[policy], &[fixture::hmac_secret()]);
        assert!(errors.is_empty(), "{errors:#?}");
        s
    })
}

fn sign(header: &[u8], claims: &[u8]) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let key = &fixture::keys().rsa;
    let sig = jsonwebtoken::crypto::sign(
        input.as_bytes(),
        &key.encoding,
        jsonwebtoken::Algorithm::RS256,
    )
    .expect("signs");
    format!("{input}.{sig}")
}

fn check_entries(entries: &[Revocation], jti: &str) {
    for r in entries {
        let selectors = (
            r.subject.is_some(),
            r.email.is_some(),
            r.session_id.is_some(),
        );
        assert!(
            matches!(
                selectors,
                (true, false, false) | (false, true, false) | (false, false, true)
            ),
            "{r:?}"
        );
        assert_eq!(
            r.subject.is_some() || r.email.is_some(),
            r.issued_before.is_some()
        );
        assert!(r.jti.is_none() && r.token_sha256.is_none() && r.key_id.is_none());
        assert!(r.jwk_thumbprint.is_none() && r.api_key_id.is_none());
        assert!(r.issuer.is_some() && r.expires_at.is_some(), "{r:?}");
        assert_eq!(r.source.as_ref().map(|s| s.jti.as_str()), Some(jti));
    }
}

fn claims_of(token: &str) -> Option<Value> {
    let payload = token.split('.').nth(1)?;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let token = if mode & 2 != 0 {
        let (h, c) = match rest.iter().position(|b| *b == 0) {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &b"{}"[..]),
        };
        sign(h, c)
    } else {
        String::from_utf8_lossy(rest).into_owned()
    };
    let s = snapshot();
    if mode & 1 == 0 {
        let a = s.logout_token("shop/default", &token, NOW);
        let b = s.logout_token("shop/default", &token, NOW);
        assert_eq!(a.is_ok(), b.is_ok());
        if let Ok(ev) = a {
            // Accepted: the token is one the trusted key signed, and its claims pass an
            // independent model of section 2.6.
            assert!(mode & 2 != 0, "an unsigned input was accepted");
            let c = claims_of(&token).expect("accepted claims decode");
            assert_eq!(c["iss"], ISSUER);
            let aud_ok = c["aud"] == "gw"
                || c["aud"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x == "gw"));
            assert!(aud_ok, "{c}");
            assert!(c["events"][EVENT].is_object(), "{c}");
            assert!(c.get("nonce").is_none());
            assert!(c["sub"].is_string() || c["sid"].is_string());
            let iat = c["iat"].as_f64().expect("iat");
            assert!(
                iat <= (NOW + 30) as f64 && iat >= (NOW - 150) as f64,
                "{iat}"
            );
            assert!(!ev.revocations.is_empty());
            check_entries(&ev.revocations, &ev.id.jti);
        }
    } else {
        let a = s.security_event("shop/default", "s1", &token, NOW);
        let b = s.security_event("shop/default", "s1", &token, NOW);
        assert_eq!(a.is_ok(), b.is_ok());
        if let Ok(set) = a {
            assert!(mode & 2 != 0, "an unsigned input was accepted");
            let c = claims_of(&token).expect("accepted claims decode");
            assert_eq!(c["iss"], TRANSMITTER);
            assert!(c.get("sub").is_none() && c.get("exp").is_none());
            check_entries(&set.revocations, &set.id.jti);
        }
    }
});
