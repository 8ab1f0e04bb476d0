//! The `ember` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use ember::memory::{map_file, mtree_text, MtreeOptions};

#[derive(Parser)]
#[command(name = "ember", version, about = "A lightweight KVM microVM monitor")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print a memory map as QEMU's `info mtree` does.
    Mtree {
        /// The memory map, a TOML file (see resources/maps/).
        #[arg(long, value_name = "FILE")]
        map: PathBuf,
        /// Print the flattened views (`info mtree -f`).
        #[arg(short = 'f', long = "flatview")]
        flatview: bool,
        /// Also print disabled regions (`info mtree -D`).
        #[arg(short = 'D', long = "disabled")]
        disabled: bool,
    },
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Mtree {
            map,
            flatview,
            disabled,
        } => {
            let loaded = map_file::load_file(&map)
                .with_context(|| format!("memory map {}", map.display()))?;
            let text = mtree_text(&loaded.tree, MtreeOptions { flatview, disabled });
            print!("{text}");
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ember: {e:#}");
            ExitCode::FAILURE
        }
    }
}
