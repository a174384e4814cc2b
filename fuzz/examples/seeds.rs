//! Writes the seed corpora, `fuzz/corpus/<target>/seed-*`, from real inputs: tokens minted
//! by portcullis-testkit (and hostile ones), its JWKS documents and PEMs, the example
//! manifests in examples/, config-stream frames built from them, and the hostile paths of
//! the path-normalization work. Run by `scripts/fuzz.sh seeds` (or
//! `cargo run --manifest-path fuzz/Cargo.toml --example seeds`); the files are committed.
//! Old `seed-*` files are replaced; inputs the fuzzer found (other names) are kept.
//!
//! Each target's input format is in the doc comment of fuzz/fuzz_targets/<target>.rs.

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use portcullis_api::push::{
    Changes, RemoteKeys, RevocationEdit, ServerMessage, SourceObject, SourceSet,
};
use portcullis_fuzz::fixture::{self, AUDIENCE, HMAC_ISSUER, ISSUER, NOW};
use serde_json::{Value, json};

/// The hostile paths of the path-normalization work, plus ordinary ones.
const PATHS: &[&str] = &[
    "/public/../admin/x",
    "/public/%2e%2e/admin/x",
    "/public/%2E%2E/admin/x",
    "/public/.%2e/admin/x",
    "/public/./../admin/x",
    "/public/%00../admin",
    "/public/..%2Fadmin",
    "/public/..%5Cadmin",
    "/public/..;/admin",
    "//admin",
    "/public//../admin",
    "/%61dmin",
    "/",
    "/orders/1",
    "/health",
    "/public/x",
    "/public/secret/x",
    "/a/b/c/./../../g",
    "/mid/content=5/../6",
    "/caf%c3%a9/%7e",
    "/a%2fb/..%2Fc",
    "/a;v=1/b",
    "/a/.;x/b",
    "/a//b///c/",
    "/a//..",
    "/..",
    "/public\\..\\admin",
    "/a%zz",
    "/a%c3",
    "/{x} y\"<",
    "*",
    "admin",
    "/static/../admin",
    "/pub/..%2Fpriv",
    "/pub//private/x",
    "/public%2F..%2Fadmin",
];

/// PathOptions bytes of the `path` target: default, slashes kept, %2F kept, %2F decoded,
/// `;` kept, everything relaxed.
const PATH_OPTIONS: &[u8] = &[0x00, 0x01, 0x02, 0x04, 0x08, 0x0b];

struct Corpus {
    root: PathBuf,
}

impl Corpus {
    fn target(&self, name: &str) -> Target {
        let dir = self.root.join(name);
        std::fs::create_dir_all(&dir).expect("mkdir");
        for e in std::fs::read_dir(&dir).expect("readdir").flatten() {
            if e.file_name().to_string_lossy().starts_with("seed-") {
                std::fs::remove_file(e.path()).expect("rm");
            }
        }
        Target { dir, n: 0 }
    }
}

struct Target {
    dir: PathBuf,
    n: usize,
}

impl Target {
    fn add(&mut self, label: &str, bytes: impl AsRef<[u8]>) {
        let label: String = label
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(40)
            .collect();
        std::fs::write(self.dir.join(format!("seed-{:03}-{label}", self.n)), bytes)
            .expect("write seed");
        self.n += 1;
    }
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn main() {
    let fuzz_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let repo = fuzz_dir.parent().expect("repo root");
    let corpus = Corpus {
        root: fuzz_dir.join("corpus"),
    };
    let k = fixture::keys();
    let claims = json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "jti": "jti-1",
        "iat": NOW - 60, "exp": NOW + 600, "scope": "orders:read profile",
        "email": "alice@example.com",
    });
    let tokens: Vec<(&str, String)> = vec![
        ("rsa", k.rsa.mint(&claims)),
        ("ec256", k.ec256.mint(&claims)),
        ("ec384", k.ec384.mint(&claims)),
        ("ed", k.ed.mint(&claims)),
    ];
    let b64 = |s: &str| URL_SAFE_NO_PAD.encode(s);
    let hostile_tokens: Vec<(&str, String)> = vec![
        (
            "alg-none",
            format!("{}.{}.", b64(r#"{"alg":"none"}"#), b64(&claims.to_string())),
        ),
        (
            "jwe",
            format!("{}.a.b.c.d", b64(r#"{"alg":"RSA-OAEP","enc":"A256GCM"}"#)),
        ),
        ("two-parts", format!("{}.{}", b64(r#"{"alg":"RS256"}"#), b64("{}"))),
        (
            "crit",
            k.rsa.mint_raw(
                r#"{"alg":"RS256","kid":"rsa-1","crit":["exp"]}"#,
                &claims.to_string(),
            ),
        ),
        (
            "dup-sub",
            k.rsa.mint_raw(
                r#"{"alg":"RS256","kid":"rsa-1"}"#,
                r#"{"iss":"https://auth.example.com","aud":"orders-api","sub":"a","sub":"b","exp":1800000600,"iat":1799999940}"#,
            ),
        ),
        (
            "hs256-confusion",
            jsonwebtoken::encode(
                &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
                &claims,
                &jsonwebtoken::EncodingKey::from_secret(
                    k.rsa.public_pem.as_deref().unwrap_or_default().as_bytes(),
                )
                .expect("HMAC key"),
            )
            .expect("sign"),
        ),
    ];

    // === path ===
    let mut t = corpus.target("path");
    for (i, p) in PATHS.iter().enumerate() {
        t.add(p, cat(&[&[0], p.as_bytes()]));
        if i < 12 {
            for o in &PATH_OPTIONS[1..] {
                t.add(p, cat(&[&[*o], p.as_bytes()]));
            }
        }
    }

    // === route === (host 0 api, 3 files, 4 decode, 5 wildcard; GET; no Authorization)
    let mut t = corpus.target("route");
    for p in PATHS {
        for host in [0u8, 3, 4, 5] {
            t.add(p, cat(&[&[host, 0, 0], p.as_bytes()]));
        }
    }
    t.add("custom-host", b"\xff\x00\x01API.Example.com:443\n/public/x");
    t.add(
        "custom-host-dot",
        b"\xff\x00\x00files.example.com.\n/pub/../priv",
    );

    // === bearer ===
    let mut t = corpus.target("bearer");
    for (name, tok) in tokens.iter().chain(&hostile_tokens) {
        t.add(name, format!("Bearer {tok}"));
    }
    for h in [
        "bearer abc",
        "BEARER  abc==",
        "Bearer \tabc",
        "Bearer a=b",
        "Bearer ====",
        "Bearer",
        "Bearer ",
        "Basic YWxhZGRpbjpvcGVuc2VzYW1l",
        "Bearer abc def",
        "Bearer a+b/c~d-e_f.g",
        "Bearerabc",
        " Bearer abc",
    ] {
        t.add(h, h);
    }
    t.add("nul", b"Bearer abc\x00");
    t.add("latin1", b"Bearer \xe9t\xe9");

    // === jwt ===
    let mut t = corpus.target("jwt");
    for (name, tok) in tokens.iter().chain(&hostile_tokens) {
        for req in [0u8, 3] {
            t.add(&format!("raw-{name}"), cat(&[&[0, req], tok.as_bytes()]));
        }
    }
    let header = |alg: &str, kid: &str| json!({"alg": alg, "kid": kid}).to_string();
    let resigned: Vec<(&str, u8, String, String)> = vec![
        ("rsa-valid", 0, header("RS256", "rsa-1"), claims.to_string()),
        ("rsa2-revoked-kid", 1, header("RS256", "rsa-2"), claims.to_string()),
        ("ec-valid", 2, header("ES256", "ec-1"), claims.to_string()),
        ("ec384-valid", 3, header("ES384", "ec-384"), claims.to_string()),
        ("ed-valid", 4, header("EdDSA", "ed-1"), claims.to_string()),
        (
            "hmac-valid",
            5,
            json!({"alg": "HS256"}).to_string(),
            json!({"iss": HMAC_ISSUER, "aud": AUDIENCE, "sub": "bob", "iat": NOW, "exp": NOW + 60})
                .to_string(),
        ),
        ("hs-confusion", 6, json!({"alg": "HS256"}).to_string(), claims.to_string()),
        ("attacker-rsa", 10, header("RS256", "rsa-1"), claims.to_string()),
        (
            "float-times",
            0,
            header("RS256", "rsa-1"),
            json!({"iss": ISSUER, "aud": [AUDIENCE, "x"], "sub": "alice", "iat": (NOW - 60) as f64 + 0.5,
                   "exp": (NOW + 600) as f64 + 0.25, "scope": ["orders:read", "admin"]})
                .to_string(),
        ),
        (
            "revoked-jti",
            2,
            header("ES256", "ec-1"),
            json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": NOW, "exp": NOW + 60, "jti": "revoked-jti"})
                .to_string(),
        ),
        (
            "revoked-subject",
            4,
            header("EdDSA", "ed-1"),
            json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "mallory", "iat": NOW - 900, "exp": NOW + 60})
                .to_string(),
        ),
        (
            "crit",
            0,
            r#"{"alg":"RS256","kid":"rsa-1","crit":["b64"],"b64":false}"#.into(),
            claims.to_string(),
        ),
        (
            "dup-alg",
            0,
            r#"{"alg":"none","alg":"RS256","kid":"rsa-1"}"#.into(),
            claims.to_string(),
        ),
        (
            "unicode-escapes",
            0,
            r#"{"alg":"RS\u0032\u0035\u0036","kid":"rsa-1"}"#.into(),
            r#"{"iss":"https:\/\/auth.example.com","aud":"orders-api","sub":"al\u0069ce","iat":1799999940,"exp":1800000600,"scope":"orders:read"}"#.into(),
        ),
    ];
    for (name, signer, h, c) in &resigned {
        for req in [0u8, 3] {
            t.add(
                &format!("resign-{name}"),
                cat(&[&[2, *signer, req], h.as_bytes(), &[0], c.as_bytes()]),
            );
        }
    }
    for (i, fill) in [0u8, 1, 7, 0x55, 0xaa, 0xff].iter().enumerate() {
        t.add(&format!("structured-{i}"), cat(&[&[1], &[*fill; 96]]));
    }

    // === jwks ===
    let mut t = corpus.target("jwks");
    let all = json!({"keys": [k.rsa.jwk, k.rsa2.jwk, k.ec256.jwk, k.ec384.jwk, k.ed.jwk]});
    t.add("all", cat(&[&[0], all.to_string().as_bytes()]));
    for (name, jwk) in [
        ("rsa", &k.rsa.jwk),
        ("ec256", &k.ec256.jwk),
        ("ec384", &k.ec384.jwk),
        ("ed", &k.ed.jwk),
    ] {
        t.add(
            name,
            cat(&[&[0], json!({"keys": [jwk]}).to_string().as_bytes()]),
        );
        let mut with_alg = jwk.clone();
        with_alg["alg"] = json!("HS256");
        t.add(
            &format!("{name}-wrong-alg"),
            cat(&[&[0], json!({"keys": [with_alg]}).to_string().as_bytes()]),
        );
    }
    let mut enc = k.rsa.jwk.clone();
    enc["use"] = json!("enc");
    let mut private = k.ec256.jwk.clone();
    private["d"] = json!("AAAA");
    for (name, doc) in [
        ("enc-only", json!({"keys": [enc]})),
        ("private", json!({"keys": [private]})),
        (
            "oct",
            json!({"keys": [{"kty": "oct", "k": URL_SAFE_NO_PAD.encode(fixture::HMAC_SECRET)}]}),
        ),
        (
            "p521",
            json!({"keys": [{"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"}]}),
        ),
        (
            "x25519",
            json!({"keys": [{"kty": "OKP", "crv": "X25519", "x": "AA"}]}),
        ),
        ("empty", json!({"keys": []})),
        ("not-jwks", json!({"kty": "RSA"})),
        (
            "bad-n",
            json!({"keys": [{"kty": "RSA", "n": "!!", "e": "AQAB"}]}),
        ),
    ] {
        t.add(name, cat(&[&[0], doc.to_string().as_bytes()]));
    }
    t.add(
        "pem",
        cat(&[
            &[0],
            k.rsa.public_pem.as_deref().unwrap_or_default().as_bytes(),
        ]),
    );
    t.add("hmac-secret", cat(&[&[1], fixture::HMAC_SECRET]));
    t.add(
        "hmac-oct",
        cat(&[
            &[1],
            json!({"keys": [{"kty": "oct", "k": URL_SAFE_NO_PAD.encode(fixture::HMAC_SECRET)}]})
                .to_string()
                .as_bytes(),
        ]),
    );
    let dev_pem =
        std::fs::read(repo.join("examples/quickstart/dev-public.pem")).unwrap_or_default();
    t.add("quickstart-pem", cat(&[&[0], &dev_pem]));

    // === manifest ===
    let mut t = corpus.target("manifest");
    let read = |p: &str| std::fs::read_to_string(repo.join(p)).unwrap_or_default();
    let qs_policy = read("examples/quickstart/policy.yaml");
    let qs_route = read("examples/quickstart/route.yaml");
    let idp = read("examples/identity-provider/policy.yaml");
    t.add("quickstart-policy", &qs_policy);
    t.add("quickstart-route", &qs_route);
    t.add("identity-provider", &idp);
    t.add("quickstart-both", format!("{qs_policy}\n---\n{qs_route}"));
    let fixture_yaml = serde_yaml::to_string(&fixture::policy()).expect("yaml");
    let secret_yaml = serde_yaml::to_string(&fixture::hmac_secret()).expect("yaml");
    let route_yaml = serde_yaml::to_string(&fixture::orders_route()).expect("yaml");
    t.add(
        "fixture",
        format!("{fixture_yaml}---\n{secret_yaml}---\n{route_yaml}"),
    );
    t.add(
        "bad-version",
        qs_route.replace("portcullis.dev/v1alpha1", "portcullis.dev/v1"),
    );
    t.add(
        "no-name",
        "apiVersion: portcullis.dev/v1alpha1\nkind: ApiRoute\nmetadata: {}\nspec: {}\n",
    );
    t.add("not-yaml", "key: [unclosed\n");
    t.add("anchors", "a: &a [1, 2]\nb: *a\n---\n");
    t.add(
        "route-normalization",
        qs_route.replace(
            "  rules:",
            "  pathNormalization: {mergeSlashes: false, escapedSlashes: Decode, semicolons: Keep}\n  headersWithUnderscores: Reject\n  rules:",
        ),
    );

    // === push_frame ===
    let mut t = corpus.target("push_frame");
    let mut sources = SourceSet::default();
    let qs: Vec<Value> = [qs_policy.as_str(), qs_route.as_str()]
        .iter()
        .map(|y| serde_yaml::from_str(y).expect("example parses"))
        .collect();
    sources.upsert(SourceObject::TokenPolicy(
        serde_json::from_value(qs[0].clone()).expect("policy"),
    ));
    sources.upsert(SourceObject::ApiRoute(
        serde_json::from_value(qs[1].clone()).expect("route"),
    ));
    sources.upsert(SourceObject::TokenPolicy(fixture::policy()));
    sources.upsert(SourceObject::Secret(fixture::hmac_secret()));
    sources.upsert(SourceObject::ApiRoute(fixture::orders_route()));
    sources.upsert(SourceObject::RemoteKeys(RemoteKeys {
        url: "https://auth.example.com/realms/shop/protocol/openid-connect/certs".into(),
        jwks: all.clone(),
    }));
    let line = |m: &ServerMessage| {
        let mut v = serde_json::to_vec(m).expect("encode");
        v.push(b'\n');
        v
    };
    let full = line(&ServerMessage::Full {
        version: 1,
        sources: sources.clone(),
    });
    let mut next = sources.clone();
    let mut revoked = fixture::policy();
    revoked.spec.revocations.push(portcullis_api::Revocation {
        jti: Some("jti-1".into()),
        ..Default::default()
    });
    next.upsert(SourceObject::TokenPolicy(revoked));
    let delta_rev = line(&ServerMessage::Delta {
        from: 1,
        version: 2,
        changes: sources.diff(&next),
    });
    let mut third = next.clone();
    third
        .objects
        .retain(|k, _| !k.starts_with("ApiRoute/default/"));
    let delta_del = line(&ServerMessage::Delta {
        from: 2,
        version: 3,
        changes: next.diff(&third),
    });
    let heartbeat = line(&ServerMessage::Heartbeat { version: 3 });
    let stray = line(&ServerMessage::Delta {
        from: 7,
        version: 9,
        changes: Changes {
            revocations: vec![RevocationEdit {
                policy: portcullis_api::push::ObjectKey {
                    kind: "TokenPolicy".into(),
                    namespace: "nope".into(),
                    name: "missing".into(),
                },
                generation: Some(2),
                resource_version: None,
                added: vec![],
                removed: vec![],
            }],
            ..Default::default()
        },
    });
    t.add("full", &full);
    t.add("full-delta-rev", cat(&[&full, &delta_rev]));
    t.add(
        "full-deltas-heartbeat",
        cat(&[&full, &delta_rev, &delta_del, &heartbeat]),
    );
    t.add("stale-full-after", cat(&[&full, &delta_rev, &full]));
    t.add("out-of-sync", cat(&[&full, &stray]));
    t.add("heartbeat", &heartbeat);
    t.add("partial-line", &full[..full.len() / 2]);

    // === quota_ledger ===
    let mut t = corpus.target("quota_ledger");
    let lease = |id: u64, consumer: &str, shape: &str, limit: u64, need: u64, want: u64| {
        format!(
            "{{\"type\":\"lease\",\"id\":{id},\"quota\":\"shop/llm/daily\",\"consumer\":\"{consumer}\",\"window\":1799990000,{shape},\"limit\":{limit},\"need\":{need},\"want\":{want}}}\n"
        )
    };
    let budget = "\"kind\":\"budget\",\"end\":1800086400";
    let bucket = "\"kind\":\"bucket\",\"rate\":10.0";
    let release = |consumer: &str, unused: u64, over: u64| {
        format!(
            "{{\"type\":\"release\",\"quota\":\"shop/llm/daily\",\"consumer\":\"{consumer}\",\"window\":1799990000,\"unused\":{unused},\"over\":{over},\"end\":1800086400,\"limit\":1000}}\n"
        )
    };
    let mut race = String::new();
    for i in 0..12 {
        race.push_str(&lease(i, "alice", budget, 1000, 60, 200));
        if i % 3 == 2 {
            race.push_str(&release("alice", 50, 0));
        }
    }
    t.add("budget-race", &race);
    t.add(
        "bucket",
        [
            lease(1, "bob", bucket, 20, 1, 15),
            lease(2, "bob", bucket, 20, 1, 15),
        ]
        .concat(),
    );
    t.add(
        "extremes",
        [
            lease(1, "x", budget, u64::MAX, u64::MAX, u64::MAX),
            lease(2, "x", budget, u64::MAX, 1, u64::MAX),
            release("x", u64::MAX, u64::MAX),
        ]
        .concat(),
    );

    // === identity_event === (mode byte, then a token or `header\0claims` to be signed)
    let mut t = corpus.target("identity_event");
    let logout = json!({
        "iss": ISSUER, "aud": "gw", "iat": NOW - 5, "exp": NOW + 115, "jti": "l-1",
        "sub": "alice", "sid": "s-1",
        "events": {"http://schemas.openid.net/event/backchannel-logout": {}},
    });
    let signed = |mode: u8, header: Value, claims: &Value| {
        let mut v = vec![mode];
        v.extend_from_slice(header.to_string().as_bytes());
        v.push(0);
        v.extend_from_slice(claims.to_string().as_bytes());
        v
    };
    let rsa_kid = fixture::keys().rsa.kid.clone();
    t.add(
        "logout-valid",
        signed(
            2,
            json!({"alg": "RS256", "kid": rsa_kid, "typ": "logout+jwt"}),
            &logout,
        ),
    );
    let mut with_nonce = logout.clone();
    with_nonce["nonce"] = json!("n");
    t.add(
        "logout-nonce",
        signed(
            2,
            json!({"alg": "RS256", "kid": rsa_kid, "typ": "logout+jwt"}),
            &with_nonce,
        ),
    );
    let set = json!({
        "iss": "https://tx.example.com", "aud": "gw", "iat": NOW - 5, "jti": "set-1",
        "sub_id": {"format": "complex", "user": {"format": "iss_sub", "iss": ISSUER, "sub": "bob"},
                   "session": {"format": "opaque", "id": "s-9"}},
        "events": {"https://schemas.openid.net/secevent/caep/event-type/session-revoked": {}},
    });
    t.add(
        "set-session-revoked",
        signed(
            3,
            json!({"alg": "RS256", "kid": rsa_kid, "typ": "secevent+jwt"}),
            &set,
        ),
    );
    let mut email = set.clone();
    email["sub_id"] = json!({"format": "email", "email": "carol@example.com"});
    email["events"] =
        json!({"https://schemas.openid.net/secevent/risc/event-type/account-disabled": {}});
    t.add(
        "set-email",
        signed(
            3,
            json!({"alg": "RS256", "kid": rsa_kid, "typ": "secevent+jwt"}),
            &email,
        ),
    );
    let mut raw = vec![0u8];
    raw.extend_from_slice(b"eyJhbGciOiJub25lIn0.eyJpc3MiOiJ4In0.");
    t.add("logout-alg-none", raw);

    println!("seeds written under {}", corpus.root.display());
}
