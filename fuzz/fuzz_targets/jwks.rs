//! Key material: `usable_keys` on a fetched JWKS, and the same document (or the raw bytes)
//! through the compiler's three doors: `jwks.uri` (a fetched document), `jwks.secretRef`
//! (Secret data: a JWKS, a PEM public key, or an HMAC secret) and `jwks.inline`.
//!
//! Input: byte 0 picks the issuer's algorithm set (bit 0: HS256 instead of the public-key
//! algorithms); the rest is the document (JSON, or anything for the Secret).
//!
//! Invariants: `usable_keys` is what the compiler does with a fetched document:
//! `Ok(n)` (n >= 1, at most the number of `keys`) exactly when a policy fetching it
//! compiles with no error, and then with n keys; every compile error names the policy and
//! a field under `spec.issuers[0]`. Nothing panics.
#![no_main]

use std::sync::Arc;

use base64::Engine;
use k8s_openapi::api::core::v1::Secret;
use libfuzzer_sys::fuzz_target;
use portcullis_api::TokenPolicy;
use portcullis_policy::{CompileError, CompileOptions, ManualClock, remote_sources, usable_keys};
use serde_json::{Value, json};

const PUBLIC_ALGS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

fn policy(jwks: Value, algorithms: &[&str]) -> Option<TokenPolicy> {
    serde_json::from_value(json!({
        "apiVersion": "portcullis.dev/v1alpha1", "kind": "TokenPolicy",
        "metadata": {"name": "keys", "namespace": "fuzz"},
        "spec": {"issuers": [{
            "issuer": "https://issuer.example.com", "audiences": ["a"],
            "algorithms": algorithms, "jwks": jwks,
        }]}
    }))
    .ok()
}

fn options() -> CompileOptions {
    CompileOptions {
        validate_cel: false,
        clock: Arc::new(ManualClock::new(1_800_000_000)),
        ..Default::default()
    }
}

fn check_errors(errors: &[CompileError]) {
    for e in errors {
        assert_eq!(e.kind, "TokenPolicy", "{e}");
        assert_eq!(
            (e.namespace.as_str(), e.name.as_str()),
            ("fuzz", "keys"),
            "{e}"
        );
        assert!(
            e.path.starts_with("spec.issuers[0]"),
            "error names no field: {e}"
        );
        assert!(!e.message.is_empty(), "{e:?}");
        assert!(
            e.to_string()
                .starts_with(&format!("TokenPolicy fuzz/keys: {}: ", e.path)),
            "{e}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, doc_bytes)) = data.split_first() else {
        return;
    };
    let algs: &[&str] = if flags & 1 == 1 {
        &["HS256"]
    } else {
        PUBLIC_ALGS
    };

    // 1. The Secret door: any bytes.
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "keys", "namespace": "fuzz"},
        "data": {"jwks": base64::engine::general_purpose::STANDARD.encode(doc_bytes)},
    }))
    .expect("secret");
    if let Some(p) = policy(json!({"secretRef": {"name": "keys", "key": "jwks"}}), algs) {
        let (snap, errors) = portcullis_policy::compile_with(&options(), &[], &[p], &[secret]);
        check_errors(&errors);
        assert_eq!(errors.is_empty(), snap.stats().policies == 1);
    }

    let Ok(doc) = serde_json::from_slice::<Value>(doc_bytes) else {
        return;
    };

    // 2. A fetched document: usable_keys must agree with the compiler.
    let usable = usable_keys(&doc);
    let listed = doc
        .get("keys")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    if let Ok(n) = usable {
        assert!(n >= 1 && n <= listed, "usable_keys {n} of {listed}");
    }
    if flags & 1 == 0 {
        let uri = "https://issuer.example.com/jwks";
        let p = policy(json!({"uri": uri}), PUBLIC_ALGS).expect("policy");
        let sources = remote_sources(std::slice::from_ref(&p), &[]);
        assert_eq!(sources.len(), 1);
        let mut opts = options();
        opts.remote_jwks.insert(sources[0].key.clone(), doc.clone());
        let (snap, errors) = portcullis_policy::compile_with(&opts, &[], &[p], &[]);
        check_errors(&errors);
        match usable {
            Ok(n) => {
                assert!(
                    errors.is_empty(),
                    "usable_keys said {n} keys, compile said {errors:?}"
                );
                assert_eq!(
                    snap.stats().keys,
                    n,
                    "usable_keys and the compiler disagree"
                );
            }
            Err(e) => assert!(
                !errors.is_empty(),
                "usable_keys refused ({e}) what the compiler accepts"
            ),
        }
    }

    // 3. Inline, when the document has the JWKS shape.
    if let Some(p) = policy(json!({"inline": doc}), algs) {
        let (_snap, errors) = portcullis_policy::compile_with(&options(), &[], &[p], &[]);
        check_errors(&errors);
    }
});
