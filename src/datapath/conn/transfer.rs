//! Moving bytes while proxying: each flow's next steps (see `flow`) become submissions on the
//! connection's sockets and its buffers. A step is submitted as the flow asks, with the buffer
//! the flow holds deciding the operation: a pipe means splice, a memory buffer recv/send.

use io_uring::{opcode, squeue, types};

use super::{CloseCause, Conn, Ctx, Held, Life, Phase};
use crate::datapath::direction::Dir;
use crate::datapath::flow::{FlowOp, Step, Transfer};
use crate::datapath::ops::Op;

/// Splices never block a worker thread on a socket: every socket is non-blocking too.
const SPLICE_FLAGS: u32 = libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE;

impl Conn {
    /// Submits whatever both flows can do now; closes the connection when both are done.
    pub(super) fn drive(&mut self, ctx: &mut Ctx<'_>) -> Life {
        for dir in Dir::BOTH {
            loop {
                let mut steps = std::mem::take(ctx.steps);
                steps.clear();
                self.flows[dir.index()].next_steps(&mut steps);
                let mut again = false;
                for &step in &steps {
                    again |= self.execute(ctx, dir, step);
                }
                *ctx.steps = steps;
                if !again {
                    break;
                }
            }
        }
        if self.phase == Phase::Proxying && self.flows.iter().all(|f| f.is_done()) {
            return self.close(ctx, CloseCause::Done);
        }
        Life::Open
    }

    /// Performs one step; returns true when the flow should be asked again (it got a buffer).
    fn execute(&mut self, ctx: &mut Ctx<'_>, dir: Dir, step: Step) -> bool {
        let d = dir.index();
        let (src, dst) = dir.ends(self.client, self.backend);
        let ud = |conn: &Conn, kind| conn.user_data(Op::flow(dir, kind));
        if dir == Dir::C2b
            && matches!(step, Step::Read { .. } | Step::ReadWrite { .. })
            && matches!(self.held[d], Held::Pipe(_))
        {
            // Spliced bytes never pass through memory: they cannot be replayed.
            self.end_replay(ctx);
        }
        let entry = match (step, self.held[d]) {
            (Step::NeedBuffer, _) => return self.take_buffer(ctx, dir),
            (Step::ReleaseBuffer, _) => {
                self.give_back_buffer(ctx, dir);
                return false;
            }
            (Step::ArmPollIn, _) => opcode::PollAdd::new(types::Fixed(src), (libc::POLLIN | libc::POLLRDHUP) as u32)
                .build()
                .user_data(ud(self, FlowOp::PollIn)),
            (Step::ArmPollOut, _) => opcode::PollAdd::new(types::Fixed(dst), libc::POLLOUT as u32)
                .build()
                .user_data(ud(self, FlowOp::PollOut)),
            (Step::Read { len }, Held::Memory(buf)) => {
                opcode::Recv::new(types::Fixed(src), ctx.memory.ptr(buf, 0), len)
                    .build()
                    .user_data(ud(self, FlowOp::Read))
            }
            (Step::Read { len }, Held::Pipe(pipe)) => {
                opcode::Splice::new(types::Fixed(src), -1, types::Fixed(pipe.write()), -1, len)
                    .flags(SPLICE_FLAGS)
                    .build()
                    .user_data(ud(self, FlowOp::Read))
            }
            (Step::Write { off, len }, Held::Memory(buf)) => {
                opcode::Send::new(types::Fixed(dst), ctx.memory.ptr(buf, off), len)
                    .flags(libc::MSG_NOSIGNAL)
                    .build()
                    .user_data(ud(self, FlowOp::Write))
            }
            (Step::Write { len, .. }, Held::Pipe(pipe)) => {
                opcode::Splice::new(types::Fixed(pipe.read()), -1, types::Fixed(dst), -1, len)
                    .flags(SPLICE_FLAGS)
                    .build()
                    .user_data(ud(self, FlowOp::Write))
            }
            (Step::ReadWrite { len }, Held::Pipe(pipe)) => {
                // A hard link runs the write even when the read is short or fails.
                let pair = [
                    opcode::Splice::new(types::Fixed(src), -1, types::Fixed(pipe.write()), -1, len)
                        .flags(SPLICE_FLAGS)
                        .build()
                        .flags(squeue::Flags::IO_HARDLINK)
                        .user_data(ud(self, FlowOp::Read)),
                    opcode::Splice::new(types::Fixed(pipe.read()), -1, types::Fixed(dst), -1, len)
                        .flags(SPLICE_FLAGS)
                        .build()
                        .user_data(ud(self, FlowOp::Write)),
                ];
                self.inflight += 2;
                ctx.ring.push(&pair);
                return false;
            }
            (Step::ShutdownDst, _) if self.flows[dir.other().index()].is_done() => {
                // The other direction is finished too: the close that follows sends the FIN,
                // so skip a shutdown (which io_uring would run on an io-wq thread).
                self.flows[d].on_shutdown();
                return false;
            }
            (Step::ShutdownDst, _) => {
                opcode::Shutdown::new(types::Fixed(dst), libc::SHUT_WR).build().user_data(ud(self, FlowOp::Shutdown))
            }
            // A flow asks to read or write only while it holds a buffer of its transfer.
            (Step::Read { .. } | Step::Write { .. } | Step::ReadWrite { .. }, _) => {
                debug_assert!(false, "{step:?} without a matching buffer");
                return false;
            }
        };
        self.inflight += 1;
        ctx.ring.push(&[entry]);
        false
    }

    /// Hands flow `dir` an empty buffer of its transfer, or parks it until one frees up.
    fn take_buffer(&mut self, ctx: &mut Ctx<'_>, dir: Dir) -> bool {
        let held = match self.flows[dir.index()].transfer() {
            Transfer::Copy => ctx.memory.get().map(Held::Memory),
            Transfer::Splice => match ctx.pipes.get(&ctx.ring.submitter()) {
                Ok(pipe) => pipe.map(Held::Pipe),
                Err(e) => {
                    let worker = ctx.worker;
                    ctx.logs.pipe.warn(ctx.now, format_args!("worker {worker}: cannot create a pipe: {e}"));
                    None
                }
            },
        };
        match held {
            Some(held) => {
                self.held[dir.index()] = held;
                self.flows[dir.index()].on_buffer();
                true
            }
            None => {
                ctx.waiting.buffer.push_back((self.slot, self.gen, dir));
                false
            }
        }
    }

    /// Gives flow `dir`'s empty, idle buffer back to its pool.
    fn give_back_buffer(&mut self, ctx: &mut Ctx<'_>, dir: Dir) {
        match std::mem::replace(&mut self.held[dir.index()], Held::None) {
            Held::None => return,
            Held::Memory(buf) => ctx.memory.put(buf),
            Held::Pipe(pipe) => ctx.pipes.put(&ctx.ring.submitter(), pipe),
        }
        ctx.freed_buffers += 1;
    }
}
