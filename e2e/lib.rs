//! End-to-end tests live in `tests/`; run them with `e2e/run.sh`. This library holds what
//! they share: the `portcullis` processes, plain HTTP/1.1 over real sockets, and the real
//! OpenID provider ([`oidc`]).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod kubectl;
pub mod oidc;

/// The `portcullis` binary under test (`PORTCULLIS_BIN`, set by `e2e/run.sh`).
pub fn bin() -> String {
    std::env::var("PORTCULLIS_BIN").expect("PORTCULLIS_BIN is set by e2e/run.sh")
}

/// Polls `f` every 20 ms until it holds; panics naming `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A loopback port free right now, never handed out before by this process, and below
/// Linux's ephemeral range (32768-60999), so that no outgoing connection (kubectl, a proxy
/// dialling its controller) can take it between this call and the server's bind. Port 0
/// would pick from that very range, and could give two calls in a row the same port.
pub fn free_port() -> u16 {
    use std::sync::Mutex;
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    // A different starting point per process (two e2e runs side by side), then a walk.
    let start = 20_000 + (std::process::id() % 1000) as u16 * 12;
    for i in 0..12_000u16 {
        let port = 20_000 + (start - 20_000 + i) % 12_000;
        if given.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    panic!("no free loopback port in 20000-31999");
}

/// A child process killed when dropped.
pub struct Proc {
    name: String,
    child: Child,
}

impl Proc {
    /// Starts `portcullis ARGS`, logging to `$TMPDIR/portcullis-e2e-NAME.log`.
    pub fn start(name: &str, args: &[&str]) -> Proc {
        Self::spawn(name, &bin(), args)
    }

    /// Starts `program ARGS`, logging to `$TMPDIR/portcullis-e2e-NAME.log`.
    pub fn spawn(name: &str, program: &str, args: &[&str]) -> Proc {
        let log =
            std::fs::File::create(std::env::temp_dir().join(format!("portcullis-e2e-{name}.log")))
                .unwrap();
        let child = Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{program} starts: {e}"));
        Proc {
            name: name.into(),
            child,
        }
    }

    /// Kills and reaps the process.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        let _ = &self.name;
    }
}

/// Starts a controller replica `identity` (its log: `$TMPDIR/portcullis-e2e-IDENTITY.log`)
/// serving config streams on `push` and metrics on `metrics`, leading through a Lease in
/// `portcullis-system` (3 s), sending heartbeats every second, and letting the
/// `portcullis-system/portcullis-proxy` ServiceAccount subscribe; `extra` adds flags.
/// Without `--tls-cert` in `extra`, the push endpoint is plain h2c (`--plaintext`).
pub fn start_controller(identity: &str, push: u16, metrics: u16, extra: &[&str]) -> Proc {
    let (listen, metrics_listen) = (format!("127.0.0.1:{push}"), format!("127.0.0.1:{metrics}"));
    let mut args = vec![
        "controller",
        "--listen",
        &listen,
        "--metrics-listen",
        &metrics_listen,
        "--identity",
        identity,
        "--lease-namespace",
        "portcullis-system",
        "--lease-duration",
        "3s",
        "--heartbeat",
        "1s",
        "--allow-service-account",
        "portcullis-system/portcullis-proxy",
    ];
    if !extra.contains(&"--tls-cert") {
        args.push("--plaintext");
    }
    args.extend_from_slice(extra);
    Proc::start(identity, &args)
}

/// Starts a proxy `name` subscribed to the controller on `controller` with the token in
/// `token_file`, serving on `listen` and its admin port on `admin`; `extra` adds flags
/// (a `--controller URL` there replaces `http://127.0.0.1:<controller>`).
pub fn start_proxy(
    name: &str,
    controller: u16,
    token_file: &std::path::Path,
    (listen, admin): (u16, u16),
    extra: &[&str],
) -> Proc {
    let controller = format!("http://127.0.0.1:{controller}");
    let (listen, admin) = (format!("127.0.0.1:{listen}"), format!("127.0.0.1:{admin}"));
    let mut args = vec!["proxy"];
    if !extra.contains(&"--controller") {
        args.extend(["--controller", &controller]);
    }
    args.extend([
        "--token-file",
        token_file.to_str().unwrap(),
        "--name",
        name,
        "--listen",
        &listen,
        "--admin",
        &admin,
    ]);
    args.extend_from_slice(extra);
    Proc::start(name, &args)
}

/// `portcullis token mint --key KEY ARGS`: a token signed with `key` (PEM), the claims
/// given by `args` (`--sub`, `--scope`, `--ttl`, `--jti`...).
pub fn mint_token(key: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(bin())
        .args(["token", "mint", "--key", key.to_str().unwrap()])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mint: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// One HTTP/1.1 request; returns the status code.
pub fn status(port: u16, host: &str, path: &str, token: Option<&str>) -> u16 {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n"
    );
    let mut buf = [0u8; 12];
    let mut got = 0;
    while got < 12 {
        match s.read(&mut buf[got..]) {
            Ok(0) | Err(_) => return 0,
            Ok(n) => got += n,
        }
    }
    std::str::from_utf8(&buf[9..12])
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// `GET path` on the admin port; returns the status code and the whole response.
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let code = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, out)
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `p` percentile of `v` (sorted in place).
pub fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// One HTTP/1.1 request with extra header lines and a body; returns the status code, the
/// response head and the body.
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new(), String::new());
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        head.push_str(&format!("Host: 127.0.0.1:{port}\r\n"));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = s.write_all(head.as_bytes());
    let _ = s.write_all(body.as_bytes());
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let out = String::from_utf8_lossy(&out).into_owned();
    let code = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    // Chunked bodies: good enough for the small JSON answers the tests read.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (code, head.to_owned(), body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// The value of the first sample of `name` whose labels contain every `labels` pair, from
/// a Prometheus text exposition.
pub fn metric(exposition: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.starts_with(name) && matches!(l.as_bytes().get(name.len()), Some(b'{') | Some(b' '))
        })
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Unpadded base64url (RFC 4648 section 5).
pub fn b64url(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}
