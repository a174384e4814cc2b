//! DPoP (RFC 9449) at the resource server: a token bound to a key (`cnf.jkt`) passes only
//! with `Authorization: DPoP` and a proof of that key for this request; each check of
//! section 4.3 refuses its proof, named in the test.

mod support;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use portcullis_policy::{Clock, Decision, DenyReason, HeaderField, RequestParts};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::*;

const HOST: &str = "api.example.com";
const PATH: &str = "/orders/1";

/// The client's DPoP key, and its RFC 7638 thumbprint.
fn client_key() -> &'static (TestKey, String) {
    static K: std::sync::OnceLock<(TestKey, String)> = std::sync::OnceLock::new();
    K.get_or_init(|| {
        let k = portcullis_testkit::ec("client", false);
        let jwks = json!({"keys": [k.jwk]}).to_string();
        let t = portcullis_policy::key_thumbprints(&jwks).unwrap()[0]
            .thumbprint
            .clone();
        (k, t)
    })
}

fn bound_token(jkt: &str) -> String {
    let mut c = claims();
    c["cnf"] = json!({"jkt": jkt});
    c["jti"] = json!(format!("t-{jkt}"));
    mint(&keys().rsa, &c)
}

fn ath(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()))
}

/// A proof by `key` for GET https://api.example.com/orders/1 and `token`, with `tweak`
/// applied to (header, claims).
fn proof(key: &TestKey, token: &str, tweak: impl FnOnce(&mut Value, &mut Value)) -> String {
    let mut jwk = key.jwk.clone();
    jwk.as_object_mut().unwrap().remove("kid");
    let mut header = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk});
    let mut claims = json!({
        "jti": format!("p-{}", rand()), "htm": "GET", "htu": format!("https://{HOST}{PATH}"),
        "iat": NOW - 1, "ath": ath(token),
    });
    tweak(&mut header, &mut claims);
    key.mint_raw(&header.to_string(), &claims.to_string())
}

fn rand() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn decide(f: &Fixture, scheme: &str, token: &str, dpop: HeaderField<'_>) -> Result<(), DenyReason> {
    let auth = format!("{scheme} {token}");
    let mut req = RequestParts::new("GET", HOST, PATH).with_authorization(&auth);
    req.credentials.dpop = dpop;
    match f.snapshot.authorize(&req) {
        Decision::Allow(_) => Ok(()),
        Decision::Deny(d) => Err(d.reason),
        Decision::Pending(_) => panic!("pending"),
    }
}

fn one(s: &str) -> HeaderField<'_> {
    HeaderField::One(s.as_bytes())
}

#[test]
fn a_bound_token_passes_with_its_proof_once_rfc9449_s4_3() {
    let f = standard();
    let (key, jkt) = client_key();
    let token = bound_token(jkt);
    let p = proof(key, &token, |_, _| {});
    assert_eq!(decide(&f, "DPoP", &token, one(&p)), Ok(()));
    // Section 11.1: the same proof again is a replay.
    assert_eq!(
        decide(&f, "DPoP", &token, one(&p)),
        Err(DenyReason::DpopReplay)
    );
    // A fresh proof passes again (the token came from the cache this time).
    let p2 = proof(key, &token, |_, _| {});
    assert_eq!(decide(&f, "DPoP", &token, one(&p2)), Ok(()));
}

#[test]
fn a_bound_token_sent_as_bearer_is_refused_rfc9449_s7_1() {
    let f = standard();
    let (_, jkt) = client_key();
    let token = bound_token(jkt);
    assert_eq!(
        decide(&f, "Bearer", &token, HeaderField::Absent),
        Err(DenyReason::DpopBoundToken)
    );
    // With a proof, but under the Bearer scheme: still a bearer presentation.
    let p = proof(&client_key().0, &token, |_, _| {});
    assert_eq!(
        decide(&f, "Bearer", &token, one(&p)),
        Err(DenyReason::DpopBoundToken)
    );
}

#[test]
fn each_check_of_section_4_3_refuses_its_proof() {
    let f = standard();
    let (key, jkt) = client_key();
    let token = bound_token(jkt);
    let bad = |p: String, why: &str| {
        assert_eq!(
            decide(&f, "DPoP", &token, one(&p)),
            Err(DenyReason::InvalidDpopProof),
            "{why}"
        );
    };
    bad(
        proof(key, &token, |h, _| h["typ"] = json!("JWT")),
        "typ (step 4)",
    );
    bad(
        proof(key, &token, |h, _| {
            h.as_object_mut()
                .unwrap()
                .remove("typ")
                .map(|_| ())
                .unwrap()
        }),
        "no typ",
    );
    bad(
        proof(key, &token, |_, c| c["htm"] = json!("POST")),
        "htm (step 8)",
    );
    bad(
        proof(key, &token, |_, c| {
            c["htu"] = json!(format!("https://{HOST}/orders/2"))
        }),
        "htu path (step 9)",
    );
    bad(
        proof(key, &token, |_, c| {
            c["htu"] = json!(format!("http://{HOST}{PATH}"))
        }),
        "htu scheme (step 9)",
    );
    bad(
        proof(key, &token, |_, c| {
            c["htu"] = json!(format!("https://evil.example{PATH}"))
        }),
        "htu host (step 9)",
    );
    bad(
        proof(key, &token, |_, c| c["iat"] = json!(NOW - 600)),
        "iat too old (step 11)",
    );
    bad(
        proof(key, &token, |_, c| c["iat"] = json!(NOW + 600)),
        "iat ahead (step 11)",
    );
    bad(
        proof(key, &token, |_, c| c["ath"] = json!(ath("another token"))),
        "ath (step 12)",
    );
    bad(
        proof(key, &token, |_, c| {
            c.as_object_mut()
                .unwrap()
                .remove("ath")
                .map(|_| ())
                .unwrap()
        }),
        "no ath",
    );
    bad(
        proof(key, &token, |_, c| {
            c.as_object_mut()
                .unwrap()
                .remove("jti")
                .map(|_| ())
                .unwrap()
        }),
        "no jti",
    );
    // Step 6: a private key in the header.
    bad(
        proof(key, &token, |h, _| h["jwk"]["d"] = json!("AAAA")),
        "jwk with d (step 6)",
    );
    // Step 7: signed by another key than the one in the header.
    let other = portcullis_testkit::ec("other", false);
    let mut foreign = key.jwk.clone();
    foreign.as_object_mut().unwrap().remove("kid");
    let forged = other.mint_raw(
        &json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": foreign}).to_string(),
        &json!({"jti": "x", "htm": "GET", "htu": format!("https://{HOST}{PATH}"),
                "iat": NOW, "ath": ath(&token)})
        .to_string(),
    );
    bad(forged, "signature (step 7)");
    // Section 6.1: a valid proof of another key than the token's `cnf.jkt`.
    bad(proof(&other, &token, |_, _| {}), "jkt (section 6.1)");
    // alg none (step 5: asymmetric algorithms only).
    let none = format!(
        "{}.{}.",
        b64(br#"{"typ":"dpop+jwt","alg":"none"}"#),
        b64(json!({"jti":"n","htm":"GET","htu":format!("https://{HOST}{PATH}"),"iat":NOW,"ath":ath(&token)}).to_string().as_bytes())
    );
    bad(none, "alg none (step 5)");
    // Step 1: exactly one DPoP header.
    assert_eq!(
        decide(&f, "DPoP", &token, HeaderField::Absent),
        Err(DenyReason::InvalidDpopProof)
    );
    assert_eq!(
        decide(&f, "DPoP", &token, HeaderField::Duplicated),
        Err(DenyReason::InvalidDpopProof)
    );
    // None of these used up a proof: a good one still passes.
    assert_eq!(
        decide(&f, "DPoP", &token, one(&proof(key, &token, |_, _| {}))),
        Ok(())
    );
}

#[test]
fn an_unbound_token_under_dpop_and_required_mode_rfc9449_s7_1() {
    let f = standard();
    let token = mint(&keys().rsa, &claims());
    let p = proof(&client_key().0, &token, |_, _| {});
    // `DPoP` with a token not bound to any key.
    assert_eq!(
        decide(&f, "DPoP", &token, one(&p)),
        Err(DenyReason::DpopRequired)
    );
    // As Bearer it is an ordinary bearer token (mode Optional by default)...
    assert_eq!(decide(&f, "Bearer", &token, HeaderField::Absent), Ok(()));
    // ...and refused where the issuer requires DPoP.
    let mut p = serde_json::to_value(policy()).unwrap();
    p["spec"]["issuers"][0]["dpop"] = json!({"mode": "Required"});
    let f = build(&[route()], &[serde_json::from_value(p).unwrap()], &[]);
    assert_eq!(
        decide(&f, "Bearer", &token, HeaderField::Absent),
        Err(DenyReason::DpopRequired)
    );
}

#[test]
fn the_challenge_is_a_dpop_one_with_the_algorithms_rfc9449_s7_1() {
    let f = standard();
    let (_, jkt) = client_key();
    let token = bound_token(jkt);
    let auth = format!("Bearer {token}");
    let req = RequestParts::new("GET", HOST, PATH).with_authorization(&auth);
    let Decision::Deny(d) = f.snapshot.authorize(&req) else {
        panic!("allowed");
    };
    let c = d.www_authenticate().unwrap();
    assert!(c.starts_with("DPoP "), "{c}");
    assert!(c.contains("algs=\"ES256"), "{c}");
    assert_eq!(d.status(), 401);
    let auth = format!("DPoP {token}");
    let mut req = RequestParts::new("GET", HOST, PATH).with_authorization(&auth);
    req.credentials.dpop = one("not-a-proof");
    let Decision::Deny(d) = f.snapshot.authorize(&req) else {
        panic!("allowed");
    };
    assert!(
        d.www_authenticate()
            .unwrap()
            .contains("error=\"invalid_dpop_proof\"")
    );
}

#[test]
fn each_required_binding_takes_no_other_and_unknown_bindings_fail_closed() {
    let (key, jkt) = client_key();
    // certificateBound: Required: a DPoP-bound token, even with its proof, is refused.
    let mut p = serde_json::to_value(policy()).unwrap();
    p["spec"]["issuers"][0]["certificateBound"] = json!("Required");
    let f = build(&[route()], &[serde_json::from_value(p).unwrap()], &[]);
    let token = bound_token(jkt);
    let proof_ = proof(key, &token, |_, _| {});
    assert_eq!(
        decide(&f, "DPoP", &token, one(&proof_)),
        Err(DenyReason::CertificateRequired)
    );
    // dpop: Required: a certificate-bound token is refused (no proof could be asked of it).
    let mut p = serde_json::to_value(policy()).unwrap();
    p["spec"]["issuers"][0]["dpop"] = json!({"mode": "Required"});
    let f = build(&[route()], &[serde_json::from_value(p).unwrap()], &[]);
    let mut c = claims();
    c["cnf"] = json!({"x5t#S256": jkt});
    let x5t = mint(&keys().rsa, &c);
    assert_eq!(
        decide(&f, "Bearer", &x5t, HeaderField::Absent),
        Err(DenyReason::DpopRequired)
    );
    // Two bindings, or one this gateway cannot check (RFC 7800 `jwk`): refused, never a
    // bearer token.
    let f = standard();
    for cnf in [
        json!({"jkt": jkt, "x5t#S256": jkt}),
        json!({"jwk": {"kty": "EC"}}),
    ] {
        let mut c = claims();
        c["cnf"] = cnf.clone();
        let t = mint(&keys().rsa, &c);
        assert_eq!(
            decide(&f, "Bearer", &t, HeaderField::Absent),
            Err(DenyReason::MalformedToken),
            "{cnf}"
        );
    }
}

/// A policy whose issuer asks for server nonces (lifetime 10s), with its key Secret.
fn nonce_fixture(secret: &[u8]) -> Fixture {
    let mut p = serde_json::to_value(policy()).unwrap();
    p["spec"]["issuers"][0]["dpop"] =
        json!({"nonce": {"secretRef": {"name": "dpop-nonce", "key": "key"}, "lifetime": "10s"}});
    let s = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "dpop-nonce", "namespace": "shop"},
        "data": {"key": base64::engine::general_purpose::STANDARD.encode(secret)},
    }))
    .unwrap();
    build(&[route()], &[serde_json::from_value(p).unwrap()], &[s])
}

/// What the gateway answers a DPoP request: Ok(the `DPoP-Nonce` sent with the answer) or
/// Err((reason, the `DPoP-Nonce` of the refusal)).
fn decide_nonce(
    f: &Fixture,
    token: &str,
    proof: &str,
) -> Result<Option<String>, (DenyReason, Option<String>)> {
    let auth = format!("DPoP {token}");
    let mut req = RequestParts::new("GET", HOST, PATH).with_authorization(&auth);
    req.credentials.dpop = one(proof);
    match f.snapshot.authorize(&req) {
        Decision::Allow(a) => Ok(a.dpop_nonce),
        Decision::Deny(d) => Err((d.reason, d.dpop_nonce)),
        Decision::Pending(_) => panic!("pending"),
    }
}

#[test]
fn server_nonces_rfc9449_s9_asked_for_issued_accepted_and_renewed() {
    let f = nonce_fixture(&[42; 32]);
    let (key, jkt) = client_key();
    let token = bound_token(jkt);
    let now = || f.clock.now();
    let at = |nonce: Option<&str>| {
        let t = now();
        let nonce = nonce.map(str::to_owned);
        proof(key, &token, move |_, c| {
            c["iat"] = json!(t - 1);
            if let Some(n) = nonce {
                c["nonce"] = json!(n);
            }
        })
    };
    // Section 9: a proof without a nonce gets use_dpop_nonce, a DPoP challenge and a nonce.
    let Err((DenyReason::UseDpopNonce, Some(nonce))) = decide_nonce(&f, &token, &at(None)) else {
        panic!("a proof without a nonce was not asked for one");
    };
    let auth = format!("DPoP {token}");
    let mut req = RequestParts::new("GET", HOST, PATH).with_authorization(&auth);
    let p = at(None);
    req.credentials.dpop = one(&p);
    let Decision::Deny(d) = f.snapshot.authorize(&req) else {
        panic!("allowed")
    };
    let c = d.www_authenticate().unwrap();
    assert!(
        c.starts_with("DPoP ") && c.contains("error=\"use_dpop_nonce\""),
        "{c}"
    );
    assert_eq!(d.status(), 401);
    // With it: accepted, and no new nonce while it is current.
    assert_eq!(decide_nonce(&f, &token, &at(Some(&nonce))), Ok(None));
    // The window moves on: still accepted, and the answer carries the next nonce.
    f.clock.advance(10);
    let next = decide_nonce(&f, &token, &at(Some(&nonce)))
        .expect("a nonce of the previous window is accepted")
        .expect("with the next nonce");
    assert_ne!(next, nonce);
    assert_eq!(decide_nonce(&f, &token, &at(Some(&next))), Ok(None));
    // Two windows on: the old nonce is refused with a fresh one.
    f.clock.advance(10);
    let Err((DenyReason::UseDpopNonce, Some(fresh))) = decide_nonce(&f, &token, &at(Some(&nonce)))
    else {
        panic!("an expired nonce was accepted");
    };
    assert_eq!(decide_nonce(&f, &token, &at(Some(&fresh))), Ok(None));
    // A nonce made with another key (another gateway, or a guess) is no nonce of ours.
    let other = nonce_fixture(&[43; 32]);
    other.clock.set(now());
    let Err((_, Some(theirs))) = decide_nonce(&other, &token, &at(None)) else {
        panic!("no nonce from the other gateway");
    };
    assert!(matches!(
        decide_nonce(&f, &token, &at(Some(&theirs))),
        Err((DenyReason::UseDpopNonce, Some(_)))
    ));
    // Every other check still applies: a nonce does not make a replay pass.
    let p = at(Some(&fresh));
    assert_eq!(decide_nonce(&f, &token, &p), Ok(None));
    assert_eq!(
        decide_nonce(&f, &token, &p),
        Err((DenyReason::DpopReplay, None))
    );
}

#[test]
fn a_nonce_key_shorter_than_256_bits_is_a_compile_error() {
    let mut p = serde_json::to_value(policy()).unwrap();
    p["spec"]["issuers"][0]["dpop"] =
        json!({"nonce": {"secretRef": {"name": "dpop-nonce", "key": "key"}}});
    let s: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "dpop-nonce", "namespace": "shop"},
        "data": {"key": base64::engine::general_purpose::STANDARD.encode(b"short")},
    }))
    .unwrap();
    let clock = std::sync::Arc::new(portcullis_policy::ManualClock::new(NOW));
    for secrets in [vec![s], vec![]] {
        let (_, errors) = portcullis_policy::compile_with(
            &options(&clock),
            &[route()],
            &[serde_json::from_value(p.clone()).unwrap()],
            &secrets,
        );
        let text = format!("{errors:?}");
        assert!(
            text.contains("spec.issuers[0].dpop.nonce.secretRef"),
            "{text}"
        );
    }
}
