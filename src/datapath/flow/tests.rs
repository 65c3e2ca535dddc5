use super::*;

const LEN: u32 = SPLICE_LEN;

fn steps(flow: &mut Flow) -> Vec<Step> {
    let mut out = Vec::new();
    flow.next_steps(&mut out);
    out
}

/// A splicing flow whose source just became readable and which holds a pipe.
fn readable_with_pipe() -> Flow {
    let mut f = Flow::new(Transfer::Splice, false);
    assert_eq!(steps(&mut f), vec![Step::ArmPollIn]);
    f.on_readable();
    assert_eq!(steps(&mut f), vec![Step::NeedBuffer]);
    f.on_buffer();
    f
}

#[test]
fn idle_flow_only_polls_once() {
    let mut f = Flow::new(Transfer::Splice, false);
    assert_eq!(steps(&mut f), vec![Step::ArmPollIn]);
    assert!(steps(&mut f).is_empty(), "one poll at a time");
    assert_eq!(f.in_flight().collect::<Vec<_>>(), [FlowOp::PollIn]);
}

#[test]
fn a_request_moves_in_one_linked_pair_then_polls_again() {
    let mut f = readable_with_pipe();
    assert_eq!(steps(&mut f), vec![Step::ReadWrite { len: LEN }]);
    assert!(steps(&mut f).is_empty(), "nothing more while the pair is in flight");
    assert_eq!(f.in_flight().collect::<Vec<_>>(), [FlowOp::Read, FlowOp::Write]);
    assert_eq!(f.on_read(100), Outcome::Progress);
    assert_eq!(f.on_write(100), Outcome::Progress);
    assert_eq!(steps(&mut f), vec![Step::ArmPollIn, Step::ReleaseBuffer]);
    assert_eq!(f.delivered(), 100);
}

#[test]
fn linked_write_overtaking_its_read_is_applied_after_it() {
    let mut f = readable_with_pipe();
    steps(&mut f);
    assert_eq!(f.on_write(100), Outcome::Idle);
    assert_eq!(f.in_flight().collect::<Vec<_>>(), [FlowOp::Read], "the write has completed");
    assert_eq!(f.on_read(100), Outcome::Progress);
    assert_eq!(f.buffered(), 0);
    assert_eq!(f.delivered(), 100);
}

#[test]
fn linked_write_on_an_empty_pipe_is_not_a_full_destination() {
    let mut f = readable_with_pipe();
    steps(&mut f);
    assert_eq!(f.on_read(-libc::EAGAIN), Outcome::Idle);
    assert_eq!(f.on_write(-libc::EAGAIN), Outcome::Idle);
    // Still writable: the next chunk goes as a linked pair again.
    assert_eq!(steps(&mut f), vec![Step::ArmPollIn, Step::ReleaseBuffer]);
    f.on_readable();
    assert_eq!(steps(&mut f), vec![Step::NeedBuffer]);
    f.on_buffer();
    assert_eq!(steps(&mut f), vec![Step::ReadWrite { len: LEN }]);
}

#[test]
fn short_linked_write_sends_the_rest() {
    let mut f = readable_with_pipe();
    steps(&mut f);
    f.on_read(1000);
    f.on_write(600);
    assert_eq!(steps(&mut f), vec![Step::ArmPollIn, Step::Write { off: 0, len: 400 }]);
    f.on_write(400);
    assert_eq!(steps(&mut f), vec![Step::ReleaseBuffer]);
}

#[test]
fn full_destination_waits_for_pollout_without_busy_looping() {
    let mut f = readable_with_pipe();
    steps(&mut f);
    f.on_read(4096);
    assert_eq!(f.on_write(-libc::EAGAIN), Outcome::Idle);
    assert_eq!(steps(&mut f), vec![Step::ArmPollIn, Step::ArmPollOut]);
    assert!(steps(&mut f).is_empty());
    f.on_readable();
    // More data while the destination is full: read into the pipe (no pair: the pipe has bytes).
    assert_eq!(steps(&mut f), vec![Step::Read { len: LEN }]);
    // EAGAIN with bytes in the pipe is ambiguous (pipe full?): wait for room, don't poll.
    f.on_read(-libc::EAGAIN);
    assert!(steps(&mut f).is_empty());
    f.on_writable();
    assert_eq!(steps(&mut f), vec![Step::Write { off: 0, len: 4096 }]);
    f.on_write(4096);
    // Room again: poll (it completes at once if bytes are still waiting).
    assert_eq!(steps(&mut f), vec![Step::ArmPollIn, Step::ReleaseBuffer]);
}

#[test]
fn eagain_on_an_empty_pipe_means_the_socket_is_empty() {
    let mut f = readable_with_pipe();
    steps(&mut f);
    f.on_read(-libc::EAGAIN);
    f.on_write(-libc::EAGAIN);
    assert_eq!(steps(&mut f), vec![Step::ArmPollIn, Step::ReleaseBuffer]);
}

#[test]
fn fin_is_forwarded_after_the_last_byte() {
    let mut f = readable_with_pipe();
    steps(&mut f);
    f.on_read(10);
    f.on_write(-libc::EAGAIN); // destination full for now
    assert_eq!(steps(&mut f), vec![Step::ArmPollIn, Step::ArmPollOut]);
    f.on_readable();
    assert_eq!(steps(&mut f), vec![Step::Read { len: LEN }]);
    assert_eq!(f.on_read(0), Outcome::Idle); // FIN
    assert!(steps(&mut f).is_empty(), "shutdown must wait for the bytes in the pipe");
    f.on_writable();
    assert_eq!(steps(&mut f), vec![Step::Write { off: 0, len: 10 }]);
    f.on_write(10);
    assert_eq!(steps(&mut f), vec![Step::ReleaseBuffer, Step::ShutdownDst]);
    assert!(!f.is_done());
    assert_eq!(f.in_flight().collect::<Vec<_>>(), [FlowOp::Shutdown]);
    f.on_shutdown();
    assert!(f.is_done());
    f.on_readable();
    assert!(steps(&mut f).is_empty(), "nothing is read after FIN");
}

#[test]
fn fin_in_a_linked_pair_shuts_down_dst() {
    let mut f = readable_with_pipe();
    steps(&mut f);
    assert_eq!(f.on_read(0), Outcome::Idle);
    assert_eq!(f.on_write(-libc::EAGAIN), Outcome::Idle);
    assert_eq!(steps(&mut f), vec![Step::ReleaseBuffer, Step::ShutdownDst]);
}

#[test]
fn socket_errors_fail_the_flow() {
    let mut f = readable_with_pipe();
    steps(&mut f);
    assert_eq!(f.on_read(-libc::ECONNRESET), Outcome::Failed(-libc::ECONNRESET));
    let mut f = readable_with_pipe();
    steps(&mut f);
    f.on_read(5);
    assert_eq!(f.on_write(-libc::EPIPE), Outcome::Failed(-libc::EPIPE));
}

#[test]
fn a_buffer_request_waits_once_and_asks_again_after_retry() {
    let mut f = Flow::new(Transfer::Copy, false);
    steps(&mut f);
    f.on_readable();
    assert_eq!(steps(&mut f), vec![Step::NeedBuffer]);
    assert!(f.is_waiting_buffer());
    assert!(steps(&mut f).is_empty(), "asked once while parked");
    f.retry_buffer();
    assert_eq!(steps(&mut f), vec![Step::NeedBuffer]);
}

#[test]
fn a_flow_with_replayed_bytes_writes_them_first_then_forwards_the_fin() {
    let mut f = Flow::with_buffered(300, true, true);
    assert_eq!(steps(&mut f), vec![Step::Write { off: 0, len: 300 }]);
    f.on_write(300);
    assert_eq!(steps(&mut f), vec![Step::ReleaseBuffer, Step::ShutdownDst]);
    let mut f = Flow::with_buffered(10, false, false);
    assert_eq!(steps(&mut f), vec![Step::ArmPollIn, Step::Write { off: 0, len: 10 }]);
    f.on_readable();
    assert!(steps(&mut f).is_empty(), "no read before the replayed bytes are written");
    f.on_write(10);
    assert_eq!(steps(&mut f), vec![Step::Read { len: COPY_LEN }]);
}

fn readable_copy(auto: bool) -> Flow {
    let mut f = Flow::new(Transfer::Copy, auto);
    assert_eq!(steps(&mut f), vec![Step::ArmPollIn]);
    f.on_readable();
    assert_eq!(steps(&mut f), vec![Step::NeedBuffer]);
    f.on_buffer();
    f
}

#[test]
fn copy_mode_recvs_then_sends_the_rest_then_polls() {
    let mut f = readable_copy(false);
    assert_eq!(steps(&mut f), vec![Step::Read { len: COPY_LEN }]);
    assert_eq!(f.on_read(300), Outcome::Progress);
    assert_eq!(steps(&mut f), vec![Step::ArmPollIn, Step::Write { off: 0, len: 300 }]);
    f.on_write(100);
    assert_eq!(steps(&mut f), vec![Step::Write { off: 100, len: 200 }]);
    f.on_readable();
    assert!(steps(&mut f).is_empty(), "no recv into a buffer that still holds bytes");
    f.on_write(200);
    assert_eq!(steps(&mut f), vec![Step::Read { len: COPY_LEN }]);
    assert_eq!(f.on_read(-libc::EAGAIN), Outcome::Idle);
    assert_eq!(steps(&mut f), vec![Step::ArmPollIn, Step::ReleaseBuffer]);
    assert_eq!(f.delivered(), 300);
}

#[test]
fn auto_mode_turns_to_splice_after_a_full_buffer() {
    let mut f = readable_copy(true);
    steps(&mut f);
    f.on_read(COPY_LEN as i32);
    assert_eq!(steps(&mut f), vec![Step::ArmPollIn, Step::Write { off: 0, len: COPY_LEN }]);
    f.on_write(COPY_LEN as i32);
    assert_eq!(f.transfer(), Transfer::Copy, "the memory buffer is still held");
    assert_eq!(steps(&mut f), vec![Step::ReleaseBuffer]);
    assert_eq!(f.transfer(), Transfer::Splice);
    f.on_readable();
    assert_eq!(steps(&mut f), vec![Step::NeedBuffer]);
    f.on_buffer();
    assert_eq!(steps(&mut f), vec![Step::ReadWrite { len: LEN }]);
}

#[test]
fn copy_mode_without_auto_never_splices() {
    let mut f = readable_copy(false);
    steps(&mut f);
    f.on_read(COPY_LEN as i32);
    steps(&mut f);
    f.on_write(COPY_LEN as i32);
    steps(&mut f);
    assert_eq!(f.transfer(), Transfer::Copy);
}

#[test]
fn copy_mode_fin_and_errors() {
    let mut f = readable_copy(true);
    steps(&mut f);
    assert_eq!(f.on_read(0), Outcome::Idle);
    assert_eq!(steps(&mut f), vec![Step::ReleaseBuffer, Step::ShutdownDst]);
    let mut f = readable_copy(true);
    steps(&mut f);
    assert_eq!(f.on_read(-libc::ECONNRESET), Outcome::Failed(-libc::ECONNRESET));
}
