//! JWT/JWS decoding and verification through `Snapshot::authorize`.
//!
//! The snapshot (compiled once): issuer `https://auth.example.com` with five real keys
//! inline (RSA x2, EC P-256, EC P-384, Ed25519; RS256 PS256 ES256 ES384 EdDSA), issuer
//! `https://hmac.example.com` with an HMAC secret from a Secret (HS256), clock skew 30 s,
//! max lifetime 1 h, `sub` required, one revocation of each kind, and a route with
//! scope-protected, any-scope, token-only and public rules.
//!
//! Input, by the first byte mod 3:
//! - 0, raw: byte 1 picks the request path, the rest is the token (`Bearer <rest>`).
//! - 1, structured: the rest drives `arbitrary` to build a header and claims (right and
//!   wrong `alg`, `kid`, `crit`, `enc`, duplicate members, times around NOW, audiences,
//!   scopes, revoked values), signs them with a real key or an attacker's key (HS256
//!   keyed with the RSA public key, a foreign RSA key with a spoofed kid), then applies
//!   byte and segment mutations to the signed token.
//! - 2, re-signed JSON: byte 1 picks the signer, byte 2 the path, the rest is
//!   `header JSON \0 claims JSON`, signed as given: the JSON parsers see fuzzed input
//!   behind a good signature.
//!
//! Invariants: a repeated request gets the same verdict (the verified-token cache never
//! changes one). Allow on a non-public rule only if (a) the token is byte-for-byte one the
//! target signed itself with a key trusted for the token's issuer, unmutated (modes 1-2),
//! or it verifies under one of the real keys (mode 0; an independent check), and (b) an
//! independent model of the claim rules accepts it (issuer, algorithm allow-list, `crit`,
//! audience, exp/nbf/iat with skew, lifetime, required claim, each revocation, scopes),
//! and (c) the forwarded `X-User` is the token's `sub`.
#![no_main]

use std::sync::OnceLock;

use arbitrary::{Arbitrary, Unstructured};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use libfuzzer_sys::fuzz_target;
use portcullis_fuzz::fixture::{self, *};
use portcullis_policy::{AuthorizationHeader, Decision, RequestParts, Snapshot};
use serde_json::{Map, Value, json};

const HOST: &str = "api.example.com";
/// (method, path, rule index): rule 0 needs orders:read, 1 orders:write, 2 is public,
/// 3 needs only a token, 4 one of reports:read / admin.
const REQUESTS: [(&str, &str, usize); 5] = [
    ("GET", "/orders/1", 0),
    ("POST", "/orders/1", 1),
    ("GET", "/health", 2),
    ("GET", "/me", 3),
    ("GET", "/reports/q", 4),
];

fn snapshot() -> &'static Snapshot {
    static S: OnceLock<Snapshot> = OnceLock::new();
    S.get_or_init(|| {
        let s = fixture::build(&[fixture::orders_route()]);
        // The harness must be able to reach Allow at all: a well-formed token of each real
        // key is allowed on /me, and the revoked one is not.
        for (i, signer) in signers().iter().enumerate() {
            let iss = signer.trusted_for.unwrap_or(ISSUER);
            let claims = json!({"iss": iss, "aud": AUDIENCE, "sub": "alice", "iat": NOW - 60,
                                "exp": NOW + 600, "scope": "orders:read"});
            let kid = [
                "rsa-1", "rsa-2", "ec-1", "ec-384", "ed-1", "", "", "", "", "", "rsa-1",
            ][i];
            let header = if kid.is_empty() {
                json!({"alg": alg_name(signer.alg)})
            } else {
                json!({"alg": alg_name(signer.alg), "kid": kid})
            };
            let t = sign(
                i,
                header.to_string().as_bytes(),
                claims.to_string().as_bytes(),
            );
            let h = format!("Bearer {t}");
            let ok = s
                .authorize(&RequestParts::new("GET", HOST, "/me").with_authorization(&h))
                .is_allow();
            let want = signer.trusted_for.is_some() && !signer.revoked;
            assert_eq!(ok, want, "fixture self-check: signer {}", signer.name);
        }
        let h = format!("Bearer {}", revoked_token());
        assert!(
            !s.authorize(&RequestParts::new("GET", HOST, "/me").with_authorization(&h))
                .is_allow()
        );
        s
    })
}

fn alg_name(alg: jsonwebtoken::Algorithm) -> &'static str {
    use jsonwebtoken::Algorithm::*;
    match alg {
        HS256 => "HS256",
        HS384 => "HS384",
        HS512 => "HS512",
        ES256 => "ES256",
        ES384 => "ES384",
        RS256 => "RS256",
        RS384 => "RS384",
        RS512 => "RS512",
        PS256 => "PS256",
        PS384 => "PS384",
        PS512 => "PS512",
        EdDSA => "EdDSA",
        _ => "?",
    }
}

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

/// `b64(header).b64(claims).signature` with signer `i`.
fn sign(i: usize, header: &[u8], claims: &[u8]) -> String {
    let s = &signers()[i];
    let input = format!("{}.{}", b64(header), b64(claims));
    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &s.key, s.alg).expect("signs");
    format!("{input}.{sig}")
}

// === structured input ===

const ALG_NAMES: &[&str] = &[
    "RS256", "PS256", "ES256", "ES384", "EdDSA", "HS256", "HS384", "RS384", "RS512", "PS512",
    "none", "None", "NONE", "nOnE", "ES512", "rs256", "",
];
const KIDS: &[&str] = &[
    "rsa-1", "rsa-2", "ec-1", "ec-384", "ed-1", "hmac", "", "../rsa-1",
];
const ISSUERS: &[&str] = &[
    ISSUER,
    HMAC_ISSUER,
    "https://auth.example.com/",
    "https://AUTH.example.com",
    "https://evil.example.com",
    "",
];
const SCOPES: &[&str] = &[
    "orders:read",
    "orders:write",
    "reports:read",
    "admin",
    "orders:read orders:write",
    "orders:readx",
    "orders",
    " orders:read ",
    "orders:read\tadmin",
    "ORDERS:READ",
    "",
];

#[derive(Arbitrary, Debug)]
enum Alg {
    Signer,
    Named(u8),
    Custom(String),
    Number(i32),
    Missing,
}

#[derive(Arbitrary, Debug)]
enum Kid {
    Signer,
    Named(u8),
    Custom(String),
    Number(i32),
    Missing,
}

#[derive(Arbitrary, Debug)]
struct Header {
    alg: Alg,
    kid: Kid,
    typ: Option<String>,
    crit: bool,
    enc: bool,
    dup_alg: Option<Alg>,
    extra: Option<(String, String)>,
}

#[derive(Arbitrary, Debug)]
enum Time {
    /// NOW + n seconds.
    Rel(i16),
    /// NOW + n + frac/256, as a JSON float.
    RelFloat(i16, u8),
    Abs(i64),
    Float(f64),
    Str,
    Null,
    Missing,
}

#[derive(Arbitrary, Debug)]
enum Aud {
    Right,
    Wrong(String),
    List(Vec<u8>),
    ListWithNumber,
    Number,
    Missing,
}

#[derive(Arbitrary, Debug)]
enum Text {
    Named(u8),
    Custom(String),
    Number(i32),
    Null,
    Missing,
}

#[derive(Arbitrary, Debug)]
enum Scope {
    Named(u8),
    List(Vec<u8>),
    Custom(String),
    Number,
    Missing,
}

#[derive(Arbitrary, Debug)]
struct Claims {
    iss: Text,
    aud: Aud,
    exp: Time,
    nbf: Time,
    iat: Time,
    sub: Text,
    jti: Text,
    scope: Scope,
    scp: Option<Scope>,
    email: Option<String>,
    extra: Vec<(String, i32)>,
    dup: Option<u8>,
}

#[derive(Arbitrary, Debug)]
enum Mutation {
    FlipBit {
        pos: u16,
        bit: u8,
    },
    SetByte {
        pos: u16,
        byte: u8,
    },
    Insert {
        pos: u16,
        byte: u8,
    },
    Delete {
        pos: u16,
    },
    Truncate {
        len: u16,
    },
    Append(String),
    /// Append `=` padding to segment n.
    Pad(u8),
    /// Swap two segments.
    Swap(u8, u8),
    /// Replace the signature by that of another signer over the same input.
    Resign(u8),
    /// Drop the last byte of the signature segment.
    ShortSig,
}

#[derive(Arbitrary, Debug)]
struct Structured {
    signer: u8,
    request: u8,
    header: Header,
    claims: Claims,
    mutations: Vec<Mutation>,
}

fn pick<'a>(list: &[&'a str], i: u8) -> &'a str {
    list[usize::from(i) % list.len()]
}

fn alg_json(a: &Alg, signer_alg: &str) -> Option<Value> {
    match a {
        Alg::Signer => Some(json!(signer_alg)),
        Alg::Named(i) => Some(json!(pick(ALG_NAMES, *i))),
        Alg::Custom(s) => Some(json!(s)),
        Alg::Number(n) => Some(json!(n)),
        Alg::Missing => None,
    }
}

fn text_json(t: &Text, names: &[&str]) -> Option<Value> {
    match t {
        Text::Named(i) => Some(json!(pick(names, *i))),
        Text::Custom(s) => Some(json!(s)),
        Text::Number(n) => Some(json!(n)),
        Text::Null => Some(Value::Null),
        Text::Missing => None,
    }
}

fn time_json(t: &Time) -> Option<Value> {
    match t {
        Time::Rel(n) => Some(json!(NOW + i64::from(*n))),
        Time::RelFloat(n, f) => Some(json!((NOW + i64::from(*n)) as f64 + f64::from(*f) / 256.0)),
        Time::Abs(n) => Some(json!(n)),
        Time::Float(f) => serde_json::Number::from_f64(*f).map(Value::Number),
        Time::Str => Some(json!(NOW.to_string())),
        Time::Null => Some(Value::Null),
        Time::Missing => None,
    }
}

fn scope_json(s: &Scope) -> Option<Value> {
    match s {
        Scope::Named(i) => Some(json!(pick(SCOPES, *i))),
        Scope::List(l) => Some(json!(
            l.iter().map(|i| pick(SCOPES, *i)).collect::<Vec<_>>()
        )),
        Scope::Custom(s) => Some(json!(s)),
        Scope::Number => Some(json!(7)),
        Scope::Missing => None,
    }
}

/// A JSON object written member by member, so duplicates can be made.
fn object(members: &[(String, Value)]) -> String {
    let body: Vec<String> = members
        .iter()
        .map(|(k, v)| format!("{}:{}", Value::String(k.clone()), v))
        .collect();
    format!("{{{}}}", body.join(","))
}

fn build(s: &Structured) -> (usize, String) {
    let si = usize::from(s.signer) % signers().len();
    let signer = &signers()[si];
    let signer_alg = alg_name(signer.alg);
    let mut h: Vec<(String, Value)> = Vec::new();
    if let Some(v) = alg_json(&s.header.alg, signer_alg) {
        h.push(("alg".into(), v));
    }
    let signer_kid = ["rsa-1", "rsa-2", "ec-1", "ec-384", "ed-1"]
        .get(si)
        .copied();
    match &s.header.kid {
        Kid::Signer => {
            if let Some(k) = signer_kid {
                h.push(("kid".into(), json!(k)));
            }
        }
        Kid::Named(i) => h.push(("kid".into(), json!(pick(KIDS, *i)))),
        Kid::Custom(k) => h.push(("kid".into(), json!(k))),
        Kid::Number(n) => h.push(("kid".into(), json!(n))),
        Kid::Missing => {}
    }
    if let Some(t) = &s.header.typ {
        h.push(("typ".into(), json!(t)));
    }
    if s.header.crit {
        h.push(("crit".into(), json!(["exp"])));
    }
    if s.header.enc {
        h.push(("enc".into(), json!("A256GCM")));
    }
    if let Some(a) = &s.header.dup_alg
        && let Some(v) = alg_json(a, signer_alg)
    {
        h.push(("alg".into(), v));
    }
    if let Some((k, v)) = &s.header.extra {
        h.push((k.clone(), json!(v)));
    }

    let c = &s.claims;
    let mut m: Vec<(String, Value)> = Vec::new();
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            m.push((k.into(), v));
        }
    };
    put("iss", text_json(&c.iss, ISSUERS));
    put(
        "aud",
        match &c.aud {
            Aud::Right => Some(json!(AUDIENCE)),
            Aud::Wrong(a) => Some(json!(a)),
            Aud::List(l) => Some(json!(
                l.iter()
                    .map(|i| [AUDIENCE, "other", "ORDERS-API", ""][usize::from(*i) % 4])
                    .collect::<Vec<_>>()
            )),
            Aud::ListWithNumber => Some(json!([AUDIENCE, 1])),
            Aud::Number => Some(json!(1)),
            Aud::Missing => None,
        },
    );
    put("exp", time_json(&c.exp));
    put("nbf", time_json(&c.nbf));
    put("iat", time_json(&c.iat));
    put("sub", text_json(&c.sub, &["alice", REVOKED_SUBJECT, ""]));
    put(
        "jti",
        text_json(&c.jti, &["jti-1", REVOKED_JTI, "sha-revoked"]),
    );
    put("scope", scope_json(&c.scope));
    put("scp", c.scp.as_ref().and_then(scope_json));
    put("email", c.email.as_ref().map(|e| json!(e)));
    for (k, v) in c.extra.iter().take(4) {
        put(k, Some(json!(v)));
    }
    if let Some(d) = c.dup
        && !m.is_empty()
    {
        let (k, v) = m[usize::from(d) % m.len()].clone();
        m.push((k, v));
    }
    let token = sign(si, object(&h).as_bytes(), object(&m).as_bytes());
    (si, token)
}

/// Applies the mutations. Returns the token and what the harness last signed itself: a
/// `Resign` makes a new honestly signed token (by whichever signer it names), which later
/// mutations then change.
fn mutate(
    mut t: Vec<u8>,
    muts: &[Mutation],
    signing_input_len: usize,
    mut origin: (usize, String),
) -> (Vec<u8>, (usize, String)) {
    for m in muts.iter().take(4) {
        let at = |pos: u16, len: usize| usize::from(pos) % len.max(1);
        match m {
            Mutation::FlipBit { pos, bit } if !t.is_empty() => {
                let i = at(*pos, t.len());
                t[i] ^= 1 << (bit % 8);
            }
            Mutation::SetByte { pos, byte } if !t.is_empty() => {
                let i = at(*pos, t.len());
                t[i] = *byte;
            }
            Mutation::Insert { pos, byte } => {
                let i = at(*pos, t.len() + 1);
                t.insert(i, *byte);
            }
            Mutation::Delete { pos } if !t.is_empty() => {
                let i = at(*pos, t.len());
                t.remove(i);
            }
            Mutation::Truncate { len } => t.truncate(usize::from(*len)),
            Mutation::Append(s) => t.extend_from_slice(s.as_bytes()),
            Mutation::Pad(n) => {
                let mut segs: Vec<Vec<u8>> = t.split(|b| *b == b'.').map(<[u8]>::to_vec).collect();
                let i = usize::from(*n) % segs.len();
                segs[i].push(b'=');
                t = segs.join(&b'.');
            }
            Mutation::Swap(a, b) => {
                let mut segs: Vec<Vec<u8>> = t.split(|b| *b == b'.').map(<[u8]>::to_vec).collect();
                let (i, j) = (usize::from(*a) % segs.len(), usize::from(*b) % segs.len());
                segs.swap(i, j);
                t = segs.join(&b'.');
            }
            Mutation::Resign(k) if t.len() >= signing_input_len => {
                let ki = usize::from(*k) % signers().len();
                let s = &signers()[ki];
                if let Ok(sig) = jsonwebtoken::crypto::sign(&t[..signing_input_len], &s.key, s.alg)
                {
                    t.truncate(signing_input_len);
                    t.push(b'.');
                    t.extend_from_slice(sig.as_bytes());
                    if let Ok(text) = std::str::from_utf8(&t) {
                        origin = (ki, text.to_owned());
                    }
                }
            }
            Mutation::ShortSig => {
                t.pop();
            }
            _ => {}
        }
    }
    (t, origin)
}

// === the model of what may be allowed ===

fn numeric(v: &Value) -> Result<i64, String> {
    match v {
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Ok(i)
            } else if let Some(f) = n.as_f64().filter(|f| f.is_finite() && f.abs() < 1e15) {
                Ok(f.floor() as i64)
            } else {
                Err(format!("NumericDate out of range: {n}"))
            }
        }
        other => Err(format!("NumericDate not a number: {other}")),
    }
}

fn decode_object(seg: &str) -> Result<Map<String, Value>, String> {
    let bytes = URL_SAFE_NO_PAD
        .decode(seg)
        .map_err(|e| format!("segment is not base64url: {e}"))?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        other => Err(format!("segment is not a JSON object: {other:?}")),
    }
}

/// Whether the token verifies under one of the real keys with its header's algorithm.
fn verifies_under_real_key(token: &str) -> Result<(), String> {
    let parts: Vec<&str> = token.split('.').collect();
    let [h, p, s] = parts[..] else {
        return Err("not three segments".into());
    };
    let header = decode_object(h)?;
    let alg = header.get("alg").and_then(Value::as_str).unwrap_or("");
    let input = format!("{h}.{p}");
    for (name, _iss, key, algs) in verifiers() {
        for a in algs {
            if alg_name(*a) == alg
                && jsonwebtoken::crypto::verify(s, input.as_bytes(), key, *a).unwrap_or(false)
            {
                let _ = name;
                return Ok(());
            }
        }
    }
    Err(format!(
        "signature verifies under no real key (alg {alg:?})"
    ))
}

/// The claim rules of the fixture policy and route, written from the policy text.
fn model_allows(token: &str, rule: usize) -> Result<(), String> {
    let parts: Vec<&str> = token.split('.').collect();
    let [h, p, _] = parts[..] else {
        return Err("not three segments".into());
    };
    let header = decode_object(h)?;
    let claims = decode_object(p)?;
    if header.contains_key("crit") || header.contains_key("enc") {
        return Err("crit or enc header".into());
    }
    // RFC 9449 section 7.1: a DPoP-bound token is never accepted as Bearer.
    if claims.get("cnf").is_some_and(|c| c.get("jkt").is_some()) {
        return Err("a DPoP-bound token sent as Bearer".into());
    }
    let alg = header.get("alg").and_then(Value::as_str).ok_or("no alg")?;
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.as_str()),
        Some(_) => return Err("kid not a string".into()),
    };
    let iss = claims.get("iss").and_then(Value::as_str).ok_or("no iss")?;
    if !allowed_algs(iss).contains(&alg) {
        return Err(format!("alg {alg:?} not allowed for issuer {iss:?}"));
    }
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => a == AUDIENCE,
        Some(Value::Array(l)) => l.iter().all(Value::is_string) && l.iter().any(|a| a == AUDIENCE),
        _ => false,
    };
    if !aud_ok {
        return Err("audience".into());
    }
    let exp = numeric(claims.get("exp").ok_or("no exp")?)?;
    let get_time = |k: &str| claims.get(k).map(numeric).transpose();
    let nbf = get_time("nbf")?;
    let iat = get_time("iat")?.ok_or("no iat under maxTokenLifetime")?;
    if i128::from(NOW) - i128::from(SKEW) >= i128::from(exp) {
        return Err(format!("expired: exp {exp}"));
    }
    if nbf.is_some_and(|n| i128::from(n) > i128::from(NOW) + i128::from(SKEW)) {
        return Err("nbf in the future".into());
    }
    if i128::from(iat) > i128::from(NOW) + i128::from(SKEW) {
        return Err("iat in the future".into());
    }
    if i128::from(exp) - i128::from(iat) > i128::from(MAX_LIFETIME) {
        return Err("lifetime over maxTokenLifetime".into());
    }
    let sub = match claims.get("sub") {
        Some(Value::String(s)) => s.as_str(),
        other => return Err(format!("sub required, found {other:?}")),
    };
    match claims.get("jti") {
        None => {}
        Some(Value::String(j)) if j != REVOKED_JTI => {}
        other => return Err(format!("jti {other:?}")),
    }
    if kid == Some(REVOKED_KID) {
        return Err("revoked kid".into());
    }
    if sub == REVOKED_SUBJECT && iat < REVOKED_SUBJECT_BEFORE {
        return Err("revoked subject".into());
    }
    if token_sha256(token) == token_sha256(revoked_token()) {
        return Err("revoked token".into());
    }
    let scopes: Vec<&str> = match claims.get("scope") {
        None => Vec::new(),
        Some(Value::String(s)) => s.split(' ').filter(|s| !s.is_empty()).collect(),
        Some(Value::Array(l)) => l
            .iter()
            .map(|v| v.as_str().ok_or("scope array member not a string"))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err("scope not a string or array".into()),
    };
    let has = |s: &str| scopes.contains(&s);
    let ok = match rule {
        0 => has("orders:read"),
        1 => has("orders:write"),
        3 => true,
        4 => has("reports:read") || has("admin"),
        _ => false,
    };
    if !ok {
        return Err(format!("scopes {scopes:?} do not satisfy rule {rule}"));
    }
    Ok(())
}

fn sub_of(token: &str) -> Option<String> {
    let p = token.split('.').nth(1)?;
    decode_object(p)
        .ok()?
        .get("sub")?
        .as_str()
        .map(str::to_owned)
}

enum Origin {
    /// Bytes from the input.
    Raw,
    /// Signed here by signer `.0` as `.1` (before mutations).
    Signed(usize, String),
}

fn check(token: &[u8], req_index: u8, origin: Origin) {
    let s = snapshot();
    let (method, path, rule) = REQUESTS[usize::from(req_index) % REQUESTS.len()];
    let mut header = b"Bearer ".to_vec();
    header.extend_from_slice(token);
    let mut req = RequestParts::new(method, HOST, path);
    req.credentials.authorization = AuthorizationHeader::One(&header);
    let first = s.authorize(&req);
    let second = s.authorize(&req);
    let verdict = |d: &Decision<'_>| match d {
        Decision::Allow(_) => "allow".to_owned(),
        Decision::Deny(d) => format!("deny {:?}", d.reason),
        Decision::Pending(_) => "introspect".to_owned(),
    };
    assert_eq!(
        verdict(&first),
        verdict(&second),
        "the cache changed the verdict"
    );
    let Decision::Allow(allow) = first else {
        return;
    };
    assert_eq!(allow.route.rule, rule, "wrong rule for {method} {path}");
    if rule == 2 {
        assert!(allow.principal.is_none(), "public rule with a token");
        return;
    }
    let token = std::str::from_utf8(token).expect("an allowed token is UTF-8");
    match &origin {
        Origin::Raw => {
            if let Err(e) = verifies_under_real_key(token) {
                panic!("allowed a token that no real key signed: {e}: {token}");
            }
        }
        Origin::Signed(i, signed) => {
            let signer = &signers()[*i];
            assert_eq!(
                token, signed,
                "allowed a token that is not byte-for-byte the one signed"
            );
            assert!(
                signer.trusted_for.is_some() && !signer.revoked,
                "allowed a token signed by {}",
                signer.name
            );
            let p = token.split('.').nth(1).unwrap_or("");
            let iss = decode_object(p)
                .ok()
                .and_then(|c| c.get("iss").and_then(Value::as_str).map(str::to_owned));
            assert_eq!(
                iss.as_deref(),
                signer.trusted_for,
                "allowed a token signed by {} for another issuer",
                signer.name
            );
            let h = token.split('.').next().unwrap_or("");
            let alg = decode_object(h)
                .ok()
                .and_then(|c| c.get("alg").and_then(Value::as_str).map(str::to_owned));
            assert_eq!(alg.as_deref(), Some(alg_name(signer.alg)), "alg confusion");
        }
    }
    if let Err(e) = model_allows(token, rule) {
        panic!("allowed a token the policy refuses: {e}: {token}");
    }
    let sub = sub_of(token).unwrap_or_default();
    let x_user = allow
        .headers()
        .iter()
        .find(|(n, _)| n.as_str() == "x-user")
        .map(|(_, v)| v.as_bytes().to_vec());
    if http_value_ok(&sub) {
        assert_eq!(x_user.as_deref(), Some(sub.as_bytes()), "X-User is not sub");
    } else {
        assert!(x_user.is_none(), "X-User forwarded from an invalid value");
    }
}

fn http_value_ok(s: &str) -> bool {
    s.bytes().all(|b| (b >= 0x20 && b != 0x7f) || b == b'\t')
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            let Some((&req, token)) = rest.split_first() else {
                return;
            };
            check(token, req, Origin::Raw);
        }
        1 => {
            let mut u = Unstructured::new(rest);
            let Ok(s) = Structured::arbitrary(&mut u) else {
                return;
            };
            let (si, signed) = build(&s);
            let input_len = signed.rfind('.').unwrap_or(0);
            let (token, (si, signed)) = mutate(
                signed.clone().into_bytes(),
                &s.mutations,
                input_len,
                (si, signed),
            );
            check(&token, s.request, Origin::Signed(si, signed));
        }
        _ => {
            let [signer, req, json @ ..] = rest else {
                return;
            };
            let si = usize::from(*signer) % signers().len();
            let (h, c) = match json.iter().position(|b| *b == 0) {
                Some(i) => (&json[..i], &json[i + 1..]),
                None => (json, &b"{}"[..]),
            };
            let token = sign(si, h, c);
            check(token.as_bytes(), *req, Origin::Signed(si, token.clone()));
        }
    }
});
