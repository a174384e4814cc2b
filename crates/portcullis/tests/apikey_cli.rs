//! `portcullis apikey` as an operator runs it: the built binary, its stdout, stderr, files
//! and exit codes. (`--apply` and rotation against an API server are the e2e suite's.)

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use k8s_openapi::api::core::v1::Secret;
use portcullis_policy::apikey::ApiKey;
use sha2::{Digest, Sha256};

/// Runs the binary with `args` (and `stdin`), never near a real cluster.
fn portcullis(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .env_remove("RUST_LOG")
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running portcullis");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn ok(out: &Output) -> (String, String) {
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "exit {:?}\n{stderr}", out.status);
    (stdout, stderr)
}

/// The one line of `text` that is a key.
fn key_line(text: &str) -> String {
    let keys: Vec<&str> = text.lines().filter(|l| l.starts_with("pcl_")).collect();
    assert_eq!(keys.len(), 1, "one key line expected in:\n{text}");
    keys[0].to_owned()
}

fn entry(s: &Secret, k: &str) -> String {
    s.string_data.as_ref().unwrap()[k].clone()
}

fn hex_sha256(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn seconds(rfc3339: &str) -> i64 {
    rfc3339
        .parse::<k8s_openapi::jiff::Timestamp>()
        .unwrap()
        .as_second()
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[cfg(not(unix))]
fn mode(_: &Path) -> u32 {
    0o600
}

#[test]
fn create_yaml_prints_the_manifest_and_the_key_once_on_stderr() {
    let out = portcullis(
        &[
            "apikey",
            "create",
            "--consumer",
            "Acme Corp",
            "--scope",
            "orders:read",
            "--scopes",
            "orders:write orders:read",
            "--label",
            "tier=gold",
            "-n",
            "shop",
            "--expires-in",
            "1h",
            "-o",
            "yaml",
        ],
        None,
    );
    let (stdout, stderr) = ok(&out);
    assert!(
        !stdout.contains("pcl_"),
        "the manifest holds the key:\n{stdout}"
    );
    let key = key_line(&stderr);
    assert!(stderr.contains("shown once"), "{stderr}");
    let parsed = ApiKey::parse(&key).expect("a well-formed key");

    let secret: Secret = serde_yaml::from_str(&stdout).expect("one Secret");
    assert_eq!(secret.type_.as_deref(), Some("portcullis.dev/api-key"));
    assert_eq!(entry(&secret, "sha256"), hex_sha256(&key));
    assert_eq!(entry(&secret, "keyId"), parsed.id());
    assert_eq!(entry(&secret, "consumer"), "Acme Corp");
    assert_eq!(entry(&secret, "scopes"), "orders:read orders:write");
    assert_eq!(
        seconds(&entry(&secret, "expiresAt")) - seconds(&entry(&secret, "createdAt")),
        3600
    );
    let meta = &secret.metadata;
    assert_eq!(meta.namespace.as_deref(), Some("shop"));
    assert_eq!(
        meta.name.clone().unwrap(),
        format!("apikey-acme-corp-{}", parsed.id().to_ascii_lowercase())
    );
    let labels = meta.labels.as_ref().unwrap();
    assert_eq!(labels["portcullis.dev/api-key"], "true");
    assert_eq!(labels["tier"], "gold");

    // Two runs, two keys.
    let again = portcullis(&["apikey", "create", "--consumer", "a", "-o", "json"], None);
    let (json, stderr) = ok(&again);
    assert_ne!(key_line(&stderr), key);
    let secret: Secret = serde_json::from_str(&json).unwrap();
    assert!(secret.metadata.namespace.is_none());
    assert!(!secret.string_data.unwrap().contains_key("expiresAt"));
}

#[test]
fn create_with_write_prints_only_the_key_on_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("acme.yaml");
    let out = portcullis(
        &[
            "apikey",
            "create",
            "--consumer",
            "acme",
            "--expires-at",
            "2099-01-01T00:00:00Z",
            "--write",
            manifest.to_str().unwrap(),
        ],
        None,
    );
    let (stdout, _) = ok(&out);
    let key = stdout.strip_suffix('\n').expect("a line");
    assert!(!key.contains('\n'), "stdout is the key alone: {stdout:?}");
    ApiKey::parse(key).unwrap();
    assert_eq!(mode(&manifest), 0o600);
    let written = std::fs::read_to_string(&manifest).unwrap();
    assert!(!written.contains(key));
    let secret: Secret = serde_yaml::from_str(&written).unwrap();
    assert_eq!(entry(&secret, "sha256"), hex_sha256(key));
    assert_eq!(entry(&secret, "expiresAt"), "2099-01-01T00:00:00Z");

    // --print-key-to: the key in a new private file, nothing on stdout; JSON by extension.
    let keyfile = dir.path().join("acme.key");
    let json = dir.path().join("acme.json");
    let args = [
        "apikey",
        "create",
        "--consumer",
        "acme",
        "--write",
        json.to_str().unwrap(),
        "--print-key-to",
        keyfile.to_str().unwrap(),
    ];
    let (stdout, stderr) = ok(&portcullis(&args, None));
    assert_eq!(stdout, "");
    assert!(!stderr.contains("pcl_"), "{stderr}");
    assert_eq!(mode(&keyfile), 0o600);
    let key = key_line(&std::fs::read_to_string(&keyfile).unwrap());
    let secret: Secret = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(entry(&secret, "sha256"), hex_sha256(&key));

    // An existing key file is never overwritten.
    let out = portcullis(&args, None);
    assert!(!out.status.success());
    assert_eq!(key_line(&std::fs::read_to_string(&keyfile).unwrap()), key);
}

#[test]
fn create_refuses_what_would_make_a_useless_or_dead_key() {
    for (args, want) in [
        (&["--consumer", "a"][..], "required"),
        (
            &[
                "--consumer",
                "a",
                "-o",
                "yaml",
                "--expires-at",
                "2001-01-01T00:00:00Z",
            ],
            "not in the future",
        ),
        (
            &[
                "--consumer",
                "a",
                "-o",
                "yaml",
                "--rotate",
                "old",
                "--overlap",
                "1h",
            ],
            "--rotate-from",
        ),
        (
            &[
                "--consumer",
                "a",
                "-o",
                "yaml",
                "--label",
                "portcullis.dev/api-key=no",
            ],
            "another label",
        ),
    ] {
        let mut argv = vec!["apikey", "create"];
        argv.extend_from_slice(args);
        let out = portcullis(&argv, None);
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
        assert!(!text(&out.stdout).contains("pcl_") && !stderr.contains("pcl_"));
    }
}

#[test]
fn id_prints_id_and_sha256_and_exits_1_on_a_malformed_key() {
    let (_, stderr) = ok(&portcullis(
        &["apikey", "create", "--consumer", "a", "-o", "yaml"],
        None,
    ));
    let key = key_line(&stderr);
    let parsed = ApiKey::parse(&key).unwrap();
    let want = format!("keyId:  {}\nsha256: {}\n", parsed.id(), hex_sha256(&key));

    let (stdout, _) = ok(&portcullis(
        &["apikey", "id", "-"],
        Some(&format!("{key}\n")),
    ));
    assert_eq!(stdout, want);
    let (stdout, _) = ok(&portcullis(
        &["apikey", "id"],
        Some(&format!("Bearer {key}")),
    ));
    assert_eq!(stdout, want);
    let (stdout, _) = ok(&portcullis(&["apikey", "id", &key], None));
    assert_eq!(stdout, want);

    let mut typo = key.clone().into_bytes();
    typo[30] = if typo[30] == b'x' { b'y' } else { b'x' };
    let typo = String::from_utf8(typo).unwrap();
    for (input, want) in [
        (typo.as_str(), "checksum"),
        (&key[..40], "54 characters"),
        ("ghp_0123", "pcl_"),
        ("", "no key given"),
    ] {
        let out = portcullis(&["apikey", "id", "-"], Some(input));
        assert_eq!(out.status.code(), Some(1), "{input:?}");
        assert_eq!(text(&out.stdout), "");
        let stderr = text(&out.stderr);
        assert!(stderr.contains(want), "{input:?}: {stderr}");
    }
}

#[test]
fn rotate_from_file_emits_the_re_dated_old_secret() {
    let dir = tempfile::tempdir().unwrap();
    let old_file = dir.path().join("old.yaml");
    let (old_yaml, _) = ok(&portcullis(
        &[
            "apikey",
            "create",
            "--consumer",
            "acme",
            "--label",
            "tier=gold",
            "-n",
            "shop",
            "-o",
            "yaml",
        ],
        None,
    ));
    std::fs::write(&old_file, &old_yaml).unwrap();
    let old: Secret = serde_yaml::from_str(&old_yaml).unwrap();
    let old_name = old.metadata.name.clone().unwrap();

    let out = portcullis(
        &[
            "apikey",
            "create",
            "--consumer",
            "acme",
            "-o",
            "yaml",
            "--rotate",
            &old_name,
            "--overlap",
            "2h",
            "--rotate-from",
            old_file.to_str().unwrap(),
        ],
        None,
    );
    let (stdout, stderr) = ok(&out);
    let new_key = key_line(&stderr);
    let docs: Vec<&str> = stdout.split("---\n").collect();
    assert_eq!(docs.len(), 2, "{stdout}");
    let new: Secret = serde_yaml::from_str(docs[0]).unwrap();
    let redated: Secret = serde_yaml::from_str(docs[1]).unwrap();
    assert_eq!(entry(&new, "sha256"), hex_sha256(&new_key));
    assert_eq!(new.metadata.namespace.as_deref(), Some("shop"));
    assert_eq!(new.metadata.labels.as_ref().unwrap()["tier"], "gold");
    assert_eq!(redated.metadata.name.as_deref(), Some(old_name.as_str()));
    assert_eq!(entry(&redated, "sha256"), entry(&old, "sha256"));
    assert_eq!(
        seconds(&entry(&redated, "expiresAt")) - seconds(&entry(&new, "createdAt")),
        7200
    );

    // Rotating the re-dated Secret again with a longer overlap keeps its earlier expiry.
    std::fs::write(&old_file, docs[1]).unwrap();
    let out = portcullis(
        &[
            "apikey",
            "create",
            "--consumer",
            "acme",
            "-o",
            "json",
            "--rotate",
            &old_name,
            "--overlap",
            "30d",
            "--rotate-from",
            old_file.to_str().unwrap(),
        ],
        None,
    );
    let (stdout, stderr) = ok(&out);
    let only: Secret = serde_json::from_str(&stdout).expect("the new Secret alone");
    assert_ne!(only.metadata.name.as_deref(), Some(old_name.as_str()));
    assert!(stderr.contains("already expires"), "{stderr}");
}

#[test]
fn revoke_checks_an_api_key_id_before_reaching_the_cluster() {
    let out = portcullis(
        &["revoke", "--policy", "shop/p", "--api-key-id", "not-an-id"],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("12 letters and digits"), "{stderr}");
}
