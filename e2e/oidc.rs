//! The real OpenID provider the tests use: panva/node-oidc-provider (npm), run by
//! `e2e/oidc/provider.mjs` on loopback. `e2e/run.sh` installs it (`npm ci`).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{free_port, repo, request};

/// Audience of JWT access tokens (300 s).
pub const API: &str = "https://api.portcullis.test";
/// Audience of short-lived JWT access tokens (2 s).
pub const SHORT: &str = "https://short.portcullis.test";
/// Audience of opaque access tokens (introspected).
pub const OPAQUE: &str = "https://opaque.portcullis.test";
/// The client that gets tokens.
pub const CLIENT: (&str, &str) = ("orders-client", "orders-client-secret");
/// The gateway's client, which introspects.
pub const GATEWAY: (&str, &str) = ("portcullis-gateway", "portcullis-gateway-secret");

/// A running provider, stopped when dropped.
pub struct OidcProvider {
    child: Child,
    /// The provider's port (issuer `http://127.0.0.1:PORT`).
    pub port: u16,
    /// The scenario port (rotate, retire, stop, start, stats).
    pub admin: u16,
}

fn basic(id: &str, secret: &str) -> String {
    use base64::Engine;
    let raw = format!("{id}:{secret}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// Starts `e2e/oidc/<script>` with node on a free `PORT` and `ADMIN_PORT`, and waits for
/// its `READY` line: the process, its port and its admin port.
pub fn start_node(script: &str) -> (Child, u16, u16) {
    let port = free_port();
    let admin = free_port();
    let dir = repo().join("e2e/oidc");
    let mut child = Command::new("node")
        .arg(dir.join(script))
        .current_dir(&dir)
        .env("PORT", port.to_string())
        .env("ADMIN_PORT", admin.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("node runs e2e/oidc/{script} (run e2e/run.sh): {e}"));
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(
        line.starts_with("READY"),
        "{script} did not start: {line:?}"
    );
    (child, port, admin)
}

impl OidcProvider {
    /// Starts the provider and waits until it listens.
    pub fn start() -> OidcProvider {
        let (child, port, admin) = start_node("provider.mjs");
        OidcProvider { child, port, admin }
    }

    /// The issuer identifier.
    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A token for `resource` with `scope`, by client credentials.
    pub fn token(&self, resource: &str, scope: &str) -> String {
        let body = format!(
            "grant_type=client_credentials&scope={}&resource={}",
            scope.replace(' ', "+").replace(':', "%3A"),
            resource.replace(':', "%3A").replace('/', "%2F")
        );
        let (code, _, resp) = request(
            self.port,
            "POST",
            "/token",
            &[
                ("Authorization", &basic(CLIENT.0, CLIENT.1)),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            &body,
        );
        assert_eq!(code, 200, "token request failed: {resp}");
        let v: serde_json::Value = serde_json::from_str(&resp).unwrap();
        v["access_token"].as_str().unwrap().to_owned()
    }

    /// Revokes `token` at the provider (RFC 7009).
    pub fn revoke(&self, token: &str) {
        let (code, _, resp) = request(
            self.port,
            "POST",
            "/token/revocation",
            &[
                ("Authorization", &basic(CLIENT.0, CLIENT.1)),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            &format!("token={token}"),
        );
        assert_eq!(code, 200, "revocation failed: {resp}");
    }

    fn admin(&self, method: &str, path: &str) -> serde_json::Value {
        let (code, _, body) = request(self.admin, method, path, &[], "");
        assert_eq!(code, 200, "provider admin {path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    fn admin_json(&self, path: &str, body: &serde_json::Value) -> serde_json::Value {
        let (code, _, resp) = request(
            self.admin,
            "POST",
            path,
            &[("Content-Type", "application/json")],
            &body.to_string(),
        );
        assert_eq!(code, 200, "provider admin {path}: {resp}");
        serde_json::from_str(&resp).unwrap()
    }

    /// An access token for user `sub` (audience `aud`, `scope`), signed with the
    /// provider's current key.
    pub fn user_token(&self, sub: &str, aud: &str, scope: &str) -> String {
        self.admin_json(
            "/mint",
            &serde_json::json!({"sub": sub, "aud": aud, "scope": scope}),
        )["token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Makes oidc-provider itself (its back-channel logout feature) send a logout token
    /// for `sub` (and `sid`) to `uri`, as client `logout-client`. Returns the HTTP status
    /// the receiver answered.
    pub fn back_channel_logout(&self, uri: &str, sub: &str, sid: Option<&str>) -> u16 {
        self.back_channel_logout_token(uri, sub, sid).0
    }

    /// [`Self::back_channel_logout`], and the logout token that was sent.
    pub fn back_channel_logout_token(
        &self,
        uri: &str,
        sub: &str,
        sid: Option<&str>,
    ) -> (u16, String) {
        let mut body = serde_json::json!({"uri": uri, "sub": sub});
        if let Some(s) = sid {
            body["sid"] = s.into();
        }
        let r = self.admin_json("/backchannel-logout", &body);
        (
            r["status"].as_u64().unwrap_or(0) as u16,
            r["logout_token"].as_str().unwrap_or_default().to_owned(),
        )
    }

    /// A new signing key; the old one stays published.
    pub fn rotate(&self) {
        self.admin("POST", "/rotate");
    }

    /// Only the newest key stays published.
    pub fn retire(&self) {
        self.admin("POST", "/retire");
    }

    /// The provider stops answering.
    pub fn stop(&self) {
        self.admin("POST", "/stop");
    }

    /// The provider answers again.
    pub fn resume(&self) {
        self.admin("POST", "/start");
    }

    /// Serve the JWKS with this `max-age`.
    pub fn set_max_age(&self, secs: u64) {
        self.admin("POST", &format!("/max-age/{secs}"));
    }

    /// Requests served, by endpoint (`jwks`, `discovery`, `introspection`, `token`).
    pub fn served(&self, what: &str) -> u64 {
        self.admin("GET", "/stats")[what].as_u64().unwrap_or(0)
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(10));
    }
}
