//! `portcullis apikey create` and `portcullis apikey id`: API keys for consumers.
//!
//! `create` draws 128 bytes from the operating system's CSPRNG (`getrandom`) and hands
//! them to `portcullis_policy::apikey::generate`, which stays free of IO. The key is
//! shown once; the Secret a TokenPolicy's `apiKeys.selector` trusts holds its id and
//! SHA-256, never the key. `--rotate` also moves an old key's expiry to now + `--overlap`.
//!
//! `validate.rs` checks the flags, `create.rs` runs the command, `manifest.rs` builds the
//! Secrets (pure), `cluster.rs` writes them with `--apply`.
//!
//! ```text
//!   OS CSPRNG --128 B--> apikey::generate --> key --> stdout / stderr / --print-key-to
//!                                              \--> id, sha256 --> Secret --> -o / --write / --apply
//! ```
//!
//! `id` checks a key's checksum and prints its id and SHA-256: what names a leaked key in
//! Secrets and in `portcullis revoke --api-key-id`.

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use portcullis_policy::apikey::ApiKey;

mod cluster;
mod create;
mod manifest;
#[cfg(test)]
mod tests;
mod validate;

use manifest::Format;
/// Longest input `apikey id` reads.
const MAX_ID_INPUT: u64 = 4096;

/// `portcullis apikey ...`
#[derive(clap::Subcommand, Debug)]
#[allow(clippy::large_enum_variant)] // parsed once per process; boxing buys nothing
pub enum ApiKeyCommand {
    /// Create an API key: print it once, and make the Secret that holds its SHA-256.
    ///
    /// The key is drawn from the operating system's CSPRNG. It is shown once and stored
    /// nowhere: the Secret (type portcullis.dev/api-key, label `portcullis.dev/api-key:
    /// "true"` plus each --label) holds the key's id, the SHA-256 of the whole key, the
    /// consumer, the scopes, createdAt and, if given, expiresAt. A TokenPolicy accepts the
    /// key when its spec.apiKeys.selector.matchLabels match the Secret's labels.
    ///
    /// Where the Secret goes (at least one): --apply creates it in the cluster (kubeconfig
    /// or in-cluster config; an existing Secret is never replaced); --write FILE writes it
    /// to a file (mode 0600; YAML, or JSON for a .json FILE or with -o json); -o yaml|json
    /// prints it on stdout.
    ///
    /// Where the key goes: to --print-key-to FILE if given (a new file, mode 0600);
    /// otherwise to stdout, alone on its line; but when stdout carries the manifest (-o),
    /// to stderr, after a "shown once" note. So `portcullis apikey create --consumer acme
    /// -o yaml | kubectl apply -f -` puts only the key on the terminal, and `KEY=$(portcullis
    /// apikey create --consumer acme --apply)` captures only the key. Notes go to stderr.
    /// If stderr is logged, use --print-key-to.
    ///
    /// Rotation: --rotate OLD_SECRET --overlap 24h also sets the old key's expiresAt to
    /// now + 24h (never later than an expiry it already has), so its clients have a day to
    /// switch; the new Secret inherits the old one's labels, so the same TokenPolicies
    /// select it. With --apply the old Secret is read from the cluster and patched (only if
    /// unchanged since it was read), after the new one is created. Without --apply, give
    /// the old Secret as --rotate-from FILE (`kubectl get secret OLD -o yaml`): the re-dated
    /// old Secret is written and printed after the new one (a second YAML document, or a
    /// JSON List).
    ///
    /// Examples:
    ///   portcullis apikey create --consumer acme --scope orders:read --label tier=gold -n shop --apply
    ///   portcullis apikey create --consumer acme --scopes "orders:read orders:write" --expires-in 90d -o yaml > acme.yaml
    ///   portcullis apikey create --consumer acme -n shop --apply --rotate apikey-acme-3fzk9qxw2blm --overlap 24h
    #[command(verbatim_doc_comment)]
    Create(CreateArgs),
    /// Check an API key's checksum and print its id and SHA-256 (exit 1 if malformed).
    ///
    /// For a leaked key: the id names its Secret (data keyId; by default the Secret is
    /// named apikey-<consumer>-<id in lowercase>) and revokes it at once, without touching
    /// the Secret: `portcullis revoke --policy NS/NAME --api-key-id ID`. The key itself is
    /// never printed.
    Id(IdArgs),
}

/// Arguments of `portcullis apikey create`.
#[derive(clap::Args, Debug, Clone)]
#[command(group(
    clap::ArgGroup::new("destination")
        .required(true)
        .multiple(true)
        .args(["output", "apply", "write"])
))]
pub struct CreateArgs {
    /// The consumer the key belongs to: the principal's subject at the gateway.
    #[arg(long, value_name = "NAME")]
    pub consumer: String,
    /// A scope to grant; repeat for more.
    #[arg(long = "scope", value_name = "SCOPE")]
    pub scope: Vec<String>,
    /// Scopes to grant, space-separated (added to --scope).
    #[arg(long, value_name = "SCOPES")]
    pub scopes: Option<String>,
    /// The key stops working this long after now (e.g. 90d, 12h, 30m).
    #[arg(long, value_name = "DURATION", value_parser = days_or_duration, conflicts_with = "expires_at")]
    pub expires_in: Option<Duration>,
    /// The key stops working at this RFC 3339 instant (to the second).
    #[arg(long, value_name = "RFC3339")]
    pub expires_at: Option<String>,
    /// Namespace of the Secret (that of the TokenPolicies that should accept the key).
    /// Default: kubectl's (the kubeconfig context's) namespace.
    #[arg(long, short = 'n', value_name = "NS")]
    pub namespace: Option<String>,
    /// Name of the Secret. Default: apikey-<consumer>-<key id in lowercase>, made a
    /// DNS-1123 name.
    #[arg(long, value_name = "SECRET_NAME")]
    pub name: Option<String>,
    /// A label on the Secret, KEY=VALUE, for TokenPolicies' apiKeys.selector.matchLabels
    /// to select; repeat for more.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = validate::parse_label)]
    pub labels: Vec<(String, String)>,
    /// Print the Secret manifest on stdout in this format (the key then goes to stderr).
    #[arg(long, short = 'o', value_enum, value_name = "FORMAT")]
    pub output: Option<Format>,
    /// Create the Secret in the cluster.
    #[arg(long)]
    pub apply: bool,
    /// Write the Secret manifest to FILE (mode 0600).
    #[arg(long, value_name = "FILE")]
    pub write: Option<PathBuf>,
    /// Write the key to FILE (created, mode 0600; an existing file is refused) instead of
    /// showing it.
    #[arg(long, value_name = "FILE")]
    pub print_key_to: Option<PathBuf>,
    /// Rotate: the key replaces the one in this Secret, which expires after --overlap.
    #[arg(long, value_name = "OLD_SECRET_NAME", requires = "overlap")]
    pub rotate: Option<String>,
    /// With --rotate: how long the old key keeps working (e.g. 24h, 7d; 0s: stop it now).
    #[arg(long, value_name = "DURATION", value_parser = days_or_duration, requires = "rotate")]
    pub overlap: Option<Duration>,
    /// With --rotate and without --apply: the old Secret's manifest (YAML or JSON, e.g.
    /// from kubectl get secret OLD -o yaml).
    #[arg(
        long,
        value_name = "FILE",
        requires = "rotate",
        conflicts_with = "apply"
    )]
    pub rotate_from: Option<PathBuf>,
}

/// Arguments of `portcullis apikey id`.
#[derive(clap::Args, Debug, Clone)]
pub struct IdArgs {
    /// The key (a leading `Bearer ` is ignored), or `-` to read it from stdin, which is also
    /// the default. Prefer stdin: arguments end up in shell history and `ps`.
    #[arg(value_name = "KEY")]
    pub key: Option<String>,
}

/// A duration as `portcullis` takes them (30s, 5m, 12h, 1h30m), or whole days (`90d`):
/// keys live for days.
fn days_or_duration(s: &str) -> Result<Duration, String> {
    match s.strip_suffix('d').map(str::parse::<u32>) {
        Some(Ok(days)) => Ok(Duration::from_secs(u64::from(days) * 86_400)),
        _ => crate::duration(s),
    }
}

/// Runs an `apikey` subcommand.
pub fn run(cmd: ApiKeyCommand) -> anyhow::Result<()> {
    match cmd {
        ApiKeyCommand::Create(args) => crate::runtime()?.block_on(create::create(args)),
        ApiKeyCommand::Id(args) => {
            let input = match args.key.as_deref() {
                None | Some("-") => {
                    let mut buf = String::new();
                    std::io::stdin()
                        .take(MAX_ID_INPUT)
                        .read_to_string(&mut buf)
                        .context("reading the key from stdin")?;
                    buf
                }
                Some(k) => k.to_owned(),
            };
            print!("{}", id_report(&input)?);
            Ok(())
        }
    }
}

/// What `apikey id` prints for `input`: the key's id and SHA-256.
fn id_report(input: &str) -> anyhow::Result<String> {
    let s = input.trim();
    let s = match s.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
        _ => s,
    };
    if s.is_empty() {
        bail!("no key given: pass it as an argument, or on stdin with `-`");
    }
    let key = ApiKey::parse(s).map_err(|e| anyhow::anyhow!("not a valid API key: {e}"))?;
    Ok(format!(
        "keyId:  {}\nsha256: {}\n",
        key.id(),
        manifest::hex(&key.sha256())
    ))
}
