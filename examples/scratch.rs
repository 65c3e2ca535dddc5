use arc_swap::ArcSwap;
use ringlb::config::*;
use ringlb::control::signals;
use ringlb::datapath::DataPath;
use ringlb::table::BackendTable;
use std::sync::Arc;
use std::time::Duration;

fn main() {
    tracing_subscriber::fmt().with_env_filter(std::env::var("RUST_LOG").unwrap_or("info".into())).init();
    signals::install().unwrap();
    let args: Vec<String> = std::env::args().collect();
    let bind = args[1].parse().unwrap();
    let servers = args[2..]
        .iter()
        .map(|a| ServerConfig { name: a.clone(), addr: a.clone(), resolved: a.parse().unwrap(), weight: 1 })
        .collect();
    let cfg = Config {
        path: "x".into(),
        runtime: RuntimeConfig { workers: 2, max_connections: 100000, shutdown_grace: Duration::from_secs(5) },
        admin: AdminConfig { bind: "127.0.0.1:9900".parse().unwrap() },
        listeners: vec![ListenerConfig { name: "web".into(), bind, pool: "web".into(), max_connections: 100000 }],
        pools: vec![PoolConfig {
            name: "web".into(),
            balance: Balance::RoundRobin,
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(60),
            retries: 2,
            servers,
        }],
    };
    let table = Arc::new(ArcSwap::from_pointee(BackendTable::from_config(&cfg)));
    let dp = DataPath::start(&cfg, table).unwrap();
    for l in &dp.bound {
        eprintln!("listener {} bound {} -> pool {}", l.name, l.addr, l.pool);
    }
    eprintln!("ringlb running with 2 workers");
    loop {
        if let Some(_) = signals::wait(Duration::from_millis(200)) {
            dp.shutdown();
        }
        if dp.any_finished() {
            break;
        }
    }
    dp.join().unwrap();
}
