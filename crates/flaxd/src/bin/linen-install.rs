//! `linen-install`: the image's install step (the DaemonSet's init container). Copies the CNI
//! plugins the image carries (`linen` and the reference plugins it chains) into the host's
//! CNI `bin` directory, each atomically (a temporary file in the same directory, renamed
//! over the old one), so an ADD in flight never runs a half-written binary nor fails with
//! ETXTBSY. It writes no conflist: flaxd writes that once the node is ready (its bridge is
//! built and its pod subnet known), so the runtime never calls a plugin that cannot work.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;

/// Installs Linen's CNI plugins into the host's CNI bin directory, atomically.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The plugins to install (every regular file in it).
    #[arg(long, env = "LINEN_INSTALL_FROM", default_value = "/opt/linen/cni-bin")]
    from: PathBuf,
    /// The host's CNI bin directory, as mounted in the container.
    #[arg(long, env = "LINEN_INSTALL_TO", default_value = "/host/opt/cni/bin")]
    to: PathBuf,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let done = flaxd::linen::install::install_dir(&args.from, &args.to).with_context(|| {
        format!(
            "installing the plugins of {} into {}",
            args.from.display(),
            args.to.display()
        )
    })?;
    anyhow::ensure!(!done.is_empty(), "no plugins in {}", args.from.display());
    for i in &done {
        let what = if i.written { "installed" } else { "unchanged" };
        eprintln!("linen-install: {what} {}", args.to.join(&i.name).display());
    }
    Ok(())
}
