//! Reads what a target process costs from /proc: CPU time, threads, io_uring kernel workers,
//! resident memory, and the kernel's slab total.
//!
//! A target is a process tree: the pid given on the command line plus all its descendants, so
//! that nginx (a master and its workers) is measured like a single-process proxy.
//! CPU time is `utime + stime` of /proc/PID/stat, which for a thread-group leader covers every
//! thread of the process, the threads that have already exited, and io_uring's `iou-wrk-*` and
//! `iou-sqp-*` kernel workers (they are threads of the process and are listed in
//! /proc/PID/task). Read-only; it never signals or otherwise touches the processes it reads.

use std::collections::HashMap;
use std::fs;
use std::io;

use crate::stats::TargetStats;
use crate::BenchError;

/// One reading of a process tree.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    /// User plus system CPU seconds of every process of the tree since it started.
    pub cpu_s: f64,
    /// Threads of every process of the tree, io_uring workers included.
    pub threads: u64,
    /// Threads named `iou-wrk-*` or `iou-sqp-*`.
    pub io_workers: u64,
    /// Sum of VmRSS over the tree, KiB.
    pub rss_kib: u64,
    pub processes: u64,
}

/// Fields of /proc/PID/stat we use.
struct Stat {
    ppid: u32,
    ticks: u64,
    threads: u64,
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// Parses a /proc/PID/stat line. The command name sits in parentheses and may itself contain
/// spaces and parentheses, so fields are counted from the last `)`.
fn parse_stat(line: &str) -> Option<Stat> {
    let rest = &line[line.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state) of proc(5).
    let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    Some(Stat { ppid: field(4)? as u32, ticks: field(14)? + field(15)?, threads: field(20)? })
}

fn read_stat(pid: u32) -> io::Result<Stat> {
    let line = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat(&line).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("unreadable /proc/{pid}/stat")))
}

/// `pid` and all its live descendants.
pub fn tree(pid: u32) -> io::Result<Vec<u32>> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for entry in fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        let Some(p) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        // Processes exit while we scan; a vanished one is simply not part of the tree.
        if let Ok(stat) = read_stat(p) {
            children.entry(stat.ppid).or_default().push(p);
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        if let Some(kids) = children.get(&out[i]) {
            out.extend(kids);
        }
        i += 1;
    }
    Ok(out)
}

fn rss_kib(pid: u32) -> io::Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    Ok(kib_field(&status, "VmRSS:").unwrap_or(0))
}

fn io_workers(pid: u32) -> u64 {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| fs::read_to_string(t.path().join("comm")).ok())
        .filter(|comm| comm.starts_with("iou-wrk") || comm.starts_with("iou-sqp"))
        .count() as u64
}

/// Reads the whole tree rooted at `pid`. Fails only when `pid` itself is gone.
pub fn sample(pid: u32) -> io::Result<Sample> {
    read_stat(pid)?;
    let hz = clock_ticks_per_second();
    let mut s = Sample::default();
    for p in tree(pid)? {
        let Ok(stat) = read_stat(p) else { continue };
        s.cpu_s += stat.ticks as f64 / hz;
        s.threads += stat.threads;
        s.io_workers += io_workers(p);
        s.rss_kib += rss_kib(p).unwrap_or(0);
        s.processes += 1;
    }
    Ok(s)
}

/// Slab caches that grow with every open TCP connection: the socket itself, its inode and
/// file, epoll and io_uring entries, and packet heads. TIME_WAIT sockets are left out: they
/// expire during a run and belong to earlier runs.
pub const SOCKET_CACHES: &[&str] = &[
    "TCP",
    "TCPv6",
    "sock_inode_cache",
    "filp",
    "request_sock_TCP",
    "request_sock_TCPv6",
    "skbuff_head_cache",
    "skbuff_small_head",
    "skbuff_fclone_cache",
    "eventpoll_epi",
    "eventpoll_pwq",
    "io_kiocb",
];

/// Kernel memory read at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KernelMemory {
    /// `Slab:` of /proc/meminfo in KiB (machine-wide).
    pub slab_kib: u64,
    /// Bytes of active objects in [`SOCKET_CACHES`], from /proc/slabinfo (None when it cannot
    /// be read, as for an unprivileged user).
    pub socket_slab_b: Option<u64>,
}

pub fn kernel_memory() -> io::Result<KernelMemory> {
    let meminfo = fs::read_to_string("/proc/meminfo")?;
    let slab_kib = kib_field(&meminfo, "Slab:")
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no Slab in /proc/meminfo"))?;
    let socket_slab_b = fs::read_to_string("/proc/slabinfo").ok().map(|t| socket_slab(&t));
    Ok(KernelMemory { slab_kib, socket_slab_b })
}

/// Sums `active_objs * objsize` of the socket caches in a /proc/slabinfo text.
fn socket_slab(slabinfo: &str) -> u64 {
    slabinfo
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (name, active, size) = (f.first()?, f.get(1)?, f.get(3)?);
            if !SOCKET_CACHES.contains(name) {
                return None;
            }
            Some(active.parse::<u64>().ok()? * size.parse::<u64>().ok()?)
        })
        .sum()
}

fn kib_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Samples of the targets' process trees taken over a run.
pub struct TargetWatch {
    pids: Vec<u32>,
    start: Vec<Sample>,
    peak_threads: Vec<u64>,
    peak_io_workers: Vec<u64>,
}

impl TargetWatch {
    pub fn start(pids: &[u32]) -> Result<Self, BenchError> {
        let start =
            pids.iter().map(|&p| sample(p).map_err(|e| BenchError::Target(p, e))).collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            pids: pids.to_vec(),
            peak_threads: start.iter().map(|s| s.threads).collect(),
            peak_io_workers: start.iter().map(|s| s.io_workers).collect(),
            start,
        })
    }

    /// Records thread peaks; a target that has gone is an error.
    pub fn tick(&mut self) -> Result<Vec<Sample>, BenchError> {
        let mut out = Vec::new();
        for (i, &p) in self.pids.iter().enumerate() {
            let s = sample(p).map_err(|e| BenchError::Target(p, e))?;
            self.peak_threads[i] = self.peak_threads[i].max(s.threads);
            self.peak_io_workers[i] = self.peak_io_workers[i].max(s.io_workers);
            out.push(s);
        }
        Ok(out)
    }

    /// The cost of each target since `start`, per `units` completed units.
    pub fn finish(mut self, units: f64, unit: &str) -> Result<Vec<TargetStats>, BenchError> {
        let end = self.tick()?;
        Ok(self
            .pids
            .iter()
            .enumerate()
            .map(|(i, &pid)| {
                let cpu_s = end[i].cpu_s - self.start[i].cpu_s;
                TargetStats {
                    pid,
                    cpu_s,
                    cpu_s_per_unit: (units > 0.0).then(|| cpu_s / units),
                    unit: unit.to_string(),
                    threads_peak: self.peak_threads[i],
                    io_workers_peak: self.peak_io_workers[i],
                    processes: end[i].processes,
                    rss_kib: end[i].rss_kib,
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let line = "4242 (we(ird) name) S 17 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 123 4096 10 18446744073709551615";
        let s = parse_stat(line).unwrap_or_else(|| panic!("parse failed"));
        assert_eq!((s.ppid, s.ticks, s.threads), (17, 300, 3));
    }

    #[test]
    fn own_process_is_sampled_with_its_threads_and_cpu() {
        // Burn some CPU in a thread that exits before the second sample: its time must remain.
        let before = sample(std::process::id()).unwrap_or_else(|e| panic!("{e}"));
        // 100 ms of the thread's own CPU time, not of wall time: on a loaded machine the thread
        // may get a small share of a core (bounded by 10 s of wall time all the same).
        let burner = std::thread::spawn(|| {
            let start = std::time::Instant::now();
            let mut x = 0u64;
            while thread_cpu_s() < 0.1 && start.elapsed() < std::time::Duration::from_secs(10) {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        });
        let _ = burner.join();
        let after = sample(std::process::id()).unwrap_or_else(|e| panic!("{e}"));
        assert!(after.cpu_s - before.cpu_s >= 0.05, "{before:?} -> {after:?}");
        assert!(after.rss_kib > 0);
        assert_eq!(after.io_workers, 0);
    }

    fn thread_cpu_s() -> f64 {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: `ts` is a valid, writable timespec.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
        ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
    }

    #[test]
    fn children_belong_to_the_tree() {
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap_or_else(|e| panic!("{e}"));
        let members = tree(std::process::id()).unwrap_or_else(|e| panic!("{e}"));
        let _ = child.kill();
        let _ = child.wait();
        assert!(members.contains(&child.id()));
    }

    #[test]
    fn slab_is_readable() {
        assert!(kernel_memory().map(|m| m.slab_kib).unwrap_or(0) > 0);
    }

    #[test]
    fn socket_caches_are_summed_from_slabinfo() {
        let text = "slabinfo - version: 2.1\n\
            # name <active_objs> <num_objs> <objsize> ...\n\
            TCP 100 120 2368 13 8 : tunables 0 0 0\n\
            dentry 5000 5000 192 21 1 : tunables 0 0 0\n\
            filp 10 20 192 21 1 : tunables 0 0 0\n";
        assert_eq!(socket_slab(text), 100 * 2368 + 10 * 192);
    }
}
