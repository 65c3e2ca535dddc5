//! The parts a workload runs on: engine threads of this process ([`Local`]) or worker
//! processes ([`Kids`]), behind one interface ([`Fleet`]) for the parent that watches them.
//!
//! A worker process is this executable started again with `--worker I --parent PID`; it reports
//! in JSON lines ([`ChildMsg`]) on stdout and waits for `go START` on stdin. Killing the fleet
//! kills the worker processes; they also die with their parent (PR_SET_PDEATHSIG).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};

use super::Workload;
use crate::engine::{self, Control};
use crate::stats::{Tally, WorkerTally};
use crate::BenchError;

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Counters {
    pub ok: u64,
    pub errors: u64,
    pub connected: u64,
    pub served: u64,
}

impl Counters {
    fn add(&mut self, o: &Counters) {
        self.ok += o.ok;
        self.errors += o.errors;
        self.connected += o.connected;
        self.served += o.served;
    }
}

/// A worker process's messages to its parent, one JSON object per line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChildMsg {
    Progress(Counters),
    Ramped(Counters),
    Done(Box<WorkerTally>),
    Failed(String),
}

/// Engine threads of this process.
pub struct Local {
    ctl: Arc<Control>,
    handles: Vec<JoinHandle<Result<Tally, BenchError>>>,
}

impl Local {
    pub fn start(w: &Workload, proc: usize) -> Result<Self, BenchError> {
        let plans = w.thread_plans(proc);
        let ctl = Arc::new(Control::new(plans.len()));
        let mut handles = Vec::new();
        for (me, plan) in plans.into_iter().enumerate() {
            let ctl = Arc::clone(&ctl);
            let h = std::thread::Builder::new()
                .name(format!("engine-{me}"))
                .spawn(move || engine::run(&plan, &ctl, me))
                .map_err(|e| BenchError::Sys("spawn thread", e))?;
            handles.push(h);
        }
        Ok(Self { ctl, handles })
    }

    pub fn counters(&self) -> Counters {
        let mut c = Counters::default();
        for p in &self.ctl.progress {
            c.add(&Counters {
                ok: p.ok.load(Ordering::Relaxed),
                errors: p.errors.load(Ordering::Relaxed),
                connected: p.connected.load(Ordering::Relaxed),
                served: p.served.load(Ordering::Relaxed),
            });
        }
        c
    }

    pub fn ramped(&self) -> bool {
        self.ctl.ramped.load(Ordering::Acquire) == self.handles.len()
    }

    pub fn go(&self, at: u64) {
        self.ctl.steady_at.store(at, Ordering::Release);
    }

    pub fn finished(&self) -> bool {
        self.handles.iter().all(JoinHandle::is_finished)
    }

    pub fn join(self) -> Result<Tally, BenchError> {
        let mut total = Tally::default();
        for h in self.handles {
            let t = h.join().map_err(|_| BenchError::Worker("an engine thread panicked".into()))??;
            total.merge(&t)?;
        }
        Ok(total)
    }

    pub fn abort(&self) {
        self.ctl.abort.store(true, Ordering::Relaxed);
    }
}

struct Kid {
    child: Child,
    stdin: Option<ChildStdin>,
    progress: Counters,
    ramped: bool,
    done: Option<Tally>,
}

/// Worker processes.
pub struct Kids {
    kids: Vec<Kid>,
    rx: Receiver<(usize, ChildMsg)>,
}

impl Kids {
    pub fn start(procs: usize) -> Result<Self, BenchError> {
        let exe = std::env::current_exe().map_err(|e| BenchError::Sys("current_exe", e))?;
        let args: Vec<_> = std::env::args_os().skip(1).collect();
        let (tx, rx) = mpsc::channel();
        let mut kids = Vec::new();
        for i in 0..procs {
            let mut child = Command::new(&exe)
                .args(&args)
                .arg("--worker")
                .arg(i.to_string())
                .arg("--parent")
                .arg(std::process::id().to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .map_err(|e| BenchError::Sys("spawn worker process", e))?;
            let stdout = child.stdout.take();
            let stdin = child.stdin.take();
            let tx = tx.clone();
            std::thread::spawn(move || {
                let Some(stdout) = stdout else { return };
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let msg = serde_json::from_str::<ChildMsg>(&line)
                        .unwrap_or_else(|e| ChildMsg::Failed(format!("bad message from worker {i}: {e}")));
                    if tx.send((i, msg)).is_err() {
                        return;
                    }
                }
                let _ = tx.send((i, ChildMsg::Failed(format!("worker {i} exited early"))));
            });
            kids.push(Kid { child, stdin, progress: Counters::default(), ramped: false, done: None });
        }
        Ok(Self { kids, rx })
    }

    /// Takes in every message that has arrived.
    pub fn pump(&mut self) -> Result<(), BenchError> {
        loop {
            match self.rx.try_recv() {
                Ok((i, msg)) => {
                    let k = &mut self.kids[i];
                    match msg {
                        ChildMsg::Progress(c) => k.progress = c,
                        ChildMsg::Ramped(c) => {
                            k.progress = c;
                            k.ramped = true;
                        }
                        ChildMsg::Done(t) => k.done = Some(t.into_tally()?),
                        ChildMsg::Failed(why) => {
                            if k.done.is_none() {
                                return Err(BenchError::Worker(why));
                            }
                        }
                    }
                }
                Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => return Ok(()),
            }
        }
    }

    pub fn counters(&self) -> Counters {
        let mut c = Counters::default();
        for k in &self.kids {
            c.add(&k.progress);
        }
        c
    }

    pub fn go(&mut self, at: u64) -> Result<(), BenchError> {
        for k in &mut self.kids {
            if let Some(stdin) = k.stdin.as_mut() {
                writeln!(stdin, "go {at}").map_err(|e| BenchError::Sys("write to worker", e))?;
            }
        }
        Ok(())
    }

    pub fn join(mut self) -> Result<Tally, BenchError> {
        let mut total = Tally::default();
        for k in &mut self.kids {
            let _ = k.child.wait();
            if let Some(t) = k.done.take() {
                total.merge(&t)?;
            }
        }
        Ok(total)
    }

    pub fn abort(&mut self) {
        for k in &mut self.kids {
            let _ = k.child.kill();
            let _ = k.child.wait();
        }
    }
}

pub enum Fleet {
    Local(Local),
    Kids(Kids),
}

impl Fleet {
    pub fn pump(&mut self) -> Result<(), BenchError> {
        match self {
            Fleet::Local(_) => Ok(()),
            Fleet::Kids(k) => k.pump(),
        }
    }
    pub fn counters(&self) -> Counters {
        match self {
            Fleet::Local(l) => l.counters(),
            Fleet::Kids(k) => k.counters(),
        }
    }
    pub fn ramped(&self) -> bool {
        match self {
            Fleet::Local(l) => l.ramped(),
            Fleet::Kids(k) => k.kids.iter().all(|k| k.ramped),
        }
    }
    pub fn go(&mut self, at: u64) -> Result<(), BenchError> {
        match self {
            Fleet::Local(l) => {
                l.go(at);
                Ok(())
            }
            Fleet::Kids(k) => k.go(at),
        }
    }
    pub fn finished(&self) -> bool {
        match self {
            Fleet::Local(l) => l.finished(),
            Fleet::Kids(k) => k.kids.iter().all(|k| k.done.is_some()),
        }
    }
    pub fn join(self) -> Result<Tally, BenchError> {
        match self {
            Fleet::Local(l) => l.join(),
            Fleet::Kids(k) => k.join(),
        }
    }
    pub fn abort(&mut self) {
        match self {
            Fleet::Local(l) => l.abort(),
            Fleet::Kids(k) => k.abort(),
        }
    }
}
