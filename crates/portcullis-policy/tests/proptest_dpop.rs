//! DPoP proofs (RFC 9449 section 4.3), property-tested against an independent model: a
//! proof built from random choices for every field the check reads (`typ`, `alg`, the
//! `jwk`, `htm`, `htu` spellings, `iat`, `ath`, `jti`, extra headers) plus random byte
//! damage is accepted exactly when the model says every rule holds, and never panics.
//! Fixed seed: the same cases on every run.

mod support;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use portcullis_policy::{Decision, DenyReason, HeaderField, RequestParts};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, RngSeed};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::*;

const HOST: &str = "api.example.com";

struct Client {
    key: TestKey,
    other: TestKey,
    jkt: String,
    token: String,
    ath: String,
}

fn client() -> &'static Client {
    static C: std::sync::OnceLock<Client> = std::sync::OnceLock::new();
    C.get_or_init(|| {
        let key = portcullis_testkit::ec("c", false);
        let other = portcullis_testkit::ec("o", false);
        let jkt = portcullis_policy::key_thumbprints(&json!({"keys": [key.jwk]}).to_string())
            .unwrap()[0]
            .thumbprint
            .clone();
        let mut c = claims();
        c["cnf"] = json!({"jkt": jkt});
        let token = mint(&keys().rsa, &c);
        let ath = URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()));
        Client {
            key,
            other,
            jkt,
            token,
            ath,
        }
    })
}

/// One generated proof and what the model expects of it.
#[derive(Debug, Clone)]
struct Case {
    typ: u8,
    signer_other: bool,
    jwk_private: bool,
    jwk_other: bool,
    htm_post: bool,
    htu: u8,
    iat_offset: i64,
    ath_wrong: bool,
    jti: u8,
    crit: bool,
    damage: Option<(usize, u8)>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        0u8..4,
        any::<bool>(),
        prop::bool::weighted(0.15),
        prop::bool::weighted(0.15),
        prop::bool::weighted(0.15),
        0u8..8,
        -200i64..100,
        prop::bool::weighted(0.15),
        0u8..4,
        prop::bool::weighted(0.1),
        prop::option::weighted(0.15, (0usize..400, any::<u8>())),
    )
        .prop_map(
            |(
                typ,
                signer_other,
                jwk_private,
                jwk_other,
                htm_post,
                htu,
                iat_offset,
                ath_wrong,
                jti,
                crit,
                damage,
            )| Case {
                typ,
                signer_other: signer_other && typ == 3,
                jwk_private,
                jwk_other,
                htm_post,
                htu,
                iat_offset,
                ath_wrong,
                jti,
                crit,
                damage,
            },
        )
}

/// `(htu, whether it names GET https://api.example.com/orders/1)`.
const HTUS: [(&str, bool); 8] = [
    ("https://api.example.com/orders/1", true),
    ("HTTPS://Api.Example.Com:443/orders/1?q=1", true),
    ("https://api.example.com/orders/./1#frag", true),
    ("https://api.example.com/orders/%31", true),
    ("http://api.example.com/orders/1", false),
    ("https://api.example.com:8443/orders/1", false),
    ("https://api.example.com/orders/2", false),
    ("https://evil.example/orders/1", false),
];

fn build(c: &Case, n: u64) -> (String, bool) {
    let cl = client();
    let mut jwk = if c.jwk_other {
        cl.other.jwk.clone()
    } else {
        cl.key.jwk.clone()
    };
    jwk.as_object_mut().unwrap().remove("kid");
    if c.jwk_private {
        jwk["d"] = json!("AAAA");
    }
    let typ = ["dpop+jwt", "JWT", "DPOP+JWT", "at+jwt"][usize::from(c.typ)];
    let mut header = json!({"typ": typ, "alg": "ES256", "jwk": jwk});
    if c.crit {
        header["crit"] = json!(["x"]);
        header["x"] = json!(1);
    }
    let (htu, htu_ok) = HTUS[usize::from(c.htu)];
    let jti: Value = match c.jti {
        0 => json!(format!("j-{n}")),
        1 => json!(""),
        2 => json!(7),
        _ => json!("x".repeat(300)),
    };
    let claims = json!({
        "jti": jti, "htm": if c.htm_post { "POST" } else { "GET" }, "htu": htu,
        "iat": NOW + c.iat_offset, "ath": if c.ath_wrong { "AAAA".to_owned() } else { cl.ath.clone() },
    });
    let signer = if c.signer_other { &cl.other } else { &cl.key };
    let mut proof = signer.mint_raw(&header.to_string(), &claims.to_string());
    let mut damaged = false;
    if let Some((at, byte)) = c.damage {
        let mut b = proof.into_bytes();
        let i = at % b.len();
        if b[i] != byte {
            b[i] = byte;
            damaged = true;
        }
        proof = String::from_utf8_lossy(&b).into_owned();
    }
    // The model: every rule of section 4.3 and section 6.1, written out again.
    let ok = !damaged
        && typ == "dpop+jwt"
        && !c.crit
        && !c.jwk_private
        && !c.jwk_other
        && !c.signer_other
        && !c.htm_post
        && htu_ok
        && (-90..=30).contains(&c.iat_offset)
        && !c.ath_wrong
        && c.jti == 0;
    (proof, ok)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 400,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(0x09ee_9449),
        ..ProptestConfig::default()
    })]

    #[test]
    fn a_proof_passes_exactly_when_every_rule_holds(cases in proptest::collection::vec(case(), 1..8)) {
        let f = standard();
        let cl = client();
        let _ = &cl.jkt;
        let auth = format!("DPoP {}", cl.token);
        for (n, c) in cases.iter().enumerate() {
            let (proof, ok) = build(c, n as u64);
            let mut req = RequestParts::new("GET", HOST, "/orders/1").with_authorization(&auth);
            req.credentials.dpop = HeaderField::One(proof.as_bytes());
            let got = match f.snapshot.authorize(&req) {
                Decision::Allow(_) => Ok(()),
                Decision::Deny(d) => Err(d.reason),
                Decision::Pending(_) => panic!("pending"),
            };
            if ok {
                prop_assert_eq!(got, Ok(()), "{:?}", c);
                // The same proof twice is a replay.
                let again = match f.snapshot.authorize(&req) {
                    Decision::Deny(d) => Some(d.reason),
                    _ => None,
                };
                prop_assert_eq!(again, Some(DenyReason::DpopReplay));
            } else {
                prop_assert!(
                    matches!(got, Err(DenyReason::InvalidDpopProof) | Err(DenyReason::DpopReplay)),
                    "{:?} -> {:?}", c, got
                );
            }
        }
    }
}
