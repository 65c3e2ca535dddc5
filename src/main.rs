//! The composition root: parses the command line and wires config, data path and control plane.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "ringlb", version, about = "High-availability L4 TCP load balancer on io_uring")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the load balancer.
    Run {
        #[arg(short = 'c', long = "config", default_value = "conf/ringlb.toml")]
        config: PathBuf,
    },
    /// Validate a configuration file and print a summary.
    Check {
        #[arg(short = 'c', long = "config", default_value = "conf/ringlb.toml")]
        config: PathBuf,
    },
    /// A tiny HTTP/1.1 keep-alive server answering every request with its name.
    DemoBackend {
        #[arg(long)]
        bind: String,
        #[arg(long)]
        name: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::DemoBackend { bind, name } => match ringlb::demo_backend::run(&bind, &name) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ringlb demo-backend: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Run { .. } | Command::Check { .. } => {
            eprintln!("ringlb: not yet implemented");
            ExitCode::FAILURE
        }
    }
}
