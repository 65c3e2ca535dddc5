//! The composition root: parses the command line and wires config, data path and control plane.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use clap::{Parser, Subcommand};
use ringlb::config;
use ringlb::control::signals::{self, Signal};
use ringlb::datapath::DataPath;
use ringlb::table::{BackendTable, SharedTable};
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

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
        Command::Run { config } => {
            init_logging();
            match run(&config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    error!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Check { config } => match ringlb::config::load(&config) {
            Ok(config) => {
                print!("{}", config.summary());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::DemoBackend { .. } => {
            eprintln!("ringlb: not yet implemented");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

/// `ringlb run`: start the workers, then serve signals until a clean stop.
fn run(path: &Path) -> Result<(), String> {
    signals::install().map_err(|e| format!("cannot set up signals: {e}"))?;
    let config = config::load(path).map_err(|e| e.to_string())?;
    let table: SharedTable = Arc::new(ArcSwap::from_pointee(BackendTable::from_config(&config)));
    let datapath = DataPath::start(&config, table).map_err(|e| e.to_string())?;
    for l in &datapath.bound {
        info!("listener {} bound {} -> pool {}", l.name, l.addr, l.pool);
    }
    for p in &config.pools {
        let servers: Vec<String> = p.servers.iter().map(|s| format!("{} ({})", s.name, s.resolved)).collect();
        info!("pool {}: {:?} over {} servers: {}", p.name, p.balance, p.servers.len(), servers.join(", "));
    }
    info!("ringlb running with {} workers", config.runtime.workers);
    let mut stopping = false;
    loop {
        match signals::wait(Duration::from_millis(200)) {
            Some(Signal::Terminate) if !stopping => {
                info!(
                    "stopping: listeners closed, {} open connections get up to {:?}",
                    datapath.active_connections(),
                    config.runtime.shutdown_grace
                );
                datapath.shutdown();
                stopping = true;
            }
            Some(Signal::Reload) => warn!("SIGHUP: configuration reload is not supported yet; ignored"),
            _ => {}
        }
        if datapath.any_finished() {
            break;
        }
    }
    datapath.join().map_err(|e| e.to_string())?;
    if !stopping {
        return Err("a worker stopped unexpectedly".to_string());
    }
    info!("stopped");
    Ok(())
}
