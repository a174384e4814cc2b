//! Edge checks: what a request *is* (its method, its one host, its framing) before the
//! gateway decides whether to allow it. Each refusal names its RFC.

use http::StatusCode;
use http::header;

/// What the edge checks settle about a request before any routing.
pub(super) struct Edge {
    /// The one host the request is for (RFC 9112 section 3.2.2, RFC 9113 section 8.3.1).
    pub(super) host: String,
}

/// A refusal from the edge checks: status, metric label, text.
pub(super) type EdgeRefusal = (StatusCode, &'static str, &'static str);

/// The checks that decide what a request *is* before the gateway decides whether to allow
/// it: its method, its one host, and its framing. Each refusal names its RFC.
/// `uri` is the request's target, taken out of `req` by the caller.
pub(super) fn edge_checks(
    req: &http::request::Parts,
    uri: &http::Uri,
) -> Result<Edge, EdgeRefusal> {
    // RFC 9110 section 9.1: methods are case-sensitive and the standard ones are upper
    // case. A backend that folds `delete` into DELETE would act on a method no rule saw.
    if req.method.as_str().bytes().any(|b| b.is_ascii_lowercase()) {
        return Err((
            StatusCode::BAD_REQUEST,
            "method_case",
            "methods must be upper case",
        ));
    }
    let headers = &req.headers;
    let mut hosts = headers.get_all(header::HOST).iter();
    let host_header = match (hosts.next(), hosts.next()) {
        (_, Some(_)) => {
            // RFC 9112 section 3.2: more than one Host field line is a 400.
            return Err((
                StatusCode::BAD_REQUEST,
                "host_duplicate",
                "more than one Host",
            ));
        }
        (Some(v), None) => Some(v.to_str().ok().filter(|h| valid_host(h)).ok_or((
            StatusCode::BAD_REQUEST,
            "host_invalid",
            "invalid Host",
        ))?),
        (None, None) => None,
    };
    let authority = uri.authority().map(|a| a.as_str());
    if let Some(a) = authority
        && !valid_host(a)
    {
        return Err((StatusCode::BAD_REQUEST, "host_invalid", "invalid authority"));
    }
    let host = if req.version == http::Version::HTTP_2 {
        // RFC 9113 section 8.3.1: `:authority` and `host` must name the same thing.
        match (authority, host_header) {
            (Some(a), Some(h)) if !a.eq_ignore_ascii_case(h) => {
                return Err((
                    StatusCode::BAD_REQUEST,
                    "host_mismatch",
                    ":authority and Host disagree",
                ));
            }
            (Some(a), _) => a,
            (None, Some(h)) => h,
            (None, None) => {
                return Err((StatusCode::BAD_REQUEST, "host_missing", "no :authority"));
            }
        }
    } else {
        // RFC 9112 section 3.2: a request without Host is a 400; section 3.2.2: with an
        // absolute-form target, the target's authority is the host and Host is ignored
        // (the upstream gets our own Host and this one in X-Forwarded-Host).
        let Some(h) = host_header else {
            return Err((StatusCode::BAD_REQUEST, "host_missing", "no Host header"));
        };
        authority.unwrap_or(h)
    };
    // RFC 9112 section 6.1: the only transfer coding understood is a final, single
    // `chunked`; any other is 501. Content-Length beside Transfer-Encoding is how requests
    // are smuggled past a front end: refused (section 6.1 allows it; section 6.3 says the
    // connection must close).
    let mut codings = 0usize;
    for value in headers.get_all(header::TRANSFER_ENCODING) {
        let Ok(value) = value.to_str() else {
            return Err((
                StatusCode::BAD_REQUEST,
                "transfer_encoding",
                "bad Transfer-Encoding",
            ));
        };
        for coding in value.split(',').map(str::trim) {
            if !coding.eq_ignore_ascii_case("chunked") {
                return Err((
                    StatusCode::NOT_IMPLEMENTED,
                    "transfer_encoding",
                    "only chunked transfer coding is supported",
                ));
            }
            codings += 1;
        }
    }
    if codings > 1 {
        return Err((
            StatusCode::BAD_REQUEST,
            "transfer_encoding",
            "chunked applied more than once",
        ));
    }
    if codings == 1 && headers.contains_key(header::CONTENT_LENGTH) {
        return Err((
            StatusCode::BAD_REQUEST,
            "transfer_encoding",
            "both Content-Length and Transfer-Encoding",
        ));
    }
    Ok(Edge {
        host: host.to_ascii_lowercase(),
    })
}

/// A Host value: `uri-host [ ":" port ]` with no userinfo, path, spaces or anything else
/// (RFC 9110 section 7.2, RFC 3986 section 3.2.2): a reg-name of unreserved, sub-delims
/// and escapes, or an IP literal in brackets. Checked without allocating.
fn valid_host(h: &str) -> bool {
    let (host, port) = if let Some(rest) = h.strip_prefix('[') {
        let Some((literal, after)) = rest.split_once(']') else {
            return false;
        };
        if literal.is_empty()
            || !literal
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
        {
            return false;
        }
        if after.is_empty() {
            return true;
        }
        match after.strip_prefix(':') {
            Some(port) => ("x", port),
            None => return false,
        }
    } else {
        match h.rsplit_once(':') {
            Some((host, port)) => (host, port),
            None => (h, ""),
        }
    };
    !host.is_empty()
        && host
            .bytes()
            .all(|b| portcullis_policy::is_unreserved_or_sub_delim(b) || b == b'%')
        && port.len() <= 5
        && port.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::valid_host;

    /// RFC 9110 section 7.2 / RFC 3986 section 3.2.2: what a Host may be.
    #[test]
    fn rfc9110_7_2_host_values() {
        for ok in [
            "localhost",
            "api.example.com",
            "api.example.com:8080",
            "API.Example.com",
            "127.0.0.1:80",
            "[::1]",
            "[::1]:8443",
            "[2001:db8::1]",
            "host:",
        ] {
            assert!(valid_host(ok), "{ok}");
        }
        for bad in [
            "",
            "user@host",
            "host/path",
            "host name",
            "host:port",
            "host:123456",
            ":80",
            "[::1",
            "[]",
            "[::1]x",
            "[::g]",
            "a:b:c",
            "host\t",
            "héllo",
        ] {
            assert!(!valid_host(bad), "{bad}");
        }
    }
}
