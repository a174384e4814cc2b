//! Test support: signing keys of every kind Portcullis verifies, generated fresh in memory
//! (aws-lc-rs), with their public JWKs and PEMs, and token minting, including tokens no
//! honest issuer would mint. For tests and benches only.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{self, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

pub mod fixtures;

/// base64url without padding, as JOSE writes it.
pub fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A PEM block.
pub fn pem(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).expect("base64 is ASCII"))
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// A signing key, its public JWK and (for RSA) its public PEM.
pub struct TestKey {
    /// The algorithm it signs with.
    pub alg: Algorithm,
    /// Its key ID.
    pub kid: String,
    /// The private key.
    pub encoding: EncodingKey,
    /// The public JWK (with `kid`).
    pub jwk: Value,
    /// The public key as SPKI PEM (RSA only).
    pub public_pem: Option<String>,
}

impl TestKey {
    /// Signs `claims` with this key, its kid in the header.
    pub fn mint(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("test token signs")
    }

    /// Signs arbitrary header and claims JSON (for `crit`, duplicate members, odd `alg`s).
    pub fn mint_raw(&self, header_json: &str, claims_json: &str) -> String {
        let input = format!(
            "{}.{}",
            b64url(header_json.as_bytes()),
            b64url(claims_json.as_bytes())
        );
        let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &self.encoding, self.alg)
            .expect("test token signs");
        format!("{input}.{sig}")
    }
}

/// An RSA 2048 key for RS256.
pub fn rsa(kid: &str) -> TestKey {
    let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
        .expect("RSA key generates");
    let pkcs8 = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der<'_>>::as_der(&kp).expect("PKCS#8 encodes");
    let encoding = EncodingKey::from_rsa_pem(pem("PRIVATE KEY", pkcs8.as_ref()).as_bytes())
        .expect("PEM parses");
    let public = kp.public_key();
    let spki =
        AsDer::<aws_lc_rs::encoding::PublicKeyX509Der<'_>>::as_der(public).expect("SPKI encodes");
    let jwk = json!({
        "kty": "RSA", "kid": kid, "use": "sig",
        "n": b64url(public.modulus().big_endian_without_leading_zero()),
        "e": b64url(public.exponent().big_endian_without_leading_zero()),
    });
    TestKey {
        alg: Algorithm::RS256,
        kid: kid.into(),
        encoding,
        jwk,
        public_pem: Some(pem("PUBLIC KEY", spki.as_ref())),
    }
}

/// An EC key: P-256 for ES256, or P-384 for ES384.
pub fn ec(kid: &str, p384: bool) -> TestKey {
    let alg = if p384 {
        &signature::ECDSA_P384_SHA384_FIXED_SIGNING
    } else {
        &signature::ECDSA_P256_SHA256_FIXED_SIGNING
    };
    let kp = signature::EcdsaKeyPair::generate(alg).expect("EC key generates");
    let pkcs8 = kp.to_pkcs8v1().expect("PKCS#8 encodes");
    let point = kp.public_key().as_ref().to_vec();
    let n = (point.len() - 1) / 2;
    let jwk = json!({
        "kty": "EC", "kid": kid, "crv": if p384 { "P-384" } else { "P-256" },
        "x": b64url(&point[1..1 + n]), "y": b64url(&point[1 + n..]),
    });
    TestKey {
        alg: if p384 {
            Algorithm::ES384
        } else {
            Algorithm::ES256
        },
        kid: kid.into(),
        encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
        jwk,
        public_pem: None,
    }
}

/// An Ed25519 key for EdDSA.
pub fn ed(kid: &str) -> TestKey {
    let kp = signature::Ed25519KeyPair::generate().expect("Ed25519 key generates");
    let pkcs8 = kp.to_pkcs8().expect("PKCS#8 encodes");
    let jwk =
        json!({"kty": "OKP", "kid": kid, "crv": "Ed25519", "x": b64url(kp.public_key().as_ref())});
    TestKey {
        alg: Algorithm::EdDSA,
        kid: kid.into(),
        encoding: EncodingKey::from_ed_der(pkcs8.as_ref()),
        jwk,
        public_pem: None,
    }
}
