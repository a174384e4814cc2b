//! kubectl against the e2e control plane (`KUBECTL`, set by `e2e/cluster.sh`).

use std::io::Write;
use std::process::{Command, Stdio};

fn kubectl_cmd() -> Command {
    Command::new(std::env::var("KUBECTL").expect("KUBECTL is set by e2e/cluster.sh"))
}

/// Runs kubectl; returns (success, stdout, stderr).
pub fn kubectl(args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut c = kubectl_cmd();
    c.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    if stdin.is_some() {
        c.stdin(Stdio::piped());
    }
    let mut child = c.spawn().expect("kubectl runs");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs kubectl and returns its stdout; panics with its stderr when it fails.
pub fn k(args: &[&str]) -> String {
    let (ok, out, err) = kubectl(args, None);
    assert!(ok, "kubectl {args:?} failed: {err}");
    out
}

/// `kubectl apply -f -` with `yaml`; panics when it fails.
pub fn apply(yaml: &str) {
    let (ok, _, err) = kubectl(&["apply", "-f", "-"], Some(yaml));
    assert!(ok, "kubectl apply failed: {err}\n{yaml}");
}

/// Creates namespace `ns` (already there is fine).
pub fn namespace(ns: &str) {
    let _ = kubectl(&["create", "namespace", ns], None);
}

/// Applies the CRDs of `crds/` and waits until the API server serves them.
pub fn install_crds() {
    k(&["apply", "-f", crate::repo().join("crds").to_str().unwrap()]);
    k(&[
        "wait",
        "--for=condition=Established",
        "--timeout=30s",
        "crd/apiroutes.portcullis.dev",
        "crd/tokenpolicies.portcullis.dev",
    ]);
}

/// Makes ServiceAccount `sa` of `portcullis-system` (already there is fine) and writes a
/// token of it with audience `portcullis`, valid an hour, to `dir/<sa>.token`.
pub fn service_account_token(sa: &str, dir: &std::path::Path) -> std::path::PathBuf {
    namespace("portcullis-system");
    let _ = kubectl(
        &["create", "serviceaccount", sa, "-n", "portcullis-system"],
        None,
    );
    let t = k(&[
        "create",
        "token",
        sa,
        "-n",
        "portcullis-system",
        "--audience",
        "portcullis",
        "--duration",
        "1h",
    ]);
    let f = dir.join(format!("{sa}.token"));
    std::fs::write(&f, t.trim()).unwrap();
    f
}
