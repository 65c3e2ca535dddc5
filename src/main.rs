//! The composition root: parses the command line and wires config, data path and control plane.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ringlb::admin::{self, AdminContext, AdminListener, Status};
use ringlb::config;
use ringlb::control::pidfile::{self, PidFile};
use ringlb::control::signals::{self, Signal};
use ringlb::control::{hostcheck, privdrop};
use ringlb::datapath::DataPath;
use ringlb::health::Prober;
use ringlb::metrics::Metrics;
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
        /// Log lines as human-readable text or as one JSON object per line.
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// Validate a configuration file and print a summary.
    Check {
        #[arg(short = 'c', long = "config", default_value = "conf/ringlb.toml")]
        config: PathBuf,
        /// Also check the host (limits, sysctls, io_uring) against the load the config allows.
        #[arg(long)]
        host: bool,
    },
    /// Turn /ready to 503 ("draining") on the running ringlb while it keeps serving everything,
    /// for a planned failover (POST /api/drain on its admin API).
    Drain {
        #[arg(short = 'c', long = "config", default_value = "conf/ringlb.toml")]
        config: PathBuf,
        /// The admin API's address, instead of the config's admin.bind.
        #[arg(long, value_name = "ADDR")]
        admin: Option<SocketAddr>,
        /// End a drain: /ready answers 200 again (POST /api/undrain).
        #[arg(long)]
        cancel: bool,
    },
    /// Ask the running ringlb to reload its configuration (SIGHUP to the pid in
    /// runtime.pid_file).
    Reload {
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
        Command::Run { config, log_format } => {
            init_logging(log_format);
            match run(&config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    error!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Check { config, host } => check(&config, host),
        Command::Drain { config, admin, cancel } => drain(&config, admin, cancel),
        Command::Reload { config } => reload(&config),
        Command::DemoBackend { bind, name } => match ringlb::demo_backend::run(&bind, &name) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ringlb demo-backend: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

/// `ringlb check`: validate the config (like `nginx -t`), and with `--host` the host too.
fn check(path: &Path, host: bool) -> ExitCode {
    let config = match config::load(path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    print!("{}", config.summary());
    if !host {
        return ExitCode::SUCCESS;
    }
    if let Err(e) = hostcheck::raise_nofile_limit() {
        eprintln!("warning: cannot raise the descriptor limit: {e}");
    }
    let report = hostcheck::check_host(u64::from(config.runtime.max_connections), config.runtime.workers);
    print!("{}", report.render_table());
    if report.fatal() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// How long `ringlb drain` waits for the admin API.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// `ringlb drain`: POST /api/drain (or /api/undrain) to the running ringlb's admin API.
fn drain(path: &Path, admin: Option<SocketAddr>, cancel: bool) -> ExitCode {
    let target = match admin {
        Some(addr) => Ok(addr),
        None => config::load(path)
            .map_err(|e| e.to_string())
            .and_then(|c| admin::client::target(c.admin.bind).map_err(|e| format!("{}: {e}", path.display()))),
    };
    let endpoint = if cancel { "/api/undrain" } else { "/api/drain" };
    let result = target.and_then(|addr| admin::client::post(addr, endpoint, DRAIN_TIMEOUT).map_err(|e| e.to_string()));
    match result {
        Ok((200, _)) if cancel => {
            println!("drain ended: /ready answers 200 again when every pool has a usable server");
            ExitCode::SUCCESS
        }
        Ok((200, _)) => {
            println!("draining: /ready answers 503 while every connection is still served");
            ExitCode::SUCCESS
        }
        Ok((status, body)) => {
            eprintln!("ringlb drain: the admin API answered {status}: {}", body.trim_end());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("ringlb drain: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `ringlb reload`: SIGHUP to the ringlb whose pid is in the config's runtime.pid_file.
fn reload(path: &Path) -> ExitCode {
    let config = match config::load(path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let Some(pid_file) = &config.runtime.pid_file else {
        eprintln!(
            "ringlb reload: {}: runtime.pid_file is not set, so the running ringlb cannot be found",
            path.display()
        );
        return ExitCode::FAILURE;
    };
    match pidfile::signal_reload(pid_file) {
        Ok(pid) => {
            println!("sent SIGHUP to ringlb (pid {pid})");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ringlb reload: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr; `RUST_LOG` filters them (default `info`). Colours only on a terminal, and
/// never with `NO_COLOR` set.
fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => {
            let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            builder.with_ansi(ansi).init();
        }
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
}

/// The host check at start-up: one warning per gap; only an unusable io_uring stops ringlb
/// (the data path sizes itself to the descriptor limit it has).
fn preflight(config: &config::Config) -> Result<(), String> {
    if let Err(e) = hostcheck::raise_nofile_limit() {
        warn!("cannot raise the descriptor limit: {e}");
    }
    let report = hostcheck::check_host(u64::from(config.runtime.max_connections), config.runtime.workers);
    for line in report.warnings() {
        warn!("host: {line}");
    }
    if report.io_uring_unusable() {
        return Err("io_uring is not usable on this host; run `ringlb check --host` for details".to_string());
    }
    Ok(())
}

/// `ringlb run`: start the workers, then serve signals until a clean stop.
fn run(path: &Path) -> Result<(), String> {
    signals::install().map_err(|e| format!("cannot set up signals: {e}"))?;
    let mut config = config::load(path).map_err(|e| e.to_string())?;
    let metrics = Arc::new(Metrics::new(&config));
    // The prober publishes the first table (initial server states) and is its only writer.
    let prober = Prober::new(&config, &metrics).map_err(|e| e.to_string())?;
    let table = prober.table();
    let listeners = DataPath::bind(&config).map_err(|e| e.to_string())?;
    let admin = AdminListener::bind(config.admin.bind).map_err(|e| e.to_string())?;
    if let Some(user) = &config.runtime.user {
        privdrop::drop_privileges(user).map_err(|e| format!("runtime.user: {e}"))?;
    }
    preflight(&config)?;
    // After the privilege drop, so that the account ringlb runs as can remove it at exit.
    let pid_file = config.runtime.pid_file.as_deref().map(PidFile::create).transpose().map_err(|e| e.to_string())?;
    let mut datapath =
        DataPath::start(&config, listeners, table.clone(), Arc::clone(&metrics)).map_err(|e| e.to_string())?;
    let status = Arc::new(Status::default());
    let servers = prober.control();
    let prober = prober.spawn().map_err(|e| e.to_string())?;
    let admin = admin
        .spawn(AdminContext { table, metrics: Arc::clone(&metrics), status: Arc::clone(&status), servers })
        .map_err(|e| e.to_string())?;
    for l in &datapath.bound {
        info!("listener {} bound {} -> pool {}", l.name, l.addr, l.pool);
    }
    for p in &config.pools {
        let servers: Vec<String> = p.servers.iter().map(|s| format!("{} ({})", s.name, s.resolved)).collect();
        info!("pool {}: {} over {} servers: {}", p.name, p.balance.name(), p.servers.len(), servers.join(", "));
    }
    let wanted = u64::from(config.runtime.max_connections);
    if datapath.capacity < wanted {
        warn!(
            "the {} workers can hold {} connections, below runtime.max_connections = {wanted}: each worker's \
             io_uring file table is capped by RLIMIT_NOFILE; raise it (LimitNOFILE) or add workers",
            config.runtime.workers, datapath.capacity
        );
    }
    info!("admin listening on {} (/metrics, /live, /ready, /api/pools)", admin.addr());
    if let Some(file) = &pid_file {
        info!("pid {} written to {}", std::process::id(), file.path().display());
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
                status.set_stopping();
                datapath.shutdown();
                stopping = true;
            }
            Some(Signal::Reload) if !stopping => {
                info!("SIGHUP: reloading {}", path.display());
                config = ringlb::reload::reload(path, config, &mut datapath, &prober, &metrics);
            }
            _ => {}
        }
        if datapath.any_finished() {
            break;
        }
    }
    prober.stop();
    let joined = datapath.join();
    admin.stop();
    drop(pid_file);
    joined.map_err(|e| e.to_string())?;
    if !stopping {
        return Err("a worker stopped unexpectedly".to_string());
    }
    info!("stopped");
    Ok(())
}
