//! What a backend must not get from a client, and what a client must not get from a
//! backend: hop-by-hop headers, override headers, client-address headers from untrusted
//! peers, underscore spellings and client copies of the claim headers.

use http::header::{self, HeaderMap, HeaderName};
use portcullis_policy::UnderscoreHeaderAction;

/// Headers some frameworks honour to change the path or method they act on behind the
/// gateway's back (IIS/Symfony `X-Original-URL`, Spring/Express method overrides, ...).
/// Never forwarded.
fn is_override_header(name: &str) -> bool {
    matches!(
        name,
        "x-original-url"
            | "x-rewrite-url"
            | "x-original-uri"
            | "x-forwarded-uri"
            | "x-forwarded-path"
            | "x-http-method-override"
            | "x-http-method"
            | "x-method-override"
            | "x-original-method"
    )
}

/// Client-address and prefix headers, believed only from a trusted proxy in front.
fn is_peer_header(name: &str) -> bool {
    matches!(
        name,
        "forwarded"
            | "x-real-ip"
            | "x-client-ip"
            | "true-client-ip"
            | "x-cluster-client-ip"
            | "x-forwarded-port"
            | "x-forwarded-prefix"
            | "x-forwarded-server"
    )
}

/// Hop-by-hop headers (RFC 9110 section 7.6.1, plus the old `keep-alive` and
/// `proxy-connection`): they describe one connection and are never forwarded.
fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "proxy-authorization"
            | "keep-alive"
            | "proxy-connection"
    )
}

/// Whether a (lower-case) header name is letters, digits and `-` only. Any other name
/// (`x_user_id`, `x.user.id`) may be read by a CGI-style backend as one of ours.
fn plain_header_name(name: &str) -> bool {
    name.bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Removes what a backend must not get from a client, in one pass over the header names:
/// hop-by-hop headers and those `Connection` names, header names with `_` (dropped, or
/// refused per the route), override headers, client-address headers from untrusted peers,
/// and client copies of the claim headers. Runs before the proxy adds its own headers, so
/// nothing here can remove one of them; `Connection` can never name `Host`,
/// `Content-Length` or `Content-Type`.
pub(super) fn scrub_headers(
    headers: &mut HeaderMap,
    route: &portcullis_policy::RouteInfo,
    peer_trusted: bool,
) -> Result<(), &'static str> {
    // Allocates only when something is to be removed.
    let mut remove: Vec<HeaderName> = Vec::new();
    for name in headers.keys() {
        let n = name.as_str();
        if !plain_header_name(n) {
            if route.underscore_headers == UnderscoreHeaderAction::Reject {
                return Err("header_underscore");
            }
            remove.push(name.clone());
        } else if is_hop_by_hop(n)
            || is_override_header(n)
            || (!peer_trusted && is_peer_header(n))
            || route.forwarded_header_names.contains(name)
        {
            remove.push(name.clone());
        }
    }
    named_in_connection(headers, &mut remove);
    for n in remove {
        headers.remove(n);
    }
    Ok(())
}

/// Adds to `remove` the headers `Connection` names (RFC 9110 section 7.6.1), except
/// `Host`, `Content-Length` and `Content-Type`, which a client must not make the proxy drop.
fn named_in_connection(headers: &HeaderMap, remove: &mut Vec<HeaderName>) {
    for value in headers.get_all(header::CONNECTION) {
        let Ok(value) = value.to_str() else { continue };
        for token in value.split(',') {
            if let Ok(n) = HeaderName::from_bytes(token.trim().as_bytes())
                && !matches!(
                    n,
                    header::HOST | header::CONTENT_LENGTH | header::CONTENT_TYPE
                )
            {
                remove.push(n);
            }
        }
    }
}

/// Removes hop-by-hop headers (RFC 9110 section 7.6.1), including those named in
/// `Connection`, except the ones that frame the message or name its target.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut remove: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_hop_by_hop(n.as_str()))
        .cloned()
        .collect();
    named_in_connection(headers, &mut remove);
    for n in remove {
        headers.remove(n);
    }
}
