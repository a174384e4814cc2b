//! `portcullis`: the one binary of the Portcullis gateway.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// Portcullis: a Kubernetes-native API gateway that makes bearer tokens safe to reuse.
#[derive(Parser, Debug)]
#[command(name = "portcullis", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the ApiRoute and TokenPolicy CRDs as YAML (or write them, one file each, to --dir).
    Crd {
        /// Write `apiroutes.portcullis.dev.yaml` and `tokenpolicies.portcullis.dev.yaml` here
        /// instead of printing.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd { dir } => crd(dir),
    }
}

fn crd(dir: Option<PathBuf>) -> anyhow::Result<()> {
    match dir {
        None => print!("{}", portcullis_api::crds_yaml()?),
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            for (name, yaml) in portcullis_api::crd_files()? {
                let path = dir.join(name);
                std::fs::write(&path, yaml)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
    }
    Ok(())
}
