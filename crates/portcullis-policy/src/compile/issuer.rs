//! The JWT side of one issuer: its algorithms, its key set (inline, from a Secret, or
//! fetched from a `jwks.uri` / discovery source), the refetch it allows, and the token
//! types it accepts.

use std::hash::{Hash, Hasher};

use jsonwebtoken::Algorithm;
use portcullis_api::{IssuerSpec, JwksSource, TokenPolicy, parse_duration};

use super::objects::{Named, SecretIndex, secret_value};
use super::policy::policy_error;
use super::{CompileError, CompileOptions, CompileReason};
use crate::decision::Refetch;
use crate::keys::{KeySet, parse_algorithm};
use crate::snapshot::CompiledIssuer;

/// One issuer with `jwks`, and what compiling it needs.
pub(super) struct JwtIssuer<'a> {
    pub(super) options: &'a CompileOptions,
    pub(super) policy: &'a TokenPolicy,
    /// `spec.issuers[i]`.
    pub(super) at: &'a str,
    pub(super) issuer: &'a IssuerSpec,
    pub(super) jwks: &'a JwksSource,
    pub(super) secrets: &'a SecretIndex<'a>,
}

impl JwtIssuer<'_> {
    fn error(
        &self,
        path: impl Into<String>,
        reason: CompileReason,
        message: impl Into<String>,
    ) -> CompileError {
        policy_error(self.policy, path, reason, message)
    }

    /// The compiled issuer, or `None` with its errors pushed to `errs`. Key material is
    /// hashed into `trust`.
    pub(super) fn compile(
        &self,
        trust: &mut impl Hasher,
        errs: &mut Vec<CompileError>,
    ) -> Option<CompiledIssuer> {
        let (at, iss, jwks) = (self.at, self.issuer, self.jwks);
        let algorithms = self.algorithms(errs)?;
        if iss.audiences.is_empty() {
            errs.push(self.error(
                format!("{at}.audiences"),
                CompileReason::Invalid,
                "at least one audience is required",
            ));
        }
        let ns = self.policy.ns();
        let remote = crate::remote::source_of(iss, |name, key| {
            self.secrets
                .get(&(ns.clone(), name.to_owned()))
                .and_then(|s| secret_value(s, key))
        })
        .map(|(key, url, ..)| (key, url));
        let hmac = algorithms
            .iter()
            .any(|a| matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512));
        let mut keys = match self.keys(hmac, remote.as_ref(), trust) {
            Ok(k) => k,
            Err(e) => {
                errs.push(e);
                return None;
            }
        };
        if let Err(e) = keys.retain_fitting(&algorithms) {
            errs.push(self.error(
                format!("{at}.jwks"),
                CompileReason::InvalidKeys,
                e.to_string(),
            ));
            return None;
        }
        let refetch = remote.map(|(key, _)| {
            let (min, _) = crate::remote::refresh_bounds(jwks);
            Refetch {
                url: key.into(),
                issuer: iss.issuer.as_str().into(),
                min_interval: min,
            }
        });
        for (field, value) in [
            ("minRefreshInterval", &jwks.min_refresh_interval),
            ("maxRefreshInterval", &jwks.max_refresh_interval),
        ] {
            if let Some(Err(e)) = value.as_deref().map(parse_duration) {
                errs.push(self.error(
                    format!("{at}.jwks.{field}"),
                    CompileReason::InvalidDuration,
                    e,
                ));
            }
        }
        let accepted_types = match self.accepted_types() {
            Ok(t) => t,
            Err(e) => {
                errs.push(e);
                return None;
            }
        };
        Some(CompiledIssuer {
            audiences: iss.audiences.clone(),
            algorithms,
            keys,
            refetch,
            accepted_types,
            require_type: iss.require_type.unwrap_or(false),
        })
    }

    /// `algorithms`: known, never `none`, at least one.
    fn algorithms(&self, errs: &mut Vec<CompileError>) -> Option<Vec<Algorithm>> {
        let at = self.at;
        let mut algorithms = Vec::new();
        for (j, a) in self.issuer.algorithms.iter().enumerate() {
            match parse_algorithm(a) {
                Some(alg) => algorithms.push(alg),
                None if a.eq_ignore_ascii_case("none") => errs.push(self.error(
                    format!("{at}.algorithms[{j}]"),
                    CompileReason::InvalidAlgorithm,
                    "algorithm none is never allowed: tokens must be signed",
                )),
                None => errs.push(self.error(
                    format!("{at}.algorithms[{j}]"),
                    CompileReason::InvalidAlgorithm,
                    format!(
                        "unknown algorithm {a:?}; use one of {}",
                        portcullis_api::SUPPORTED_ALGORITHMS.join(", ")
                    ),
                )),
            }
        }
        if algorithms.is_empty() {
            errs.push(self.error(
                format!("{at}.algorithms"),
                CompileReason::InvalidAlgorithm,
                "at least one signature algorithm is required",
            ));
            return None;
        }
        Some(algorithms)
    }

    /// The key set from exactly one of inline, secretRef, or a fetched source (`remote`:
    /// its key and URL).
    // Compile errors are the cold path; boxing them would only obscure the code.
    #[allow(clippy::result_large_err)]
    fn keys(
        &self,
        hmac: bool,
        remote: Option<&(String, String)>,
        trust: &mut impl Hasher,
    ) -> Result<KeySet, CompileError> {
        let (at, jwks) = (self.at, self.jwks);
        let ns = self.policy.ns();
        match (&jwks.inline, &jwks.secret_ref, remote) {
            (Some(_), None, None) if hmac => Err(self.error(
                format!("{at}.algorithms"),
                CompileReason::InvalidAlgorithm,
                "HS* algorithms need a shared secret from a Secret (jwks.secretRef), not inline keys",
            )),
            (Some(inline), None, None) => serde_json::to_value(inline)
                .map_err(|e| e.to_string())
                .and_then(|v| KeySet::from_jwks(&v, false).map_err(|e| e.to_string()))
                .map_err(|e| {
                    self.error(format!("{at}.jwks.inline"), CompileReason::InvalidKeys, e)
                }),
            (None, Some(sref), None) => {
                let Some(secret) = self.secrets.get(&(ns.clone(), sref.name.clone())) else {
                    return Err(self.error(
                        format!("{at}.jwks.secretRef"),
                        CompileReason::SecretNotFound,
                        format!("Secret {ns}/{} not found", sref.name),
                    ));
                };
                let Some(bytes) = secret_value(secret, &sref.key) else {
                    return Err(self.error(
                        format!("{at}.jwks.secretRef.key"),
                        CompileReason::SecretNotFound,
                        format!("Secret {ns}/{} has no key {:?}", sref.name, sref.key),
                    ));
                };
                bytes.hash(trust);
                KeySet::from_secret_data(&bytes).map_err(|e| {
                    self.error(
                        format!("{at}.jwks.secretRef"),
                        CompileReason::InvalidKeys,
                        format!("Secret {ns}/{} key {:?}: {e}", sref.name, sref.key),
                    )
                })
            }
            (None, None, Some((key, url))) => {
                let field = if jwks.uri.is_some() {
                    format!("{at}.jwks.uri")
                } else {
                    format!("{at}.jwks.discovery")
                };
                match self.options.remote_jwks.get(key) {
                    // A first fetch under way is a wait, not a fault.
                    None if self.options.pending_jwks.contains(key) => Err(self.error(
                        field,
                        CompileReason::KeysPending,
                        format!(
                            "the key set from {url} has not been fetched yet; its first fetch is under way"
                        ),
                    )),
                    None => Err(self.error(
                        field,
                        CompileReason::KeysNotFetched,
                        format!("the key set from {url} has not been fetched yet"),
                    )),
                    Some(doc) => {
                        doc.to_string().hash(trust);
                        KeySet::from_remote_jwks(doc).map_err(|e| {
                            self.error(field, CompileReason::InvalidKeys, format!("{url}: {e}"))
                        })
                    }
                }
            }
            _ => Err(self.error(
                format!("{at}.jwks"),
                CompileReason::Invalid,
                "exactly one of inline, secretRef, uri or discovery: true is required",
            )),
        }
    }

    /// The `typ` values the issuer accepts (`acceptedTypes`, default `[JWT, at+jwt]`),
    /// lowercase and without `application/`. The types that are never access tokens are
    /// refused here too (the CRD's CEL rule refuses them at apply time; this catches
    /// manifests that were not validated).
    // Compile errors are the cold path; boxing them would only obscure the code.
    #[allow(clippy::result_large_err)]
    fn accepted_types(&self) -> Result<Box<[Box<str>]>, CompileError> {
        let (at, iss) = (self.at, self.issuer);
        let Some(list) = &iss.accepted_types else {
            return Ok(crate::token::DEFAULT_ACCEPTED_TYPES
                .iter()
                .map(|t| Box::from(*t))
                .collect());
        };
        let mut out = Vec::with_capacity(list.len());
        for (j, t) in list.iter().enumerate() {
            let name = crate::token::media_type_name(t).to_ascii_lowercase();
            if name.is_empty() || crate::token::NEVER_ACCEPTED_TYPES.contains(&name.as_str()) {
                return Err(self.error(
                    format!("{at}.acceptedTypes[{j}]"),
                    CompileReason::Invalid,
                    format!(
                        "{t:?} cannot be accepted: logout tokens, security event tokens and DPoP proofs are never access tokens"
                    ),
                ));
            }
            out.push(name.into_boxed_str());
        }
        if out.is_empty() && iss.require_type == Some(true) {
            return Err(self.error(
                format!("{at}.acceptedTypes"),
                CompileReason::Invalid,
                "requireType with an empty acceptedTypes would refuse every token",
            ));
        }
        Ok(out.into_boxed_slice())
    }
}
