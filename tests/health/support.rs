//! What the health tests are made of besides the harness in tests/common (which runs the real
//! `ringlb run` and keeps its log lines with the instant they arrived): test backends on loopback
//! that can die, come back, drop packets or answer health checks badly, and a paced client load
//! that records every failure.
//!
//! How a test backend dies (`Backend::kill`): first a socket filter that drops every packet to its
//! listening socket, so that no new connection can complete; then it serves whatever connections
//! the kernel had already completed; then it closes the socket, after which connects are refused,
//! as they are to a crashed server. Closing a listener with connections still queued would reset
//! them, and those are connections the balancer had already handed over, which no L4 balancer can
//! save. The dying instant counts from the filter, so bounds measured from it are if anything
//! stricter. `Backend::blackhole` keeps the filter on (a host that vanished: connects time out)
//! and counts the dropped packets: every SYN sent to the server after that instant.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader as AsyncBufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

// ---- test backends ----

/// How a backend answers.
#[derive(Debug, Clone)]
pub struct Answers {
    /// Status of its answer to an HTTP request.
    pub http_status: u16,
    /// Its answer to any other line than `ping`.
    pub other: &'static str,
    /// Accepts and never answers (records when each connection ends instead).
    pub silent: bool,
}

impl Default for Answers {
    fn default() -> Answers {
        Answers { http_status: 200, other: "+PONG\r\n", silent: false }
    }
}

#[derive(Default)]
pub struct Stats {
    /// Client requests (`ping`) answered.
    pub served: AtomicU64,
    /// When each client request was answered.
    pub served_at: Mutex<Vec<Instant>>,
    /// First lines of everything else (health checks).
    pub other_lines: Mutex<Vec<String>>,
    /// Silent mode: how long each connection lasted from accept to the peer's close or reset.
    pub lifetimes: Mutex<Vec<Duration>>,
}

impl Stats {
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    pub fn first_served_after(&self, t: Instant) -> Option<Instant> {
        self.served_at.lock().unwrap_or_else(|e| e.into_inner()).iter().copied().find(|&s| s >= t)
    }
}

/// A test server on loopback. Client requests are a line `ping`, answered with the backend's
/// name; HTTP requests get `Answers::http_status`; anything else `Answers::other`.
pub struct Backend {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub stats: Arc<Stats>,
    answers: Answers,
    fd: RawFd,
    stop: Option<oneshot::Sender<oneshot::Sender<Instant>>>,
    task: Option<JoinHandle<()>>,
}

impl Backend {
    pub async fn start(name: &'static str, answers: Answers) -> Backend {
        Backend::start_at(name, "127.0.0.1:0".parse().expect("addr"), answers).await
    }

    pub async fn start_at(name: &'static str, addr: SocketAddr, answers: Answers) -> Backend {
        let mut backend =
            Backend { name, addr, stats: Arc::new(Stats::default()), answers, fd: -1, stop: None, task: None };
        backend.listen(addr).await;
        backend
    }

    async fn listen(&mut self, addr: SocketAddr) {
        let listener = TcpListener::bind(addr).await.expect("bind backend");
        self.addr = listener.local_addr().expect("backend addr");
        self.fd = listener.as_raw_fd();
        let (stop, mut stopped) = oneshot::channel::<oneshot::Sender<Instant>>();
        let (name, stats, answers) = (self.name, self.stats.clone(), self.answers.clone());
        self.task = Some(tokio::spawn(async move {
            let died = loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        if let Ok((stream, _)) = accepted {
                            tokio::spawn(serve(stream, name, stats.clone(), answers.clone()));
                        }
                    }
                    reply = &mut stopped => break reply.ok(),
                }
            };
            // Dying: no new connection completes from here on; serve those already queued.
            set_drop_filter(listener.as_raw_fd(), true);
            let dead_at = Instant::now();
            let listener = listener.into_std().expect("std listener");
            while let Ok((stream, _)) = listener.accept() {
                if stream.set_nonblocking(true).is_ok() {
                    if let Ok(stream) = TcpStream::from_std(stream) {
                        tokio::spawn(serve(stream, name, stats.clone(), answers.clone()));
                    }
                }
            }
            drop(listener);
            if let Some(died) = died {
                let _ = died.send(dead_at);
            }
        }));
        self.stop = Some(stop);
    }

    /// Dies as described in the module doc; returns the instant from which no new connection
    /// could reach it.
    pub async fn kill(&mut self) -> Instant {
        let (died, dead_at) = oneshot::channel();
        self.stop.take().expect("backend is running").send(died).expect("backend task");
        let dead_at = dead_at.await.expect("death instant");
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        self.fd = -1;
        dead_at
    }

    /// Listens again on the same address.
    pub async fn restart(&mut self) {
        assert!(self.stop.is_none(), "restart of a running backend");
        self.listen(self.addr).await;
    }

    /// Drops every packet to the listening socket (or stops doing so); returns when that began.
    pub fn blackhole(&self, on: bool) -> Instant {
        set_drop_filter(self.fd, on);
        Instant::now()
    }

    /// Packets the kernel dropped at the listening socket (SK_MEMINFO_DROPS).
    pub fn drops(&self) -> u32 {
        const SO_MEMINFO: libc::c_int = 55;
        const SK_MEMINFO_DROPS: usize = 8;
        let mut info = [0u32; 9];
        let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
        // SAFETY: the kernel writes at most `len` bytes into `info`.
        let r = unsafe { libc::getsockopt(self.fd, libc::SOL_SOCKET, SO_MEMINFO, info.as_mut_ptr().cast(), &mut len) };
        assert_eq!(r, 0, "SO_MEMINFO: {}", std::io::Error::last_os_error());
        info[SK_MEMINFO_DROPS]
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn serve(stream: TcpStream, name: &'static str, stats: Arc<Stats>, answers: Answers) {
    let accepted = Instant::now();
    let mut stream = AsyncBufReader::new(stream);
    if answers.silent {
        let mut buf = [0u8; 1024];
        while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
        stats.lifetimes.lock().unwrap_or_else(|e| e.into_inner()).push(accepted.elapsed());
        return;
    }
    let mut line = String::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_line(&mut line)).await;
    if !matches!(read, Ok(Ok(n)) if n > 0) {
        return;
    }
    let reply = if line.trim_end() == "ping" {
        stats.served.fetch_add(1, Ordering::Relaxed);
        stats.served_at.lock().unwrap_or_else(|e| e.into_inner()).push(Instant::now());
        format!("{name}\n")
    } else if line.starts_with("GET ") {
        // The whole request, so that the test can read its headers.
        let mut request = line.clone();
        loop {
            let mut header = String::new();
            match stream.read_line(&mut header).await {
                Ok(n) if n > 0 && header != "\r\n" => request.push_str(&header),
                _ => break,
            }
        }
        stats.other_lines.lock().unwrap_or_else(|e| e.into_inner()).push(request);
        format!("HTTP/1.1 {} Test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", answers.http_status)
    } else {
        stats.other_lines.lock().unwrap_or_else(|e| e.into_inner()).push(line.clone());
        answers.other.to_owned()
    };
    let _ = stream.get_mut().write_all(reply.as_bytes()).await;
}

/// Attaches (or detaches) a classic BPF program that drops every packet: on a listening socket
/// no SYN gets an answer and no handshake completes.
fn set_drop_filter(fd: RawFd, on: bool) {
    #[repr(C)]
    struct SockFilter {
        code: u16,
        jt: u8,
        jf: u8,
        k: u32,
    }
    #[repr(C)]
    struct SockFprog {
        len: u16,
        filter: *const SockFilter,
    }
    const BPF_RET_K: u16 = 0x06;
    let drop_all = [SockFilter { code: BPF_RET_K, jt: 0, jf: 0, k: 0 }];
    let program = SockFprog { len: 1, filter: drop_all.as_ptr() };
    // SAFETY: the kernel copies the program during the call; detaching reads no argument.
    let r = unsafe {
        if on {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_ATTACH_FILTER,
                (&program as *const SockFprog).cast(),
                std::mem::size_of::<SockFprog>() as libc::socklen_t,
            )
        } else {
            let zero: libc::c_int = 0;
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_DETACH_FILTER,
                (&zero as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        }
    };
    assert_eq!(r, 0, "socket filter: {}", std::io::Error::last_os_error());
}

// ---- clients ----

/// One client request through the balancer: `Ok(backend name)` or why it failed.
pub async fn request(addr: SocketAddr, timeout: Duration) -> Result<String, String> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
        stream.write_all(b"ping\n").await.map_err(|e| format!("send: {e}"))?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply).await.map_err(|e| format!("read: {e}"))?;
        match reply.strip_suffix('\n') {
            Some(name) if !name.is_empty() && !name.contains('\n') => Ok(name.to_owned()),
            _ => Err(format!("reply {reply:?}")),
        }
    };
    tokio::time::timeout(timeout, exchange).await.unwrap_or_else(|_| Err(format!("no reply within {timeout:?}")))
}

/// Clients opening new connections at a steady rate until stopped.
pub struct Load {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<LoadReport>,
    pub done: Arc<AtomicU64>,
}

#[derive(Debug, Default)]
pub struct LoadReport {
    pub started: u64,
    pub elapsed: Duration,
    pub failures: Vec<String>,
    pub by_backend: HashMap<String, u64>,
}

impl LoadReport {
    /// New connections per second over the run.
    pub fn rate(&self) -> f64 {
        self.started as f64 / self.elapsed.as_secs_f64()
    }
}

impl Load {
    /// `per_second` new connections per second to `addr`, at most `limit` in all.
    pub fn start(addr: SocketAddr, per_second: u32, limit: u64) -> Load {
        let (stop, mut stopped) = oneshot::channel::<()>();
        let done = Arc::new(AtomicU64::new(0));
        let finished = done.clone();
        let task = tokio::spawn(async move {
            let began = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_secs(1) / per_second);
            let mut clients = Vec::new();
            while (clients.len() as u64) < limit {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = &mut stopped => break,
                }
                let finished = finished.clone();
                clients.push(tokio::spawn(async move {
                    let result = request(addr, Duration::from_secs(5)).await;
                    finished.fetch_add(1, Ordering::Relaxed);
                    result
                }));
            }
            let mut report =
                LoadReport { started: clients.len() as u64, elapsed: began.elapsed(), ..Default::default() };
            for client in clients {
                match client.await {
                    Ok(Ok(name)) => *report.by_backend.entry(name).or_default() += 1,
                    Ok(Err(why)) => report.failures.push(why),
                    Err(e) => report.failures.push(format!("client task: {e}")),
                }
            }
            report
        });
        Load { stop: Some(stop), task, done }
    }

    /// Stops opening connections and waits for the open ones.
    pub async fn finish(mut self) -> LoadReport {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.expect("load task")
    }
}
