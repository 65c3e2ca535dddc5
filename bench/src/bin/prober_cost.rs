//! What the health prober costs: `ringlb run` with one pool of N servers (listening sockets on
//! 127.0.0.2-127.0.0.9 held by this program) given TCP checks every interval, and the CPU time of
//! its `ringlb-prober` thread from /proc/PID/task/TID/stat (and schedstat) over a measured window.
//! The checks' resets stay queued at the listeners until accepted, so this program accepts them
//! (and counts them); the prober's own count of checks comes from its metrics (the admin
//! endpoint's /metrics).
//!
//! For comparison it then makes the same connections itself, from one thread, at the same rate:
//! a blocking connect and a reset per check, ten every 10 ms, with no event loop at all. On
//! loopback the kernel does the TCP work of both ends in the connecting thread, so this is about
//! the least a TCP check can cost here.
//!
//! Usage: prober-cost [--ringlb PATH] [--servers N] [--seconds S] [--interval DURATION]
//! (defaults: target/release/ringlb, 1000, 30, "1s"). Loopback only; everything it starts is
//! stopped before it exits.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

/// Clock ticks per second of the utime/stime fields in /proc (USER_HZ, 100 on Linux).
const USER_HZ: f64 = 100.0;

struct Args {
    ringlb: String,
    servers: usize,
    seconds: u64,
    interval: String,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args { ringlb: "target/release/ringlb".into(), servers: 1000, seconds: 30, interval: "1s".into() };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--ringlb" => args.ringlb = value,
            "--servers" => args.servers = value.parse().map_err(|_| format!("bad --servers {value}"))?,
            "--seconds" => args.seconds = value.parse().map_err(|_| format!("bad --seconds {value}"))?,
            "--interval" => args.interval = value,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(args)
}

/// Kills ringlb on every way out.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `"1s"`, `"500ms"`: the interval in seconds, for the expected check rate.
fn interval_secs(text: &str) -> Option<f64> {
    if let Some(ms) = text.strip_suffix("ms") {
        return ms.parse::<f64>().ok().map(|ms| ms / 1000.0);
    }
    text.strip_suffix('s')?.parse().ok()
}

/// Accepts (and closes) every connection queued at `listeners`, counting them.
fn accept_all(listeners: &[TcpListener], accepted: &AtomicU64) {
    for listener in listeners {
        while listener.accept().is_ok() {
            accepted.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// One reading of the counters.
struct Sample {
    at: Instant,
    /// (utime, stime) of the prober thread, in ticks.
    prober: (u64, u64),
    /// (utime, stime) of the whole process, in ticks.
    process: (u64, u64),
    prober_ns: u64,
    checks: u64,
    /// (checks, seconds spent in them, checks of 100 ms or less) by the prober's own count.
    done: Option<(f64, f64, f64)>,
}

/// Over every server, from the admin endpoint's /metrics: checks done, seconds spent in them, and
/// how many of them took 100 ms or less (`ringlb_server_check_duration_seconds`).
fn scrape_checks(admin: SocketAddr) -> Result<(f64, f64, f64), String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&admin, Duration::from_secs(5))
        .map_err(|e| format!("admin {admin}: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n").map_err(|e| e.to_string())?;
    let mut text = String::new();
    stream.read_to_string(&mut text).map_err(|e| format!("admin {admin}: {e}"))?;
    let sum = |name: &str| -> f64 {
        text.lines()
            .filter(|line| line.starts_with(name))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let quick: f64 = text
        .lines()
        .filter(|line| line.starts_with("ringlb_server_check_duration_seconds_bucket{") && line.contains("le=\"0.1\""))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    let name = "ringlb_server_check_duration_seconds";
    Ok((sum(&format!("{name}_count{{")), sum(&format!("{name}_sum{{")), quick))
}

/// (utime, stime), in ticks, of /proc/PID/task/TID/stat (or /proc/PID/stat when `tid` is None).
fn cpu_split(pid: u32, tid: Option<&str>) -> Result<(u64, u64), String> {
    let path = match tid {
        Some(tid) => format!("/proc/{pid}/task/{tid}/stat"),
        None => format!("/proc/{pid}/stat"),
    };
    let stat = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.rsplit_once(')').map(|(_, rest)| rest).ok_or("malformed stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).ok_or("malformed stat");
    Ok((ticks(11)?, ticks(12)?))
}

/// Nanoseconds the thread has run, from /proc/PID/task/TID/schedstat: exact, where stat's
/// utime and stime are sampled at each scheduler tick.
fn run_ns(pid: u32, tid: &str) -> Result<u64, String> {
    let path = format!("/proc/{pid}/task/{tid}/schedstat");
    let stat = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    stat.split_whitespace().next().and_then(|ns| ns.parse().ok()).ok_or_else(|| format!("{path}: malformed"))
}

/// Connects to `addrs` in turn, ten every 10 ms, each a blocking connect then a reset, for
/// `span`; returns this thread's CPU use in % of a core, the connects per second and how many.
fn bare_connects(addrs: &[SocketAddr], span: Duration) -> Result<(f64, f64, u64), String> {
    let own = || -> Result<u64, String> {
        let stat = std::fs::read_to_string("/proc/thread-self/schedstat").map_err(|e| e.to_string())?;
        stat.split_whitespace().next().and_then(|ns| ns.parse().ok()).ok_or_else(|| "malformed schedstat".to_owned())
    };
    let (began, ns0) = (Instant::now(), own()?);
    let mut made = 0u64;
    for tick in 0u32.. {
        let due = began + Duration::from_millis(10) * tick;
        if due >= began + span {
            break;
        }
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        for _ in 0..10 {
            let addr = addrs[made as usize % addrs.len()];
            let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(|e| e.to_string())?;
            socket.set_linger(Some(Duration::ZERO)).map_err(|e| e.to_string())?;
            socket.connect(&addr.into()).map_err(|e| format!("connect {addr}: {e}"))?;
            made += 1;
        }
    }
    let elapsed = began.elapsed().as_secs_f64();
    Ok(((own()? - ns0) as f64 / 1e9 / elapsed * 100.0, made as f64 / elapsed, made))
}

fn prober_tid(pid: u32) -> Result<String, String> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).map_err(|e| e.to_string())?;
    let mut names = Vec::new();
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() == "ringlb-prober" {
            return Ok(task.file_name().to_string_lossy().into_owned());
        }
        names.push(comm.trim_end().to_owned());
    }
    Err(format!("no ringlb-prober thread among {names:?}"))
}

fn main() {
    if let Err(e) = run() {
        eprintln!("prober-cost: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let args = parse_args()?;
    let mut listeners = Vec::with_capacity(args.servers);
    for i in 0..args.servers {
        let ip = format!("127.0.0.{}", 2 + i % 8);
        let listener = TcpListener::bind((ip.as_str(), 0)).map_err(|e| format!("bind {ip}: {e}"))?;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        listeners.push(listener);
    }
    let mut config = format!(
        "[runtime]\nworkers = 1\n[admin]\nbind = \"127.0.0.1:0\"\n[listeners.web]\nbind = \"127.0.0.1:0\"\npool = \"many\"\n\
         [pools.many.health]\ncheck = \"tcp\"\ninterval = \"{}\"\n",
        args.interval
    );
    let addrs: Vec<SocketAddr> =
        listeners.iter().map(|l| l.local_addr()).collect::<Result<_, _>>().map_err(|e| e.to_string())?;
    for addr in &addrs {
        config.push_str(&format!("[[pools.many.servers]]\naddr = \"{addr}\"\n"));
    }
    let file = std::env::temp_dir().join(format!("ringlb-prober-cost-{}.toml", std::process::id()));
    std::fs::write(&file, config).map_err(|e| e.to_string())?;

    // The checks reset their connections, which stay queued until accepted: accept and count.
    let accepted = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let listeners = Arc::new(listeners);
    let drain = {
        let (listeners, accepted, stop) = (listeners.clone(), accepted.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                accept_all(&listeners, &accepted);
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };

    let child = Command::new(&args.ringlb)
        .args(["run", "-c"])
        .arg(&file)
        .env("NO_COLOR", "1")
        // Failed checks are logged at debug level; counted below.
        .env("RUST_LOG", "info,ringlb::health=debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", args.ringlb))?;
    let mut ringlb = Running(child);
    let pid = ringlb.0.id();
    let stderr = ringlb.0.stderr.take().ok_or("no stderr")?;
    let downs = Arc::new(AtomicU64::new(0));
    let admin: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
    // Reason -> count of failed checks.
    let failures: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    {
        let (downs, failures, admin) = (downs.clone(), failures.clone(), admin.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("admin listening on ").nth(1) {
                    let addr = addr.split_whitespace().next().and_then(|a| a.parse().ok());
                    *admin.lock().unwrap_or_else(|e| e.into_inner()) = addr;
                }
                if line.contains("ringlb running with") {
                    let _ = ready_tx.send(());
                }
                if line.contains("-> down") {
                    downs.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(rest) = line.split("check failed: ").nth(1) {
                    let reason = rest.split(';').next().unwrap_or(rest).to_owned();
                    *failures.lock().unwrap_or_else(|e| e.into_inner()).entry(reason).or_default() += 1;
                }
                if line.contains("panicked") || line.contains("ERROR") {
                    eprintln!("ringlb: {line}");
                }
            }
        });
    }
    ready_rx.recv_timeout(Duration::from_secs(10)).map_err(|_| "ringlb did not start")?;
    let tid = prober_tid(pid)?;
    let admin_addr = *admin.lock().unwrap_or_else(|e| e.into_inner());
    // Let the first round of checks (spread over one interval) start.
    std::thread::sleep(Duration::from_secs(3));

    let sample = || -> Result<Sample, String> {
        Ok(Sample {
            at: Instant::now(),
            prober: cpu_split(pid, Some(&tid))?,
            process: cpu_split(pid, None)?,
            prober_ns: run_ns(pid, &tid)?,
            done: admin_addr.map(scrape_checks).transpose()?,
            // Counted up to now, not up to the drain thread's last pass.
            checks: {
                accept_all(&listeners, &accepted);
                accepted.load(Ordering::Relaxed)
            },
        })
    };
    let first = sample()?;
    std::thread::sleep(Duration::from_secs(args.seconds));
    let last = sample()?;

    drop(ringlb);
    let _ = std::fs::remove_file(&file);

    let elapsed = last.at.duration_since(first.at).as_secs_f64();
    let percent = |ticks: u64| ticks as f64 / USER_HZ / elapsed * 100.0;
    let (user, system) = (last.prober.0 - first.prober.0, last.prober.1 - first.prober.1);
    let seen = (last.checks - first.checks) as f64;
    // The prober's own count, from its metrics; the servers' count when there is none.
    let done = match (first.done, last.done) {
        (Some(a), Some(b)) => Some((b.0 - a.0, b.1 - a.1, b.2 - a.2)),
        _ => None,
    };
    let checks = done.map_or(seen, |(checks, ..)| checks).max(1.0);
    println!("servers {}, tcp checks every {}, measured over {elapsed:.1} s", args.servers, args.interval);
    if let Some((checks, seconds, quick)) = done {
        println!(
            "checks done (the prober's count): {:.0}/s, {:.2} ms each on average, {:.0} over 100 ms",
            checks / elapsed,
            seconds / checks.max(1.0) * 1000.0,
            checks - quick
        );
    }
    println!("check connections seen by the servers: {:.0}/s", seen / elapsed);
    println!("servers marked down: {}", downs.load(Ordering::Relaxed));
    let failures = failures.lock().unwrap_or_else(|e| e.into_inner()).clone();
    println!("failed checks over the whole run: {} {failures:?}", failures.values().sum::<u64>());
    println!(
        "ringlb-prober thread (stat): {:.2} % of one core (user {:.2} %, system {:.2} %)",
        percent(user + system),
        percent(user),
        percent(system)
    );
    let ns = last.prober_ns - first.prober_ns;
    println!(
        "ringlb-prober thread (schedstat): {:.2} % of one core, {:.1} us per check",
        ns as f64 / 1e9 / elapsed * 100.0,
        ns as f64 / 1e3 / checks
    );
    let process = (last.process.0 + last.process.1) - (first.process.0 + first.process.1);
    println!("whole ringlb process (stat): {:.2} % of one core", percent(process));
    accept_all(&listeners, &accepted);
    let before = accepted.load(Ordering::Relaxed);
    let (floor, rate, made) = bare_connects(&addrs, Duration::from_secs(args.seconds.min(10)))?;
    accept_all(&listeners, &accepted);
    let bare_seen = accepted.load(Ordering::Relaxed) - before;
    println!(
        "bare blocking connects at {rate:.0}/s from one thread (schedstat): {floor:.2} % of one core, {:.1} us per \
         connect ({bare_seen} of {made} seen by the servers)",
        floor * 1e4 / rate
    );
    stop.store(true, Ordering::Relaxed);
    let _ = drain.join();
    let expected = interval_secs(&args.interval).map(|secs| args.servers as f64 / secs);
    let short = |rate: f64, wanted: f64| rate < 0.97 * wanted;
    if expected.is_some_and(|e| short(checks / elapsed, e) || short(seen / elapsed, e)) || short(rate, 1000.0) {
        // On a saturated host the kernel defers loopback packet processing to ksoftirqd: part of
        // the TCP work is then charged to no thread here, and the servers miss handshakes whose
        // reset overtook them.
        println!("note: fewer checks, connections or connects than asked for: the host is saturated; discard this run");
    }
    Ok(())
}
