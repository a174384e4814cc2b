//! `portcullis token thumbprint`: RFC 7638 thumbprints of public keys.

use std::path::PathBuf;

/// Arguments of `portcullis token thumbprint`.
#[derive(clap::Args, Debug, Clone)]
pub struct ThumbprintArgs {
    /// A JWKS or JWK (JSON) or a PEM public key; `-` (the default) reads stdin.
    #[arg(value_name = "FILE")]
    pub file: Option<PathBuf>,
}

/// RFC 7638 thumbprints (SHA-256, base64url) of the public keys in `text`: a JWKS, one
/// JWK, or a PEM public key, as `(thumbprint, kty, kid)`, computed by the same code the
/// proxy matches `jwkThumbprint` revocations with.
pub fn key_thumbprints(text: &str) -> anyhow::Result<Vec<(String, String, Option<String>)>> {
    Ok(portcullis_policy::key_thumbprints(text)?
        .into_iter()
        .map(|k| (k.thumbprint, k.kty.to_owned(), k.kid))
        .collect())
}
