//! Tests of `apikey create`'s and `apikey id`'s logic; tests/apikey_cli.rs runs the binary.

use std::time::Duration;

use clap::Parser;
use k8s_openapi::api::core::v1::Secret;
use portcullis_policy::apikey::{self, ApiKey};

use super::create::{KeyFile, make_plan, write_private};
use super::manifest::{self, Format, OldExpiry};
use super::*;

#[derive(Parser, Debug)]
struct Cli {
    #[command(subcommand)]
    cmd: ApiKeyCommand,
}

const NOW: i64 = 1_780_000_000; // 2026-05-28T20:26:40Z

fn parse(argv: &[&str]) -> Result<CreateArgs, String> {
    let mut full = vec!["portcullis", "create"];
    full.extend_from_slice(argv);
    match Cli::try_parse_from(full).map_err(|e| e.to_string())?.cmd {
        ApiKeyCommand::Create(a) => Ok(a),
        other => panic!("parsed {other:?}"),
    }
}

fn key() -> String {
    apikey::generate(&[7u8; 128]).unwrap()
}

fn entry<'a>(s: &'a Secret, k: &str) -> Option<&'a str> {
    s.string_data.as_ref()?.get(k).map(String::as_str)
}

#[test]
fn durations_take_days() {
    assert_eq!(
        days_or_duration("90d"),
        Ok(Duration::from_secs(90 * 86_400))
    );
    assert_eq!(days_or_duration("0d"), Ok(Duration::ZERO));
    assert_eq!(days_or_duration("1h30m"), Ok(Duration::from_secs(5_400)));
    assert!(days_or_duration("1.5d").is_err());
    assert!(days_or_duration("-1d").is_err());
    assert!(days_or_duration("d").is_err());
}

#[test]
fn cli_definition_is_consistent() {
    use clap::CommandFactory;
    Cli::command().debug_assert();
}

#[test]
fn create_needs_a_destination_and_consistent_flags() {
    let e = parse(&["--consumer", "a"]).unwrap_err();
    assert!(e.contains("--output") || e.contains("--apply"), "{e}");
    assert!(parse(&["--consumer", "a", "-o", "yaml"]).is_ok());
    assert!(parse(&["--consumer", "a", "--apply", "--write", "f"]).is_ok());
    assert!(parse(&["-o", "yaml"]).is_err(), "--consumer is required");
    assert!(parse(&["--consumer", "a", "-o", "xml"]).is_err());
    for bad in [
        &["--expires-in", "1h", "--expires-at", "2030-01-01T00:00:00Z"][..],
        &["--rotate", "old"],
        &["--overlap", "1h"],
        &[
            "--rotate",
            "old",
            "--overlap",
            "1h",
            "--rotate-from",
            "f",
            "--apply",
        ],
        &["--label", "novalue"],
        &["--expires-in", "soon"],
    ] {
        let mut argv = vec!["--consumer", "a", "-o", "yaml"];
        argv.extend_from_slice(bad);
        assert!(parse(&argv).is_err(), "{bad:?}");
    }
}

#[test]
fn plan_builds_the_secret_from_the_flags() {
    let args = parse(&[
        "--consumer",
        "acme",
        "--scope",
        "orders:read",
        "--scopes",
        "orders:write orders:read",
        "--label",
        "tier=gold",
        "--label",
        "team=shop",
        "-n",
        "shop",
        "--expires-in",
        "1d",
        "-o",
        "json",
    ])
    .unwrap();
    let key = key();
    let plan = make_plan(&args, &key, NOW, None).unwrap();
    let s = &plan.secret;
    assert_eq!(entry(s, "scopes"), Some("orders:read orders:write"));
    assert_eq!(entry(s, "consumer"), Some("acme"));
    assert_eq!(entry(s, "createdAt"), Some("2026-05-28T20:26:40Z"));
    assert_eq!(entry(s, "expiresAt"), Some("2026-05-29T20:26:40Z"));
    let labels = s.metadata.labels.as_ref().unwrap();
    assert_eq!(labels["tier"], "gold");
    assert_eq!(labels["team"], "shop");
    assert_eq!(labels["portcullis.dev/api-key"], "true");
    assert_eq!(s.metadata.namespace.as_deref(), Some("shop"));
    assert!(plan.rotation.is_none());
    let text = manifest::render(&plan.objects().unwrap(), Format::Json).unwrap();
    assert!(!text.contains(&key), "{text}");

    let at = parse(&[
        "--consumer",
        "acme",
        "--expires-at",
        "2026-06-01T00:00:00+02:00",
        "-o",
        "yaml",
    ])
    .unwrap();
    let s = make_plan(&at, &key, NOW, None).unwrap().secret;
    assert_eq!(entry(&s, "expiresAt"), Some("2026-05-31T22:00:00Z"));

    for (flags, want) in [
        (
            &["--expires-at", "2026-05-28T20:26:40Z"][..],
            "not in the future",
        ),
        (&["--expires-at", "tomorrow"], "RFC 3339"),
        (&["--expires-in", "0s"], "zero"),
        (&["--scope", "a\"b"], "scope"),
        (&["--name", "Not_A_Name"], "--name"),
        (&["-n", "Shop"], "--namespace"),
    ] {
        let mut argv = vec!["--consumer", "acme", "-o", "yaml"];
        argv.extend_from_slice(flags);
        let e = make_plan(&parse(&argv).unwrap(), &key, NOW, None).unwrap_err();
        let e = format!("{e:#}");
        assert!(e.contains(want), "{flags:?}: {e}");
    }
}

fn old_secret() -> Secret {
    manifest::parse_secret(
        r#"
apiVersion: v1
kind: Secret
metadata:
  name: apikey-acme-old
  namespace: shop
  resourceVersion: "7"
  labels:
    portcullis.dev/api-key: "true"
    tier: gold
type: portcullis.dev/api-key
data:
  keyId: T0xEaWQwMDAwMDAw
  sha256: YWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYmFiYWJhYg==
  consumer: YWNtZQ==
"#,
    )
    .unwrap()
}

#[test]
fn rotation_inherits_labels_and_re_dates_the_old_secret() {
    let args = parse(&[
        "--consumer",
        "acme",
        "--label",
        "team=shop",
        "-o",
        "yaml",
        "--rotate",
        "apikey-acme-old",
        "--overlap",
        "24h",
        "--rotate-from",
        "old.yaml",
    ])
    .unwrap();
    let key = key();
    let plan = make_plan(&args, &key, NOW, Some(old_secret())).unwrap();
    let labels = plan.secret.metadata.labels.as_ref().unwrap();
    assert_eq!(labels["tier"], "gold", "inherited");
    assert_eq!(labels["team"], "shop");
    assert_eq!(plan.secret.metadata.namespace.as_deref(), Some("shop"));
    assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
    let objects = plan.objects().unwrap();
    assert_eq!(objects.len(), 2);
    let old = &objects[1];
    assert_eq!(old.metadata.name.as_deref(), Some("apikey-acme-old"));
    assert_eq!(
        old.data.as_ref().unwrap()["expiresAt"].0,
        b"2026-05-29T20:26:40Z"
    );

    // An old key that already expires sooner is left out.
    let mut sooner = old_secret();
    sooner.data.as_mut().unwrap().insert(
        "expiresAt".into(),
        k8s_openapi::ByteString(b"2026-05-28T21:00:00Z".to_vec()),
    );
    let p = make_plan(&args, &key, NOW, Some(sooner)).unwrap();
    assert!(matches!(p.rotation, Some((_, OldExpiry::Kept(_)))));
    assert_eq!(p.objects().unwrap().len(), 1);

    // Another consumer is worth a warning; another namespace or name is an error.
    let mut other = args.clone();
    other.consumer = "globex".into();
    let p = make_plan(&other, &key, NOW, Some(old_secret())).unwrap();
    assert_eq!(p.warnings.len(), 1);
    let mut ns = args.clone();
    ns.namespace = Some("elsewhere".into());
    assert!(make_plan(&ns, &key, NOW, Some(old_secret())).is_err());
    let mut renamed = args.clone();
    renamed.rotate = Some("apikey-other".into());
    assert!(make_plan(&renamed, &key, NOW, Some(old_secret())).is_err());
    let mut same = args.clone();
    same.name = Some("apikey-acme-old".into());
    let e = make_plan(&same, &key, NOW, Some(old_secret())).unwrap_err();
    assert!(e.to_string().contains("replace the old one"), "{e}");
}

#[test]
fn id_report_names_the_key_and_refuses_malformed_ones() {
    let key = key();
    let report = id_report(&format!("Bearer {key}\n")).unwrap();
    let parsed = ApiKey::parse(&key).unwrap();
    assert_eq!(
        report,
        format!(
            "keyId:  {}\nsha256: {}\n",
            parsed.id(),
            manifest::hex(&parsed.sha256())
        )
    );
    assert!(!report.contains(&key[16..48]));
    let mut typo = key.clone().into_bytes();
    typo[20] = if typo[20] == b'a' { b'b' } else { b'a' };
    let e = id_report(std::str::from_utf8(&typo).unwrap()).unwrap_err();
    assert!(e.to_string().contains("checksum"), "{e}");
    assert!(id_report("  ").is_err());
    assert!(
        id_report("ghp_abc")
            .unwrap_err()
            .to_string()
            .contains("pcl_")
    );
}

#[test]
fn key_file_is_private_new_and_removed_unless_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key");
    {
        let _abandoned = KeyFile::create(&path).unwrap();
        assert!(path.exists());
    }
    assert!(!path.exists(), "an undelivered key file is removed");
    let mut f = KeyFile::create(&path).unwrap();
    assert!(KeyFile::create(&path).is_err(), "never overwrites");
    f.deliver("pcl_x").unwrap();
    drop(f);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "pcl_x\n");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let manifest = dir.path().join("m.yaml");
        std::fs::write(&manifest, "old").unwrap();
        std::fs::set_permissions(&manifest, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&manifest, b"new").unwrap();
        let mode = std::fs::metadata(&manifest).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&manifest).unwrap(), "new");
    }
}
