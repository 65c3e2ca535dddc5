//! io_uring on this host: can a ring be created, and does the kernel have what ringlb uses?
//!
//! Owns the feature list (name, first kernel, how it is detected). Opcodes are detected with
//! `IORING_REGISTER_PROBE`, flags by trying them on a tiny ring (a loopback listener on port 0,
//! nothing leaves the host), and only what neither can show by the kernel version.
//! It never keeps a ring or a socket beyond the probe.

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

use io_uring::{cqueue, opcode, types, IoUring, Probe};

use super::KernelVersion;

/// How a feature was detected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `IORING_REGISTER_PROBE` lists the opcode as supported.
    Probe,
    /// The feature was used on a tiny ring and worked (or was refused with EINVAL).
    Tried,
    /// Nothing can show it short of using it for real: the kernel version decides.
    Version,
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Method::Probe => "probe",
            Method::Tried => "tried",
            Method::Version => "kernel version",
        })
    }
}

/// One kernel feature ringlb uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureFact {
    pub name: &'static str,
    /// First mainline kernel with the feature.
    pub since: KernelVersion,
    pub method: Method,
    /// `Err` when detection itself failed (the feature is then treated as missing).
    pub supported: Result<bool, String>,
    /// What is missing, when that is more than the name says (may be empty).
    pub detail: String,
}

/// What the io_uring probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UringFacts {
    /// Creating a tiny ring: the error text if that failed.
    pub ring: Result<(), String>,
    /// Empty when no ring could be created.
    pub features: Vec<FeatureFact>,
}

impl Default for UringFacts {
    fn default() -> UringFacts {
        UringFacts::unavailable("not probed")
    }
}

impl UringFacts {
    pub fn unavailable(error: &str) -> UringFacts {
        UringFacts { ring: Err(error.to_string()), features: Vec::new() }
    }

    /// Every feature present, as on a current kernel (for tests of the evaluation).
    #[cfg(test)]
    pub(crate) fn all_supported() -> UringFacts {
        let features = FEATURES
            .iter()
            .map(|f| FeatureFact {
                name: f.name,
                since: f.since,
                method: f.method,
                supported: Ok(true),
                detail: String::new(),
            })
            .collect();
        UringFacts { ring: Ok(()), features }
    }
}

/// Opcodes every connection uses, all older than the features below; one row for all of them.
const BASE_OPCODES: [(u8, &str); 10] = [
    (opcode::Accept::CODE, "ACCEPT"),
    (opcode::Connect::CODE, "CONNECT"),
    (opcode::PollAdd::CODE, "POLL_ADD"),
    (opcode::Splice::CODE, "SPLICE"),
    (opcode::Send::CODE, "SEND"),
    (opcode::Recv::CODE, "RECV"),
    (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
    (opcode::Shutdown::CODE, "SHUTDOWN"),
    (opcode::Close::CODE, "CLOSE"),
    (opcode::LinkTimeout::CODE, "LINK_TIMEOUT"),
];

struct Feature {
    name: &'static str,
    since: KernelVersion,
    method: Method,
}

const BASE: &str = "base opcodes";
const SOCKET: &str = "IORING_OP_SOCKET";
const ACCEPT: &str = "multishot accept to direct descriptors";
const IOWQ: &str = "IORING_REGISTER_IOWQ_MAX_WORKERS";
const SETSOCKOPT: &str = "uring_cmd setsockopt";
/// Confines the kernel's direct-descriptor allocator so that ringlb can place backend sockets and
/// pipes in slots of its own choosing.
const ALLOC_RANGE: &str = "IORING_REGISTER_FILE_ALLOC_RANGE";

/// The features ringlb's data path is built on, in the order of the report.
const FEATURES: [Feature; 6] = [
    // SHUTDOWN (5.11) is the newest of the base opcodes.
    Feature { name: BASE, since: KernelVersion::new(5, 11), method: Method::Probe },
    Feature { name: SOCKET, since: KernelVersion::new(5, 19), method: Method::Probe },
    Feature { name: ACCEPT, since: KernelVersion::new(5, 19), method: Method::Tried },
    Feature { name: IOWQ, since: KernelVersion::new(5, 15), method: Method::Tried },
    // SOCKET_URING_OP_SETSOCKOPT: a sub-command of IORING_OP_URING_CMD, which the probe lists
    // since 5.19 whatever the sub-commands; only the version tells.
    Feature { name: SETSOCKOPT, since: KernelVersion::new(6, 7), method: Method::Version },
    Feature { name: ALLOC_RANGE, since: KernelVersion::new(6, 0), method: Method::Version },
];

/// Creates a tiny ring and detects every feature in [`FEATURES`].
pub fn probe(kernel: Option<KernelVersion>) -> UringFacts {
    let mut ring = match IoUring::new(8) {
        Ok(ring) => ring,
        Err(e) => return UringFacts::unavailable(&e.to_string()),
    };
    let mut probe = Probe::new();
    let probe = match ring.submitter().register_probe(&mut probe) {
        Ok(()) => Ok(probe),
        Err(e) => Err(format!("register_probe: {e}")),
    };
    let features = FEATURES
        .iter()
        .map(|f| {
            let (supported, detail) = detect(f, &mut ring, probe.as_ref(), kernel);
            FeatureFact { name: f.name, since: f.since, method: f.method, supported, detail }
        })
        .collect();
    UringFacts { ring: Ok(()), features }
}

/// Detects one feature: whether it is there, and a detail for the report (may be empty).
fn detect(
    feature: &Feature,
    ring: &mut IoUring,
    probe: Result<&Probe, &String>,
    kernel: Option<KernelVersion>,
) -> (Result<bool, String>, String) {
    let opcode = |code: u8| probe.map(|p| p.is_supported(code)).map_err(String::clone);
    let supported = match feature.name {
        BASE => {
            let missing = probe.map(|p| {
                BASE_OPCODES
                    .iter()
                    .filter(|&&(code, _)| !p.is_supported(code))
                    .map(|&(_, name)| name)
                    .collect::<Vec<_>>()
            });
            return match missing {
                Ok(missing) if missing.is_empty() => (Ok(true), String::new()),
                Ok(missing) => (Ok(false), format!("missing {}", missing.join(", "))),
                Err(e) => (Err(e.clone()), String::new()),
            };
        }
        SOCKET => opcode(opcode::Socket::CODE),
        ACCEPT => try_multishot_direct_accept(ring),
        IOWQ => try_iowq_max_workers(ring),
        SETSOCKOPT => match kernel {
            Some(k) => opcode(opcode::UringCmd16::CODE).map(|cmd| cmd && k >= feature.since),
            None => Err("kernel version unknown".to_string()),
        },
        ALLOC_RANGE => kernel.map(|k| k >= feature.since).ok_or_else(|| "kernel version unknown".to_string()),
        other => Err(format!("no detection for {other}")),
    };
    (supported, String::new())
}

/// Queries (without changing) the io-wq worker caps; EINVAL means the kernel lacks the call.
fn try_iowq_max_workers(ring: &IoUring) -> Result<bool, String> {
    let mut query = [0u32; 2];
    match ring.submitter().register_iowq_max_workers(&mut query) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(false),
        Err(e) => Err(e.to_string()),
    }
}

/// Accepts one loopback connection with a multishot accept into an allocated direct slot.
/// Supported when the completion carries a slot index and `IORING_CQE_F_MORE`.
fn try_multishot_direct_accept(ring: &mut IoUring) -> Result<bool, String> {
    const ACCEPT_TAG: u64 = 1;
    let text = |what: &str, e: io::Error| format!("{what}: {e}");
    ring.submitter().register_files_sparse(4).map_err(|e| text("register_files_sparse", e))?;
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| text("bind 127.0.0.1:0", e))?;
    let addr = listener.local_addr().map_err(|e| text("local_addr", e))?;
    // The handshake completes in the kernel; the connection waits in the accept queue.
    let _client = TcpStream::connect(addr).map_err(|e| text("connect", e))?;
    let accept = opcode::AcceptMulti::new(types::Fd(listener.as_raw_fd()))
        .allocate_file_index(true)
        .build()
        .user_data(ACCEPT_TAG);
    // SAFETY: the entry refers to the listener's descriptor only, which outlives the ring's use
    // of it: the ring holds its own reference to the file once the entry is submitted.
    unsafe { ring.submission().push(&accept) }.map_err(|_| "submission queue full".to_string())?;
    let timeout = types::Timespec::from(Duration::from_secs(2));
    let args = types::SubmitArgs::new().timespec(&timeout);
    match ring.submitter().submit_with_args(1, &args) {
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(libc::ETIME) => {}
        Err(e) => return Err(text("submit", e)),
    }
    let cqe = ring.completion().next().ok_or("no completion within 2 s")?;
    match cqe.result() {
        slot if slot >= 0 => Ok(cqueue::more(cqe.flags())),
        err if -err == libc::EINVAL => Ok(false),
        err => Err(io::Error::from_raw_os_error(-err).to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feature_list_names_are_unique_and_newest_is_setsockopt() {
        let mut names: Vec<_> = FEATURES.iter().map(|f| f.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), FEATURES.len());
        let newest = FEATURES.iter().max_by_key(|f| f.since).map(|f| f.name);
        assert_eq!(newest, Some(SETSOCKOPT));
    }

    #[test]
    fn probe_on_this_host_detects_every_feature() {
        // io_uring is enabled here (see the machine notes); skip rather than fail elsewhere.
        let facts = probe(KernelVersion::parse(&super::super::live::read_snapshot().kernel_release));
        if let Err(e) = &facts.ring {
            eprintln!("skipped: no io_uring here ({e})");
            return;
        }
        assert_eq!(facts.features.len(), FEATURES.len());
        for f in &facts.features {
            assert!(f.supported.is_ok(), "{}: {:?}", f.name, f.supported);
        }
        let accept = facts.features.iter().find(|f| f.name == ACCEPT).expect("accept row");
        assert_eq!(accept.supported, Ok(true), "multishot direct accept (kernel >= 5.19 here)");
    }
}
