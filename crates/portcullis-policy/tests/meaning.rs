//! Revocation, typing and forwarding keyed on meaning, not on bytes: each case names the
//! RFC section that decides it.
//!
//! - a `keyId` revocation holds for the key that verified a token, kid or no kid, and a
//!   `jwkThumbprint` (RFC 7638) names keys that have no kid;
//! - a `tokenSha256` revocation holds for every valid encoding of the signed token (ECDSA
//!   signatures are malleable), cached or not, and the other algorithms are shown to have
//!   a single encoding;
//! - explicit typing (RFC 8725 section 3.11): only access tokens are accepted;
//! - a forwarded claim that cannot be a header value refuses the token;
//! - `access_token` in the query is seen however it is spelled (RFC 6750 section 2.3).

mod support;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::Algorithm;
use k8s_openapi::api::core::v1::Secret;
use portcullis_api::TokenPolicy;
use portcullis_policy::{Decision, DenyReason, RequestParts, Snapshot, token_digest};
use serde_json::{Value, json};
use support::*;

const HOST: &str = "api.example.com";

// === helpers ===

/// The decision for `GET /orders/1` with `token`: the forwarded headers (raw bytes) or
/// (status, reason, cache hit).
type Outcome = Result<Vec<(String, Vec<u8>)>, (u16, DenyReason, bool)>;

fn outcome(d: Decision<'_>) -> Outcome {
    match d {
        Decision::Allow(a) => Ok(a
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()),
        Decision::Deny(d) => {
            if d.status() == 401 {
                let c = d.www_authenticate().unwrap();
                assert!(c.contains("error=\"invalid_token\""), "{c}");
            }
            Err((d.status(), d.reason, d.cache_hit))
        }
        Decision::Pending(_) => panic!("no introspection here"),
    }
}

fn get(s: &Snapshot, token: &str) -> Outcome {
    let h = format!("Bearer {token}");
    outcome(s.authorize(&RequestParts::new("GET", HOST, "/orders/1").with_authorization(&h)))
}

fn reason(s: &Snapshot, token: &str) -> DenyReason {
    match get(s, token) {
        Ok(_) => panic!("token accepted"),
        Err((status, reason, _)) => {
            assert_eq!(status, reason.status());
            reason
        }
    }
}

fn allowed(s: &Snapshot, token: &str) -> Vec<(String, Vec<u8>)> {
    get(s, token).unwrap_or_else(|e| panic!("token refused: {e:?}"))
}

fn with_revocations(mut p: TokenPolicy, revocations: Value) -> TokenPolicy {
    p.spec.revocations = serde_json::from_value(revocations).unwrap();
    p
}

/// A policy with one issuer whose keys come from the Secret `keys/key`, for `algs`.
fn secret_policy(algs: &[&str]) -> TokenPolicy {
    let mut p = policy();
    p.spec.issuers[0].algorithms = algs.iter().map(|a| a.to_string()).collect();
    p.spec.issuers[0].jwks =
        serde_json::from_value(json!({"secretRef": {"name": "keys", "key": "key"}})).unwrap();
    p
}

fn secret(data: &[u8]) -> Secret {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "keys", "namespace": "shop"},
        "data": {"key": STANDARD.encode(data)},
    }))
    .unwrap()
}

/// RFC 7638 thumbprint of a JWK, computed by jsonwebtoken (an implementation independent
/// of the one under test, itself tested against RFC 7638 section 3.1's example).
fn thumbprint_of(jwk: &Value) -> String {
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk.clone()).unwrap();
    jwk.thumbprint(jsonwebtoken::jwk::ThumbprintHash::SHA256)
        .unwrap()
}

fn unb64(s: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(s).unwrap()
}

/// A PEM public key (SPKI) for an EC or Ed25519 test key, built from its JWK.
fn spki_pem(key: &TestKey) -> String {
    let jwk = &key.jwk;
    let mut der = match jwk["crv"].as_str().unwrap() {
        "P-256" => hex::decode("3059301306072a8648ce3d020106082a8648ce3d030107034200").unwrap(),
        "P-384" => hex::decode("3076301006072a8648ce3d020106052b81040022036200").unwrap(),
        "Ed25519" => hex::decode("302a300506032b6570032100").unwrap(),
        other => panic!("{other}"),
    };
    if jwk["kty"] == "EC" {
        der.push(0x04);
        der.extend(unb64(jwk["x"].as_str().unwrap()));
        der.extend(unb64(jwk["y"].as_str().unwrap()));
    } else {
        der.extend(unb64(jwk["x"].as_str().unwrap()));
    }
    portcullis_testkit::pem("PUBLIC KEY", &der)
}

/// An RSA test key as a PKCS#1 `RSA PUBLIC KEY` PEM, built from its JWK.
fn pkcs1_pem(key: &TestKey) -> String {
    fn der(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        match body.len() {
            n if n < 0x80 => out.push(n as u8),
            n if n < 0x100 => out.extend([0x81, n as u8]),
            n => out.extend([0x82, (n >> 8) as u8, n as u8]),
        }
        out.extend_from_slice(body);
        out
    }
    let int = |b: Vec<u8>| {
        let mut v = b;
        if v[0] & 0x80 != 0 {
            v.insert(0, 0);
        }
        der(0x02, &v)
    };
    let n = int(unb64(key.jwk["n"].as_str().unwrap()));
    let e = int(unb64(key.jwk["e"].as_str().unwrap()));
    portcullis_testkit::pem("RSA PUBLIC KEY", &der(0x30, &[n, e].concat()))
}

/// Signs `claims` with `key` and no `kid` in the header.
fn mint_without_kid(key: &TestKey, claims: &Value) -> String {
    jsonwebtoken::encode(&jsonwebtoken::Header::new(key.alg), claims, &key.encoding).unwrap()
}

/// Signs `claims` with `key` and the header `kid` given.
fn mint_with_kid(key: &TestKey, kid: &str, claims: &Value) -> String {
    let mut h = jsonwebtoken::Header::new(key.alg);
    h.kid = Some(kid.into());
    jsonwebtoken::encode(&h, claims, &key.encoding).unwrap()
}

fn with_jti(jti: &str) -> Value {
    let mut c = claims();
    c["jti"] = json!(jti);
    c
}

// === 1. keyId and jwkThumbprint revocations name the verifying key ===

/// RFC 7517 section 4.5: `kid` names a key of the set; RFC 7515 section 4.1.4: the token's
/// `kid` is only a hint, and may be absent. The ed key is the one EdDSA key of the
/// standard policy, so a token without a kid is verified by it, and revoking `ed-1` must
/// refuse that token too.
#[test]
fn rfc7517_s4_5_key_id_revocation_applies_to_the_verifying_key_when_the_token_has_no_kid() {
    let f = build(
        &[route()],
        &[with_revocations(policy(), json!([{"keyId": "ed-1"}]))],
        &[],
    );
    let k = keys();
    assert_eq!(
        reason(&f.snapshot, &mint_without_kid(&k.ed, &claims())),
        DenyReason::RevokedKey
    );
    assert_eq!(
        reason(&f.snapshot, &mint(&k.ed, &claims())),
        DenyReason::RevokedKey
    );
    // Other keys are untouched.
    allowed(&f.snapshot, &mint(&k.ec256, &claims()));
    allowed(&f.snapshot, &mint(&k.rsa, &claims()));
}

/// RFC 7515 section 4.1.4: a kid-less key (here a PEM) answers for a token that names a
/// kid; revoking that kid refuses the token, as before, and so does revoking the key by
/// its thumbprint (RFC 7638).
#[test]
fn rfc7515_s4_1_4_key_id_revocation_also_matches_the_kid_the_token_names() {
    let k = keys();
    let pem = k.rsa.public_pem.clone().unwrap();
    let token = mint_with_kid(&k.rsa, "legacy-kid", &claims());
    for revocation in [
        json!({"keyId": "legacy-kid"}),
        json!({"jwkThumbprint": thumbprint_of(&k.rsa.jwk)}),
    ] {
        let p = with_revocations(secret_policy(&["RS256"]), json!([revocation]));
        let f = build(&[route()], &[p], &[secret(pem.as_bytes())]);
        assert_eq!(
            reason(&f.snapshot, &token),
            DenyReason::RevokedKey,
            "{revocation}"
        );
    }
    let f = build(
        &[route()],
        &[secret_policy(&["RS256"])],
        &[secret(pem.as_bytes())],
    );
    allowed(&f.snapshot, &token);
}

/// RFC 7638 section 3: a key is named by the SHA-256 of its required members, whatever
/// form it came in. Every kind of PEM key (none of which has a kid) can be revoked by
/// thumbprint; the thumbprint is the one computed from its JWK.
#[test]
fn rfc7638_s3_jwk_thumbprint_revokes_pem_keys_without_kid() {
    let k = keys();
    let cases: Vec<(&TestKey, String, &str)> = vec![
        (&k.rsa, k.rsa.public_pem.clone().unwrap(), "RS256"),
        (&k.rsa, pkcs1_pem(&k.rsa), "RS256"),
        (&k.ec256, spki_pem(&k.ec256), "ES256"),
        (&k.ec384, spki_pem(&k.ec384), "ES384"),
        (&k.ed, spki_pem(&k.ed), "EdDSA"),
    ];
    for (key, pem, alg) in cases {
        let token = mint_without_kid(key, &claims());
        let f = build(
            &[route()],
            &[secret_policy(&[alg])],
            &[secret(pem.as_bytes())],
        );
        allowed(&f.snapshot, &token);
        let p = with_revocations(
            secret_policy(&[alg]),
            json!([{"jwkThumbprint": thumbprint_of(&key.jwk)}]),
        );
        let f = build(&[route()], &[p], &[secret(pem.as_bytes())]);
        assert_eq!(
            reason(&f.snapshot, &token),
            DenyReason::RevokedKey,
            "{alg} {}",
            pem.lines().next().unwrap()
        );
        // Another key's thumbprint does not touch it.
        let p = with_revocations(
            secret_policy(&[alg]),
            json!([{"jwkThumbprint": thumbprint_of(&k.rsa2.jwk)}]),
        );
        let f = build(&[route()], &[p], &[secret(pem.as_bytes())]);
        allowed(&f.snapshot, &token);
    }
}

/// RFC 7638 section 3.2: an HMAC secret's thumbprint is that of `{"k":..,"kty":"oct"}`.
#[test]
fn rfc7638_s3_2_jwk_thumbprint_revokes_a_shared_secret() {
    let thumbprint = thumbprint_of(&json!({"kty": "oct", "k": b64(HMAC_SECRET)}));
    let p = with_revocations(
        secret_policy(&["HS256"]),
        json!([{"jwkThumbprint": thumbprint}]),
    );
    let f = build(&[route()], &[p], &[secret(HMAC_SECRET)]);
    assert_eq!(
        reason(
            &f.snapshot,
            &mint_hmac(HMAC_SECRET, Algorithm::HS256, &claims())
        ),
        DenyReason::RevokedKey
    );
}

/// RFC 7638 section 3: the thumbprint names a key that has a kid too, whatever kid the
/// token gives; and JWK keys of every kind (inline) are named by it.
#[test]
fn rfc7638_s3_jwk_thumbprint_revokes_inline_keys_of_every_kind() {
    let k = keys();
    for key in [&k.rsa, &k.ec256, &k.ec384, &k.ed] {
        let p = with_revocations(
            policy(),
            json!([{"jwkThumbprint": thumbprint_of(&key.jwk)}]),
        );
        let f = build(&[route()], &[p], &[]);
        assert_eq!(
            reason(&f.snapshot, &mint(key, &claims())),
            DenyReason::RevokedKey,
            "{}",
            key.kid
        );
        let other = if key.kid == "rsa-1" { &k.rsa2 } else { &k.rsa };
        allowed(&f.snapshot, &mint(other, &claims()));
    }
}

/// RFC 7638 section 3: the thumbprint is SHA-256, base64url without padding: 43
/// characters. Anything else is refused by the compiler, naming the field.
#[test]
fn rfc7638_s3_malformed_jwk_thumbprint_is_a_compile_error() {
    for bad in [
        "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9X",
        "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xt",
        "NzbLsXh8uDCcd+6MNwXF4W/7noWXFZAfHkxZsRGC9Xs",
    ] {
        let p = with_revocations(policy(), json!([{"jwkThumbprint": bad}]));
        let opts = portcullis_policy::CompileOptions {
            validate_cel: false,
            ..Default::default()
        };
        let (_, errors) = portcullis_policy::compile_with(&opts, &[route()], &[p], &[]);
        assert!(
            errors
                .iter()
                .any(|e| e.path == "spec.revocations[0].jwkThumbprint"),
            "{bad}: {errors:#?}"
        );
    }
}

// === 2. tokenSha256 holds for every valid encoding ===

/// P-256 and P-384 group orders (SEC 2), written independently of the crate.
fn group_order(alg: Algorithm) -> Vec<u8> {
    hex::decode(match alg {
        Algorithm::ES256 => "ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551",
        Algorithm::ES384 => {
            "ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973"
        }
        _ => unreachable!(),
    })
    .unwrap()
}

/// `a - b` for big-endian numbers of equal length (`a >= b`).
fn sub_be(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; a.len()];
    let mut borrow = 0i32;
    for i in (0..a.len()).rev() {
        let mut d = i32::from(a[i]) - i32::from(b[i]) - borrow;
        borrow = i32::from(d < 0);
        if d < 0 {
            d += 256;
        }
        out[i] = d as u8;
    }
    out
}

/// `a + b` for big-endian numbers of equal length, or None on overflow.
fn add_be(a: &[u8], b: &[u8]) -> Option<Vec<u8>> {
    let mut out = vec![0u8; a.len()];
    let mut carry = 0u16;
    for i in (0..a.len()).rev() {
        let s = u16::from(a[i]) + u16::from(b[i]) + carry;
        out[i] = s as u8;
        carry = s >> 8;
    }
    (carry == 0).then_some(out)
}

fn replace_signature(token: &str, sig: &[u8]) -> String {
    let (input, _) = token.rsplit_once('.').unwrap();
    format!("{input}.{}", b64(sig))
}

/// The ECDSA twin of a token: `(r, s)` -> `(r, n - s)`.
fn ecdsa_twin(token: &str, alg: Algorithm) -> String {
    let sig = unb64(token.rsplit_once('.').unwrap().1);
    let size = sig.len() / 2;
    let n = group_order(alg);
    let mut twin = sig[..size].to_vec();
    twin.extend(sub_be(&n, &sig[size..]));
    replace_signature(token, &twin)
}

/// RFC 7518 section 3.4 (ECDSA as `R || S`): `(r, s)` and `(r, n - s)` both verify (and
/// aws-lc-rs accepts both), so a token has two spellings with different SHA-256s. Either
/// hash revokes both.
#[test]
fn rfc7518_s3_4_ecdsa_twin_is_revoked_by_either_hash() {
    let k = keys();
    for key in [&k.ec256, &k.ec384] {
        let token = mint(key, &claims());
        let twin = ecdsa_twin(&token, key.alg);
        assert_ne!(token, twin);
        // The twin is a valid token in its own right.
        let f = standard();
        allowed(&f.snapshot, &token);
        allowed(&f.snapshot, &twin);
        for (revoked, other) in [(&token, &twin), (&twin, &token)] {
            let p = with_revocations(
                policy(),
                json!([{"tokenSha256": token_digest(revoked).to_hex()}]),
            );
            let f = build(&[route()], &[p], &[]);
            assert_eq!(
                reason(&f.snapshot, revoked),
                DenyReason::RevokedToken,
                "{:?}",
                key.alg
            );
            assert_eq!(
                reason(&f.snapshot, other),
                DenyReason::RevokedToken,
                "{:?}",
                key.alg
            );
        }
    }
}

/// RFC 7518 section 3.4 with the verified-token cache: a token cached before the hash of
/// its twin is revoked is refused from the cache, and the other way round.
#[test]
fn rfc7518_s3_4_cached_token_is_refused_when_its_twin_is_revoked() {
    let key = &keys().ec256;
    let token = mint(key, &claims());
    let twin = ecdsa_twin(&token, key.alg);
    for (cached, revoked) in [(&token, &twin), (&twin, &token)] {
        let old = standard();
        allowed(&old.snapshot, cached);
        assert!(get(&old.snapshot, cached).is_ok());
        let p = with_revocations(
            policy(),
            json!([{"tokenSha256": token_digest(revoked).to_hex()}]),
        );
        let (mut snapshot, errors) =
            portcullis_policy::compile_with(&options(&old.clock), &[route()], &[p], &[]);
        assert!(errors.is_empty(), "{errors:#?}");
        snapshot.inherit_caches(&old.snapshot);
        assert_eq!(
            get(&snapshot, cached),
            Err((401, DenyReason::RevokedToken, true)),
            "served from the cache, and refused"
        );
        assert_eq!(
            get(&snapshot, revoked),
            Err((401, DenyReason::RevokedToken, false))
        );
    }
}

/// RFC 8017 sections 8.1.2 and 8.2.2 (RSASSA-PSS and PKCS1-v1_5 verification): the
/// signature is an integer below the modulus, written in exactly the modulus length
/// (`s` is unique: RSA is a permutation). `s + n` (when it fits) and a longer spelling are
/// refused, so an RSA token has one encoding.
#[test]
fn rfc8017_s8_rsa_signature_has_a_single_encoding() {
    // A key whose modulus leaves room above it (top byte below 0xC0): then `s + n` fits in
    // the modulus length for about a third of the signatures, and 32 of them try it with
    // near certainty. With any key (the shared fixture's could start 0xFF..) the test
    // could find no signature to try, at random.
    let rsa = (0..256)
        .map(|_| portcullis_testkit::rsa("rsa-1"))
        .find(|k| unb64(k.jwk["n"].as_str().unwrap())[0] < 0xC0)
        .expect("a modulus below 0xC0.. within 256 keys");
    let mut doc = serde_json::to_value(policy()).unwrap();
    doc["spec"]["issuers"][0]["jwks"]["inline"] = serde_json::json!({"keys": [rsa.jwk]});
    let f = build(&[route()], &[serde_json::from_value(doc).unwrap()], &[]);
    let n = unb64(rsa.jwk["n"].as_str().unwrap());
    let mut tried_plus_n = false;
    for alg in [Algorithm::RS256, Algorithm::PS256] {
        // Several tokens, so that `s + n` fits in the modulus length for some of them.
        for i in 0..16 {
            let mut h = jsonwebtoken::Header::new(alg);
            h.kid = Some("rsa-1".into());
            let token =
                jsonwebtoken::encode(&h, &with_jti(&format!("rsa-{i}")), &rsa.encoding).unwrap();
            allowed(&f.snapshot, &token);
            let sig = unb64(token.rsplit_once('.').unwrap().1);
            assert_eq!(sig.len(), n.len());
            if let Some(plus_n) = add_be(&sig, &n) {
                tried_plus_n = true;
                assert_eq!(
                    reason(&f.snapshot, &replace_signature(&token, &plus_n)),
                    DenyReason::BadSignature
                );
            }
            let longer = [&[0u8][..], &sig].concat();
            assert_eq!(
                reason(&f.snapshot, &replace_signature(&token, &longer)),
                DenyReason::BadSignature
            );
            let shorter = &sig[1..];
            assert_eq!(
                reason(&f.snapshot, &replace_signature(&token, shorter)),
                DenyReason::BadSignature
            );
        }
    }
    assert!(tried_plus_n, "no signature left room for s + n");
}

/// RFC 8032 section 5.1.7 (Ed25519 verification): `S` must be below the group order `L`
/// (aws-lc-rs checks it), and `R` is compared as encoded. `S + L` is refused, so an
/// Ed25519 token has one encoding.
#[test]
fn rfc8032_s5_1_7_ed25519_signature_has_a_single_encoding() {
    let f = standard();
    let token = mint(&keys().ed, &claims());
    allowed(&f.snapshot, &token);
    let sig = unb64(token.rsplit_once('.').unwrap().1);
    // L = 2^252 + 27742317777372353535851937790883648493, little-endian.
    let l =
        hex::decode("edd3f55c1a631258d69cf7a2def9de1400000000000000000000000000000010").unwrap();
    let mut s_plus_l = sig[32..].to_vec();
    let mut carry = 0u16;
    for i in 0..32 {
        let v = u16::from(s_plus_l[i]) + u16::from(l[i]) + carry;
        s_plus_l[i] = v as u8;
        carry = v >> 8;
    }
    assert_eq!(carry, 0);
    let forged = [&sig[..32], &s_plus_l].concat();
    assert_eq!(
        reason(&f.snapshot, &replace_signature(&token, &forged)),
        DenyReason::BadSignature
    );
}

/// RFC 7515 section 2 (base64url without padding) and section 7.1 (compact
/// serialization): the signature's spelling is unique. Padding, stray low bits in the last
/// character and `+`/`/` spellings are refused for every algorithm, and an HMAC tag must
/// be whole (RFC 7518 section 3.2).
#[test]
fn rfc7515_s2_base64url_signature_has_a_single_spelling() {
    let k = keys();
    let f = standard();
    let mut tokens: Vec<String> = [&k.rsa, &k.ec256, &k.ec384, &k.ed]
        .iter()
        .map(|key| mint(key, &claims()))
        .collect();
    let hmac = build(
        &[route()],
        &[secret_policy(&["HS256"])],
        &[secret(HMAC_SECRET)],
    );
    let hs = mint_hmac(HMAC_SECRET, Algorithm::HS256, &claims());
    tokens.push(hs.clone());
    for token in &tokens {
        let snapshot = if token == &hs {
            &hmac.snapshot
        } else {
            &f.snapshot
        };
        allowed(snapshot, token);
        let (input, sig) = token.rsplit_once('.').unwrap();
        let raw = unb64(sig);
        let mut spellings = vec![
            format!("{token}="),
            format!("{token}=="),
            format!("{input}.{}", STANDARD.encode(&raw)),
        ];
        // Every other last character: the ones that differ only in unused bits decode to
        // the same bytes with a lenient decoder.
        for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".chars() {
            if !sig.ends_with(c) {
                spellings.push(format!("{}{c}", &token[..token.len() - 1]));
            }
        }
        if token == &hs {
            spellings.push(replace_signature(token, &raw[..raw.len() - 1]));
            spellings.push(replace_signature(token, &[&raw[..], &[0]].concat()));
        }
        // (Standard base64 of 96 bytes may happen to spell the same.)
        spellings.retain(|s| s != token);
        for s in spellings {
            let h = format!("Bearer {s}");
            let d = snapshot
                .authorize(&RequestParts::new("GET", HOST, "/orders/1").with_authorization(&h));
            assert!(!d.is_allow(), "{s} allowed");
        }
    }
}

// === 3. explicit typing ===

fn mint_typed(key: &TestKey, typ: Option<&str>, claims: &Value) -> String {
    let mut header = json!({"alg": format!("{:?}", key.alg), "kid": key.kid});
    if let Some(t) = typ {
        header["typ"] = json!(t);
    }
    key.mint_raw(&header.to_string(), &claims.to_string())
}

/// RFC 8725 section 3.11 (explicit typing), RFC 8417 section 2.3 (`secevent+jwt`),
/// OpenID Back-Channel Logout 1.0 section 2.4 (`logout+jwt`), RFC 9449 section 4.2
/// (`dpop+jwt`): tokens typed as something other than an access token are refused, in any
/// case and with or without `application/`.
#[test]
fn rfc8725_s3_11_logout_secevent_and_dpop_types_are_refused() {
    let f = standard();
    let key = &keys().rsa;
    for typ in [
        "logout+jwt",
        "application/logout+jwt",
        "secevent+jwt",
        "Application/SecEvent+JWT",
        "dpop+jwt",
        "DPOP+JWT",
        "id_token+jwt",
        "JOSE",
        "text/jwt",
        "",
    ] {
        assert_eq!(
            reason(&f.snapshot, &mint_typed(key, Some(typ), &claims())),
            DenyReason::WrongTokenType,
            "{typ:?}"
        );
    }
}

/// The compiler refuses never-accepted types in `acceptedTypes` even when the CRD's CEL
/// rules were not run (RFC 8725 section 3.11).
#[test]
fn rfc8725_s3_11_never_accepted_types_cannot_be_configured() {
    for typ in ["logout+jwt", "application/secevent+jwt", "DPoP+JWT"] {
        let mut p = policy();
        p.spec.issuers[0].accepted_types = Some(vec!["at+jwt".into(), typ.into()]);
        let opts = portcullis_policy::CompileOptions {
            validate_cel: false,
            ..Default::default()
        };
        let (_, errors) = portcullis_policy::compile_with(&opts, &[route()], &[p], &[]);
        assert!(
            errors
                .iter()
                .any(|e| e.path == "spec.issuers[0].acceptedTypes[1]"),
            "{typ}: {errors:#?}"
        );
    }
}

/// RFC 7515 section 4.1.9: `typ` is a media type, compared case-insensitively, with
/// `application/` implied. The defaults accept `JWT` and `at+jwt` (RFC 9068 section
/// 2.1), and a token without `typ`.
#[test]
fn rfc7515_s4_1_9_typ_compares_case_insensitively_without_the_application_prefix() {
    let f = standard();
    let key = &keys().rsa;
    for typ in [
        Some("JWT"),
        Some("jwt"),
        Some("application/jwt"),
        Some("APPLICATION/JWT"),
        Some("at+jwt"),
        Some("AT+JWT"),
        Some("application/at+jwt"),
        None,
    ] {
        allowed(&f.snapshot, &mint_typed(key, typ, &claims()));
    }
    // A typ that is not a string is a malformed header.
    let t = key.mint_raw(
        r#"{"alg":"RS256","kid":"rsa-1","typ":42}"#,
        &claims().to_string(),
    );
    assert_eq!(reason(&f.snapshot, &t), DenyReason::MalformedToken);
}

/// RFC 9068 section 2.1: an issuer that types access tokens `at+jwt` (npm oidc-provider)
/// can accept only those, refusing its ID tokens (typed `JWT`); `requireType` refuses
/// untyped tokens as well.
#[test]
fn rfc9068_s2_1_accepted_types_at_jwt_refuses_id_tokens() {
    let key = &keys().rsa;
    let mut p = policy();
    p.spec.issuers[0].accepted_types = Some(vec!["at+jwt".into()]);
    let f = build(&[route()], &[p.clone()], &[]);
    allowed(&f.snapshot, &mint_typed(key, Some("at+jwt"), &claims()));
    allowed(
        &f.snapshot,
        &mint_typed(key, Some("application/at+jwt"), &claims()),
    );
    allowed(&f.snapshot, &mint_typed(key, None, &claims()));
    assert_eq!(
        reason(&f.snapshot, &mint_typed(key, Some("JWT"), &claims())),
        DenyReason::WrongTokenType
    );
    p.spec.issuers[0].require_type = Some(true);
    let f = build(&[route()], &[p], &[]);
    allowed(&f.snapshot, &mint_typed(key, Some("at+jwt"), &claims()));
    assert_eq!(
        reason(&f.snapshot, &mint_typed(key, None, &claims())),
        DenyReason::WrongTokenType
    );
}

/// RFC 8417 section 2.2 (the `events` claim of a Security Event Token) and OpenID
/// Back-Channel Logout 1.0 section 2.4 (a logout token carries `events`): refused
/// whatever the `typ` says.
#[test]
fn rfc8417_s2_2_a_token_with_events_is_refused_whatever_its_typ() {
    let f = standard();
    let key = &keys().rsa;
    let mut c = claims();
    c["events"] = json!({"http://schemas.openid.net/event/backchannel-logout": {}});
    for typ in [Some("JWT"), Some("at+jwt"), None] {
        assert_eq!(
            reason(&f.snapshot, &mint_typed(key, typ, &c)),
            DenyReason::WrongTokenType,
            "{typ:?}"
        );
    }
}

/// RFC 8725 section 3.11 applied to Keycloak, which types all its JWTs `JWT` in the header
/// but says in a `typ` claim which are ID, logout and refresh tokens.
#[test]
fn rfc8725_s3_11_keycloak_id_logout_and_refresh_tokens_are_refused() {
    let f = standard();
    let key = &keys().rsa;
    for typ in ["ID", "Logout", "Refresh", "Offline", "id", "REFRESH"] {
        let mut c = claims();
        c["typ"] = json!(typ);
        assert_eq!(
            reason(&f.snapshot, &mint(key, &c)),
            DenyReason::WrongTokenType,
            "{typ}"
        );
    }
    let mut c = claims();
    c["typ"] = json!("Bearer");
    allowed(&f.snapshot, &mint(key, &c));
}

// === 4. forwarded claims must be header values ===

fn forwarding(claim: &str, value: Value) -> Outcome {
    let f = standard();
    let mut c = claims();
    c[claim] = value;
    get(&f.snapshot, &mint(&keys().rsa, &c))
}

fn header<'h>(headers: &'h [(String, Vec<u8>)], name: &str) -> Option<&'h [u8]> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_slice())
}

/// RFC 9110 section 5.5: a field value holds no CR, LF or NUL (and control characters are
/// no text a backend expects); surrounding whitespace is trimmed by the recipient. Such a
/// forwarded claim refuses the token (401 invalid_token) instead of reaching the backend
/// without the header.
#[test]
fn rfc9110_s5_5_forwarded_claim_with_control_characters_or_edge_whitespace_is_refused() {
    for bad in [
        "alice\r\nX-Admin: true",
        "alice\n",
        "al\0ice",
        "al\tice",
        "al\u{7f}ice",
        "al\u{85}ice",
        " alice",
        "alice ",
        "\talice",
        "alice\u{a0}",
    ] {
        assert_eq!(
            forwarding("sub", json!(bad)),
            Err((401, DenyReason::UnforwardableClaim, false)),
            "{bad:?}"
        );
        assert_eq!(
            forwarding("email", json!([bad])),
            Err((401, DenyReason::UnforwardableClaim, false)),
            "{bad:?}"
        );
    }
    // A claim that is not forwarded may hold anything.
    let headers = forwarding("name", json!("line\r\nbreak")).unwrap();
    assert_eq!(header(&headers, "x-user"), Some(&b"alice"[..]));
}

/// RFC 9110 section 5.3: `,` separates the members of a list-valued field, so a `,` in a
/// single value (or in one element of an array claim) would be read as several values.
#[test]
fn rfc9110_s5_3_comma_in_a_forwarded_value_is_refused() {
    for bad in [
        json!("alice,admin"),
        json!(["a", "b,c"]),
        json!({"a": 1, "b": 2}),
        json!([1, [2, 3]]),
    ] {
        assert_eq!(
            forwarding("email", bad.clone()),
            Err((401, DenyReason::UnforwardableClaim, false)),
            "{bad}"
        );
    }
    // Arrays of scalars are lists; other values are sent as JSON when that is one value.
    for (value, sent) in [
        (json!(["a", "b"]), &b"a,b"[..]),
        (json!([1, true, "x"]), b"1,true,x"),
        (json!(42), b"42"),
        (json!({"a": 1}), br#"{"a":1}"#),
        (json!("Doe Jane"), b"Doe Jane"),
    ] {
        let headers = forwarding("email", value.clone()).unwrap();
        assert_eq!(header(&headers, "x-email"), Some(sent), "{value}");
    }
}

/// RFC 9110 section 5.5: non-ASCII octets are `obs-text`. Portcullis sends non-ASCII claim
/// text as its raw UTF-8 bytes rather than refusing names like `José`.
#[test]
fn rfc9110_s5_5_non_ascii_claims_are_forwarded_as_utf8_bytes() {
    let headers = forwarding("sub", json!("José 山田")).unwrap();
    assert_eq!(header(&headers, "x-user"), Some("José 山田".as_bytes()));
}

/// RFC 7662 section 2.2 with RFC 9110 section 5.5: an introspection answer whose forwarded
/// claim cannot be a header value is refused too.
#[test]
fn rfc7662_s2_2_introspection_answer_with_an_unforwardable_claim_is_refused() {
    let p: TokenPolicy = serde_json::from_value(json!({
        "apiVersion": "portcullis.dev/v1alpha1", "kind": "TokenPolicy",
        "metadata": {"name": "default", "namespace": "shop"},
        "spec": {
            "issuers": [{
                "issuer": ISSUER, "audiences": [AUDIENCE],
                "introspection": {
                    "endpoint": "https://auth.example.com/introspect",
                    "credentialsSecretRef": {"name": "idp"},
                },
            }],
            "forwardClaims": {"sub": "X-User"},
        }
    }))
    .unwrap();
    let creds: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "idp", "namespace": "shop"},
        "stringData": {"client-id": "gateway", "client-secret": "s3cret"},
    }))
    .unwrap();
    let f = build(&[route()], &[p], &[creds]);
    let judge = |sub: &str| {
        let h = "Bearer opaque-token-value";
        let req = RequestParts::new("GET", HOST, "/orders/1").with_authorization(h);
        let Decision::Pending(pending) = f.snapshot.authorize(&req) else {
            panic!("not sent to introspection")
        };
        let answer = json!({
            "active": true, "iss": ISSUER, "aud": AUDIENCE, "sub": sub,
            "exp": NOW + 600, "scope": "orders:read",
        });
        match f.snapshot.resume(
            &req,
            &pending.need,
            portcullis_policy::Answer::Introspection(Ok(&answer)),
        ) {
            Decision::Allow(_) => None,
            Decision::Deny(d) => Some((d.status(), d.reason)),
            Decision::Pending(_) => unreachable!(),
        }
    };
    assert_eq!(
        judge("svc\r\nX-Admin: 1"),
        Some((401, DenyReason::UnforwardableClaim))
    );
}

// === 5. the query-string token, however spelled ===

/// RFC 6750 section 2.3 (`access_token` URI query parameter), read the way servers read
/// it: `application/x-www-form-urlencoded` names (percent-decoding in either case, `+`
/// for space), `&` and `;` separators, and PHP's folding of ` `, `.` and `[` into `_`.
#[test]
fn rfc6750_s2_3_query_token_is_refused_however_encoded() {
    let f = standard();
    let t = mint(&keys().rsa, &claims());
    let h = format!("Bearer {t}");
    let refused = [
        "access_token=x",
        "ACCESS_TOKEN=x",
        "Access_Token",
        "access.token=x",
        "access%2Etoken=x",
        "access%2etoken=x",
        "acc%65ss_token=x",
        "acc%65ss%5ftoken=x",
        "%61%63%63%65%73%73%5F%74%6F%6B%65%6E=x",
        "access%5Ftoken=x",
        "access+token=x",
        "access%20token=x",
        "access token=x",
        "access[token=x",
        "access%5Btoken=x",
        "+access_token=x",
        "%20access_token=x",
        "access_token[]=x",
        "access_token[0]=x",
        "a=1;access_token=x",
        "a=1&b=2;access.token=x",
        "a=1&&access_token",
    ];
    for q in refused {
        let req = RequestParts::new("GET", HOST, "/orders")
            .with_query(q)
            .with_authorization(&h);
        let d = f.snapshot.authorize(&req);
        assert!(
            matches!(&d, Decision::Deny(d) if d.reason == DenyReason::TokenInQuery && d.status() == 400),
            "{q}: {d:?}"
        );
    }
    let kept = [
        "access_tokens=1",
        "x_access_token=2",
        "access=1&token=2",
        "access%5token=1",
        "access%2",
        "accesstoken=1",
        "a=access_token",
        "access_token_x=1",
        "access%252Etoken=1",
        "",
        "%",
        "%%",
        "é=1",
    ];
    for q in kept {
        let req = RequestParts::new("GET", HOST, "/orders")
            .with_query(q)
            .with_authorization(&h);
        assert!(f.snapshot.authorize(&req).is_allow(), "{q}");
    }
}

// === 6. the new reasons ===

#[test]
fn new_deny_reasons_are_401_invalid_token_with_stable_labels() {
    for (r, label) in [
        (DenyReason::WrongTokenType, "wrong_token_type"),
        (DenyReason::UnforwardableClaim, "unforwardable_claim"),
    ] {
        assert_eq!(r.status(), 401);
        assert_eq!(r.error_code(), Some("invalid_token"));
        assert_eq!(r.as_str(), label);
        assert_eq!(r.to_string(), label);
        assert!(!r.description().is_empty() && !r.description().contains('"'));
    }
}
