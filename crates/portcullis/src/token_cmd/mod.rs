//! `portcullis token mint` and `portcullis token inspect`: development tools for bearer
//! tokens.
//!
//! `mint` signs a JWT with a private key that is marked DEV-ONLY (the quickstart key in
//! `examples/quickstart/`), so people can try routes and policies without an identity
//! provider. It refuses any other key unless `--force`: minting by hand with a real
//! issuer's key would bypass that issuer.
//!
//! `inspect` decodes a token WITHOUT verifying it, to answer "what is in this token and
//! when does it expire". It prints the token's fingerprint (as the proxy logs it), never
//! the token itself.
//!
//! `thumbprint` prints the RFC 7638 JWK thumbprint of public keys (a JWKS, a JWK or a PEM),
//! the value a `jwkThumbprint` revocation names a key by, kid or no kid.
//!
//! One file per subcommand: `mint.rs`, `inspect.rs`, `thumbprint.rs`.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;

mod inspect;
mod mint;
#[cfg(test)]
mod tests;
mod thumbprint;

pub use inspect::{InspectArgs, inspect_token};
#[cfg(test)]
pub use mint::mint_token;
pub use mint::{MintArgs, mint_tokens};
pub use thumbprint::{ThumbprintArgs, key_thumbprints};

use inspect::read_stdin;

/// `portcullis token ...`
#[derive(clap::Subcommand, Debug)]
#[allow(clippy::large_enum_variant)] // parsed once per process; boxing buys nothing
pub enum TokenCommand {
    /// Sign a JWT with a DEV-ONLY private key and print it (and nothing else) on stdout.
    ///
    /// The defaults (--iss, --aud, --kid, --alg) match examples/quickstart, e.g.:
    /// portcullis token mint --key examples/quickstart/dev-private.pem --sub alice
    /// --scope orders:read --ttl 5m
    Mint(MintArgs),
    /// Decode a token WITHOUT verifying it: fingerprint, header, claims, time to expiry.
    ///
    /// The token itself is never printed.
    Inspect(InspectArgs),
    /// Print the RFC 7638 JWK thumbprint of each key in a JWKS, a JWK or a PEM public key:
    /// what `portcullis revoke --jwk-thumbprint` and a TokenPolicy's `jwkThumbprint`
    /// revocation name a key by (a PEM key has no kid).
    Thumbprint(ThumbprintArgs),
}

/// Runs a `token` subcommand.
pub fn run(cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Mint(args) => {
            use std::io::Write;
            let tokens = mint_tokens(&args, unix_now())?;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            for token in tokens {
                writeln!(out, "{token}")?;
            }
            out.flush()?;
        }
        TokenCommand::Inspect(args) => {
            let input = match args.token.as_deref() {
                None | Some("-") => read_stdin()?,
                Some(t) => t.to_owned(),
            };
            print!("{}", inspect_token(&input, unix_now())?);
        }
        TokenCommand::Thumbprint(args) => {
            let text = match args.file.as_deref() {
                None => read_stdin()?,
                Some(p) if p == Path::new("-") => read_stdin()?,
                Some(p) => std::fs::read_to_string(p)
                    .with_context(|| format!("reading {}", p.display()))?,
            };
            for (thumbprint, kty, kid) in key_thumbprints(&text)? {
                match kid {
                    Some(kid) => println!("{thumbprint}  {kty}  kid={kid}"),
                    None => println!("{thumbprint}  {kty}"),
                }
            }
        }
    }
    Ok(())
}

/// Whole seconds of `d`, saturating.
pub(crate) fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// Seconds since the epoch, now.
pub(crate) fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, secs)
}
