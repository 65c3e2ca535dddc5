//! Reading the live host: /proc/sys values, resource limits, capabilities and the kernel release.
//!
//! Owns the parsers of those texts (pure, unit-tested) and the one function that gathers them.
//! It never writes anything, except [`raise_nofile_limit`] on this process's own limit.

use std::fmt;
use std::fs;
use std::io;

use super::{uring, HostSnapshot};

/// `CAP_IPC_LOCK` bit in the capability sets of /proc/PID/status.
const CAP_IPC_LOCK: u32 = 14;

/// A kernel version, compared as (major, minor, patch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KernelVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl KernelVersion {
    pub const fn new(major: u32, minor: u32) -> KernelVersion {
        KernelVersion { major, minor, patch: 0 }
    }

    /// Parses a release as printed by `uname -r`: "6.18.44-fc-v657", "5.15.0-91-generic", "6.8".
    pub fn parse(release: &str) -> Option<KernelVersion> {
        let numeric = release.split(|c: char| !(c.is_ascii_digit() || c == '.')).next()?;
        let mut parts = numeric.split('.').filter(|p| !p.is_empty()).map(str::parse::<u32>);
        let major = parts.next()?.ok()?;
        let minor = parts.next()?.ok()?;
        let patch = parts.next().and_then(Result::ok).unwrap_or(0);
        Some(KernelVersion { major, minor, patch })
    }
}

impl fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)?;
        if self.patch != 0 {
            write!(f, ".{}", self.patch)?;
        }
        Ok(())
    }
}

/// A resource limit; `u64::MAX` is "unlimited".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimit {
    pub soft: u64,
    pub hard: u64,
}

impl fmt::Display for Rlimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: u64| {
            if v == u64::MAX {
                "unlimited".to_string()
            } else {
                v.to_string()
            }
        };
        write!(f, "{} (hard {})", show(self.soft), show(self.hard))
    }
}

fn getrlimit(resource: libc::__rlimit_resource_t) -> io::Result<Rlimit> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    if unsafe { libc::getrlimit(resource, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let value = |v: libc::rlim_t| {
        if v == libc::RLIM_INFINITY {
            u64::MAX
        } else {
            v
        }
    };
    Ok(Rlimit { soft: value(limit.rlim_cur), hard: value(limit.rlim_max) })
}

/// Lifts this process's soft `RLIMIT_NOFILE` to its hard limit and returns the result.
///
/// systemd starts services with a soft limit of 1024 unless `LimitNOFILE=` says otherwise, and
/// expects programs that need more to raise it themselves; call this before [`super::check_host`]
/// so that the report shows the limit ringlb will run with.
pub fn raise_nofile_limit() -> io::Result<Rlimit> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur != limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit reads the struct we own; only the soft limit changes, up to the hard.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    getrlimit(libc::RLIMIT_NOFILE)
}

/// Parses a single unsigned number as /proc/sys prints it.
pub fn parse_u64(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// Parses `net.ipv4.ip_local_port_range` ("32768\t60999").
pub fn parse_port_range(text: &str) -> Option<(u64, u64)> {
    let mut fields = text.split_whitespace().map(str::parse::<u64>);
    let low = fields.next()?.ok()?;
    let high = fields.next()?.ok()?;
    if fields.next().is_some() {
        return None;
    }
    Some((low, high))
}

/// Parses `net.ipv4.tcp_mem` ("min pressure max", in pages) into the max.
pub fn parse_tcp_mem_max(text: &str) -> Option<u64> {
    let fields: Vec<&str> = text.split_whitespace().collect();
    match fields.as_slice() {
        [_, _, max] => max.parse().ok(),
        _ => None,
    }
}

/// Parses `fs/file-nr` ("allocated unused max") into the allocated count.
pub fn parse_file_nr(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.parse().ok()
}

/// Parses the effective capability set out of /proc/PID/status.
pub fn parse_cap_eff(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(line.trim(), 16).ok()
}

fn read_sysctl(key: &str) -> Option<String> {
    fs::read_to_string(format!("/proc/sys/{}", key.replace('.', "/"))).ok()
}

fn sysctl_u64(key: &str) -> Option<u64> {
    read_sysctl(key).as_deref().and_then(parse_u64)
}

fn kernel_release() -> String {
    // SAFETY: uname fills the utsname we own; release is NUL-terminated within its array.
    unsafe {
        let mut name: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut name) != 0 {
            return String::new();
        }
        std::ffi::CStr::from_ptr(name.release.as_ptr()).to_string_lossy().into_owned()
    }
}

/// Reads everything [`super::evaluate`] compares, from this process's point of view.
pub fn read_snapshot() -> HostSnapshot {
    let kernel_release = kernel_release();
    let kernel = KernelVersion::parse(&kernel_release);
    let cap_eff = fs::read_to_string("/proc/self/status").ok().as_deref().and_then(parse_cap_eff);
    HostSnapshot {
        kernel,
        nofile: getrlimit(libc::RLIMIT_NOFILE).ok(),
        memlock: getrlimit(libc::RLIMIT_MEMLOCK).ok(),
        cap_ipc_lock: cap_eff.is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0),
        io_uring_disabled: sysctl_u64("kernel.io_uring_disabled"),
        nr_open: sysctl_u64("fs.nr_open"),
        file_max: sysctl_u64("fs.file-max"),
        files_allocated: read_sysctl("fs.file-nr").as_deref().and_then(parse_file_nr),
        somaxconn: sysctl_u64("net.core.somaxconn"),
        tcp_max_syn_backlog: sysctl_u64("net.ipv4.tcp_max_syn_backlog"),
        port_range: read_sysctl("net.ipv4.ip_local_port_range").as_deref().and_then(parse_port_range),
        tcp_tw_reuse: sysctl_u64("net.ipv4.tcp_tw_reuse"),
        pipe_user_pages_soft: sysctl_u64("fs.pipe-user-pages-soft"),
        tcp_mem_max: read_sysctl("net.ipv4.tcp_mem").as_deref().and_then(parse_tcp_mem_max),
        conntrack_max: sysctl_u64("net.netfilter.nf_conntrack_max"),
        uring: uring::probe(kernel),
        kernel_release,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_releases_parse() {
        assert_eq!(KernelVersion::parse("6.18.44-fc-v657"), Some(KernelVersion { major: 6, minor: 18, patch: 44 }));
        assert_eq!(KernelVersion::parse("5.15.0-91-generic"), Some(KernelVersion { major: 5, minor: 15, patch: 0 }));
        assert_eq!(KernelVersion::parse("6.8"), Some(KernelVersion::new(6, 8)));
        assert_eq!(KernelVersion::parse("6.7-rc3"), Some(KernelVersion::new(6, 7)));
        assert_eq!(KernelVersion::parse("garbage"), None);
        assert_eq!(KernelVersion::parse(""), None);
        assert!(KernelVersion::new(6, 16) > KernelVersion { major: 6, minor: 7, patch: 99 });
        assert_eq!(KernelVersion::new(5, 19).to_string(), "5.19");
    }

    #[test]
    fn proc_values_parse() {
        assert_eq!(parse_u64("4096\n"), Some(4096));
        assert_eq!(parse_u64("-1\n"), None);
        assert_eq!(parse_port_range("32768\t60999\n"), Some((32_768, 60_999)));
        assert_eq!(parse_port_range("1024 65535"), Some((1024, 65_535)));
        assert_eq!(parse_port_range("1024"), None);
        assert_eq!(parse_port_range("1 2 3"), None);
        assert_eq!(parse_file_nr("2144\t0\t2466177\n"), Some(2144));
        assert_eq!(parse_tcp_mem_max("287901\t383868\t575802\n"), Some(575_802));
        assert_eq!(parse_tcp_mem_max("1 2"), None);
    }

    #[test]
    fn effective_capabilities_parse() {
        let status = "Name:\tringlb\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\nCapBnd:\t0\n";
        let caps = parse_cap_eff(status).expect("CapEff");
        assert_ne!(caps & (1 << CAP_IPC_LOCK), 0);
        let status = "CapEff:\t0000000000000400\n";
        assert_eq!(parse_cap_eff(status), Some(0x400));
        assert_eq!(parse_cap_eff("Name:\tx\n"), None);
    }

    #[test]
    fn rlimits_render_unlimited() {
        let limit = Rlimit { soft: 1024, hard: u64::MAX };
        assert_eq!(limit.to_string(), "1024 (hard unlimited)");
    }

    #[test]
    fn live_snapshot_reads_this_host() {
        let snap = read_snapshot();
        assert!(snap.kernel.is_some(), "uname release {:?}", snap.kernel_release);
        let nofile = snap.nofile.expect("RLIMIT_NOFILE");
        assert!(nofile.soft <= nofile.hard);
        assert!(snap.nr_open.is_some_and(|v| v >= 1024));
        assert!(snap.somaxconn.is_some());
        let (low, high) = snap.port_range.expect("port range");
        assert!(low <= high);
    }
}
