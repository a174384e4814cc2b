//! `apikey create`: check the arguments, draw the key, build the Secret(s), then write,
//! apply and print them, and deliver the key once.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::Secret;
use portcullis_policy::apikey::{self, ApiKey};

use super::cluster::Cluster;
use super::manifest::{self, Format, KeySecretSpec, OldExpiry};
use super::{CreateArgs, validate};

/// Bytes of OS randomness per key: `generate` needs 44 bytes below 248; 128 make running
/// out less likely than 2^-100.
const RANDOM_BYTES: usize = 128;

/// What `create` makes of its arguments, a key, the time and (to rotate) the old Secret.
#[derive(Debug)]
pub(super) struct Plan {
    /// The new key's Secret.
    pub(super) secret: Secret,
    /// The rotated key's Secret as read, and its expiry.
    pub(super) rotation: Option<(Secret, OldExpiry)>,
    /// Things the operator should know, for stderr.
    pub(super) warnings: Vec<String>,
}

impl Plan {
    /// The objects to print or write: the new Secret, then the re-dated old one if its
    /// expiry changes.
    pub(super) fn objects(&self) -> anyhow::Result<Vec<Secret>> {
        let mut out = vec![self.secret.clone()];
        if let Some((old, OldExpiry::Set(t))) = &self.rotation {
            out.push(manifest::redated(old, *t)?);
        }
        Ok(out)
    }
}

/// Checks the arguments and builds the new Secret for `key` at `now` (seconds since the
/// epoch); with `--rotate`, `old` is the old Secret (read from the cluster or the file).
pub(super) fn make_plan(
    args: &CreateArgs,
    key: &str,
    now: i64,
    old: Option<Secret>,
) -> anyhow::Result<Plan> {
    validate::check_consumer(&args.consumer)?;
    let scopes = validate::scopes(&args.scope, args.scopes.as_deref())?;
    if let Some(n) = &args.name {
        validate::check_name("--name", n)?;
    }
    if let Some(ns) = &args.namespace {
        validate::check_namespace(ns)?;
    }
    let expires_at = match (args.expires_in, &args.expires_at) {
        (Some(d), _) if d.is_zero() => bail!("--expires-in is zero: the key would never work"),
        (Some(d), _) => Some(now.saturating_add(crate::token_cmd::secs(d))),
        (None, Some(s)) => {
            let t = manifest::parse_time(s).context("--expires-at")?;
            if t <= now {
                bail!("--expires-at {s} is not in the future: the key would never work");
            }
            Some(t)
        }
        (None, None) => None,
    };
    let mut warnings = Vec::new();
    let mut labels = BTreeMap::new();
    let mut namespace = args.namespace.clone();
    let rotation = match (&args.rotate, old) {
        (None, _) => None,
        (Some(name), None) => bail!("--rotate {name}: the old Secret was not read"),
        (Some(name), Some(old)) => {
            validate::check_name("--rotate", name)?;
            if old.metadata.name.as_deref() != Some(name.as_str()) {
                bail!(
                    "--rotate {name}, but the old Secret given is named {}",
                    old.metadata.name.as_deref().unwrap_or("(nothing)")
                );
            }
            match (&namespace, &old.metadata.namespace) {
                (Some(a), Some(b)) if a != b => bail!(
                    "--namespace {a}, but the old Secret is in {b}: a TokenPolicy selects keys of its own namespace only"
                ),
                (None, Some(b)) => namespace = Some(b.clone()),
                _ => {}
            }
            if let Some(c) = manifest::consumer_of(&old).filter(|c| *c != args.consumer) {
                warnings.push(format!(
                    "the old key belongs to consumer {c:?}, the new one to {:?}",
                    args.consumer
                ));
            }
            labels = manifest::inherited_labels(&old);
            let overlap = args.overlap.context("--rotate needs --overlap")?;
            let until = now.saturating_add(crate::token_cmd::secs(overlap));
            let expiry = manifest::old_expiry(&old, until)?;
            Some((old, expiry))
        }
    };
    labels.extend(args.labels.iter().cloned());
    let spec = KeySecretSpec {
        consumer: args.consumer.clone(),
        scopes,
        created_at: now,
        expires_at,
        name: args.name.clone(),
        namespace,
        labels,
    };
    let parsed = ApiKey::parse(key).map_err(|e| anyhow::anyhow!("generated key: {e}"))?;
    let secret = spec.secret(&parsed)?;
    if let Some((old, _)) = &rotation
        && old.metadata.name == secret.metadata.name
    {
        bail!("the new Secret would replace the old one: give the new one another --name");
    }
    Ok(Plan {
        secret,
        rotation,
        warnings,
    })
}

/// A new key from the OS's CSPRNG.
fn new_key() -> anyhow::Result<String> {
    let mut random = [0u8; RANDOM_BYTES];
    getrandom::fill(&mut random)
        .map_err(|e| anyhow::anyhow!("reading the operating system's random generator: {e}"))?;
    let key = apikey::generate(&random);
    random.fill(0);
    key.context("the random bytes ran out before a key was drawn; try again")
}

/// Runs `apikey create`.
pub(super) async fn create(args: CreateArgs) -> anyhow::Result<()> {
    if args.rotate.is_some() && !args.apply && args.rotate_from.is_none() {
        bail!(
            "--rotate without --apply needs the old Secret as --rotate-from FILE (kubectl get secret OLD -o yaml)"
        );
    }
    if args.print_key_to.is_some() && args.print_key_to == args.write {
        bail!(
            "--print-key-to and --write name the same file: the manifest would overwrite the key"
        );
    }
    // Everything that can fail before the Secret exists is done first: the key file is
    // created (and removed again on failure), the old Secret read, the manifests rendered.
    let mut key_file = args
        .print_key_to
        .as_deref()
        .map(KeyFile::create)
        .transpose()?;
    let cluster = if args.apply {
        Some(Cluster::connect(args.namespace.as_deref()).await?)
    } else {
        None
    };
    let old = match (&args.rotate, &cluster, &args.rotate_from) {
        (None, _, _) => None,
        (Some(name), Some(c), _) => Some(c.get(name).await?),
        (Some(_), None, Some(file)) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?;
            Some(manifest::parse_secret(&text).with_context(|| file.display().to_string())?)
        }
        (Some(_), None, None) => unreachable!("checked above"),
    };
    let key = new_key()?;
    let plan = make_plan(&args, &key, crate::token_cmd::unix_now(), old)?;
    for w in &plan.warnings {
        eprintln!("warning: {w}");
    }
    let objects = plan.objects()?;
    let stdout_text = args
        .output
        .map(|f| manifest::render(&objects, f))
        .transpose()?;
    let file_text = match &args.write {
        Some(path) => {
            let json = path.extension().is_some_and(|e| e == "json");
            let format = args
                .output
                .unwrap_or(if json { Format::Json } else { Format::Yaml });
            Some((path, manifest::render(&objects, format)?))
        }
        None => None,
    };

    let name = plan.secret.metadata.name.clone().unwrap_or_default();
    let key_id = &key[apikey::PREFIX.len()..apikey::PREFIX.len() + apikey::ID_LEN];
    if let Some((path, text)) = file_text {
        write_private(path, text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote the Secret manifest to {}", path.display());
    }
    // Nothing below returns before the key is delivered.
    let show = |t: i64| manifest::rfc3339(t).unwrap_or_else(|_| t.to_string());
    let mut rotation_error = None;
    if let Some(c) = &cluster {
        c.create(&plan.secret).await?;
        eprintln!("created Secret {}/{name} (key id {key_id})", c.namespace());
        if let Some((old, expiry)) = &plan.rotation {
            let old_name = old.metadata.name.as_deref().unwrap_or_default();
            match expiry {
                OldExpiry::Set(t) => match c.set_expiry(old, *t).await {
                    Ok(()) => eprintln!(
                        "the old key (Secret {}/{old_name}) now expires at {}",
                        c.namespace(),
                        show(*t)
                    ),
                    Err(e) => {
                        rotation_error = Some(e.context(format!(
                            "the new key works, but the old key's expiresAt was not set; set it by hand: \
                             kubectl -n {} patch secret {old_name} --type merge -p \
                             '{{\"stringData\":{{\"expiresAt\":\"{}\"}}}}'",
                            c.namespace(),
                            show(*t)
                        )))
                    }
                },
                OldExpiry::Kept(t) => eprintln!(
                    "the old key (Secret {}/{old_name}) already expires at {}: left alone",
                    c.namespace(),
                    show(*t)
                ),
            }
        }
    } else if let Some((old, expiry)) = &plan.rotation {
        let old_name = old.metadata.name.as_deref().unwrap_or_default();
        match expiry {
            OldExpiry::Set(t) => eprintln!(
                "the re-dated old Secret {old_name} (expiresAt {}) follows the new one",
                show(*t)
            ),
            OldExpiry::Kept(t) => eprintln!(
                "the old Secret {old_name} already expires at {}: left out",
                show(*t)
            ),
        }
    }
    // The Secret exists (or is written) from here on: the key is delivered whatever else
    // fails, or nobody could ever use it.
    let printed = match &stdout_text {
        Some(text) => std::io::stdout()
            .lock()
            .write_all(text.as_bytes())
            .context("printing the manifest"),
        None => Ok(()),
    };
    let note = format!(
        "API key for consumer {:?} (key id {key_id}), shown once: store it now; the Secret keeps only its SHA-256",
        args.consumer
    );
    match &mut key_file {
        Some(f) => {
            f.deliver(&key)?;
            eprintln!(
                "wrote the API key (key id {key_id}) to {}",
                f.path.display()
            );
        }
        None if stdout_text.is_some() => eprintln!("{note}:\n{key}"),
        None => {
            eprintln!("{note}:");
            println!("{key}");
        }
    }
    printed?;
    if let Some(e) = rotation_error {
        return Err(e);
    }
    Ok(())
}

/// The file `--print-key-to` names: created new (mode 0600) before anything else happens,
/// removed again if the key is never written to it.
pub(super) struct KeyFile {
    path: PathBuf,
    file: Option<File>,
}

impl KeyFile {
    /// Creates `path` (new, mode 0600).
    pub(super) fn create(path: &Path) -> anyhow::Result<Self> {
        let file = open_private(path, true)
            .with_context(|| format!("creating {} for the key", path.display()))?;
        Ok(Self {
            path: path.to_owned(),
            file: Some(file),
        })
    }

    /// Writes the key (and a newline) and closes the file.
    pub(super) fn deliver(&mut self, key: &str) -> anyhow::Result<()> {
        let mut file = self.file.take().context("the key was written already")?;
        file.write_all(format!("{key}\n").as_bytes())
            .and_then(|()| file.sync_all())
            .with_context(|| format!("writing the key to {}", self.path.display()))
    }
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Opens `path` for writing with mode 0600 (also when it existed): a new file only when
/// `new`, else created or truncated.
fn open_private(path: &Path, new: bool) -> std::io::Result<File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true);
    if new {
        opts.create_new(true);
    } else {
        opts.create(true).truncate(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let file = opts.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(file)
}

/// Writes `bytes` to `path` (mode 0600).
pub(super) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = open_private(path, false)?;
    file.write_all(bytes)?;
    file.sync_all()
}
