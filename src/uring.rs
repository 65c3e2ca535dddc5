//! io_uring plumbing shared by the data path's workers and the health prober: how a ring is set
//! up (and what it falls back to on older kernels), how a `user_data` layout is declared, and the
//! linked connect chain both sides submit.
//!
//! It owns no ring, no descriptor and no state. It depends only on `io-uring`, `libc` and `std`,
//! and must never import the data path, the prober or the metrics: both sides import it, so any
//! such import would be a cycle. What each side's operations mean stays with that side (the data
//! path's `ops`, the prober's `ring`); this module only says how the bits are laid out.
//!
//! Not here, because the two sides differ on purpose: what happens after set-up (the workers
//! confine the kernel's slot allocator and must get their io-wq limits; the prober ignores a
//! refused limit), a full submission queue (a worker keeps a backlog and never blocks; the prober
//! sizes its queue for every check and submits to make room), and waiting (a worker waits for
//! any completion; the prober until its next tick).

use std::io;

use io_uring::{opcode, squeue, types, IoUring};

/// How a ring is set up. Every ring ringlb makes is used by the one thread that made it, submits
/// whole batches (SUBMIT_ALL: a failed entry does not stop the rest of a batch) and runs the
/// kernel's deferred work only when it waits (SINGLE_ISSUER + DEFER_TASKRUN).
#[derive(Debug, Clone, Copy)]
pub struct RingOptions {
    /// Submission queue entries.
    pub entries: u32,
    /// Completion queue entries; `None` for the kernel's default (twice `entries`).
    pub cq_entries: Option<u32>,
}

/// Builds a ring with SUBMIT_ALL, SINGLE_ISSUER and DEFER_TASKRUN; on kernels that refuse the
/// last two (EINVAL: SINGLE_ISSUER is 6.0, DEFER_TASKRUN 6.1) it falls back to SUBMIT_ALL alone.
/// Any other error is returned as it is.
pub fn build_ring(options: RingOptions) -> io::Result<IoUring> {
    let builder = || {
        let mut builder = IoUring::builder();
        if let Some(cq) = options.cq_entries {
            builder.setup_cqsize(cq);
        }
        builder.setup_submit_all();
        builder
    };
    match builder().setup_single_issuer().setup_defer_taskrun().build(options.entries) {
        Ok(ring) => Ok(ring),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => builder().build(options.entries),
        Err(e) => Err(e),
    }
}

/// One field of a `user_data` layout: `bits` wide, starting at bit `shift`. A side declares its
/// layout as a few of these constants and packs a value as the `|` of its fields' [`Field::pack`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    shift: u32,
    bits: u32,
}

impl Field {
    /// A field of `bits` bits at `shift`; a layout that does not fit in 64 bits does not compile
    /// (the fields are constants).
    pub const fn new(shift: u32, bits: u32) -> Field {
        assert!(bits > 0 && shift + bits <= 64, "a user_data field must fit in 64 bits");
        Field { shift, bits }
    }

    /// The largest value the field holds.
    pub const fn max(self) -> u64 {
        u64::MAX >> (64 - self.bits)
    }

    /// `value` in its place. A value wider than the field is cut to the field, so it can never
    /// change another field (debug builds assert that it fits).
    #[inline]
    pub fn pack(self, value: u64) -> u64 {
        debug_assert!(value <= self.max(), "{value} does not fit in {} bits", self.bits);
        (value & self.max()) << self.shift
    }

    /// The field's value in `user_data`.
    #[inline]
    pub fn unpack(self, user_data: u64) -> u64 {
        (user_data >> self.shift) & self.max()
    }
}

/// The kinds of operation one side submits, each with its code in the `user_data` kind field.
pub trait OpKind: Copy + 'static {
    /// Every kind, so that a code can be read back.
    const KINDS: &'static [Self];

    /// The kind's code; never 0, so that a zeroed `user_data` names no operation.
    fn code(self) -> u64;

    /// The kind whose code is `code`; `None` for a code this side never submitted.
    fn from_code(code: u64) -> Option<Self> {
        Self::KINDS.iter().copied().find(|kind| kind.code() == code)
    }
}

/// A socket option the connect chain sets, with its value. The value is `'static` (a constant
/// shared by every chain) because the kernel reads it when the operation runs, after the chain
/// was built.
#[derive(Debug, Clone, Copy)]
pub struct SockOpt {
    level: libc::c_int,
    name: libc::c_int,
    value: *const libc::c_void,
    len: u32,
}

impl SockOpt {
    pub fn new<T>(level: libc::c_int, name: libc::c_int, value: &'static T) -> SockOpt {
        let value = (value as *const T).cast();
        SockOpt { level, name, value, len: std::mem::size_of::<T>() as u32 }
    }
}

/// The `user_data` of each operation of a connect chain (every socket option shares one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectUserData {
    pub socket: u64,
    pub sockopt: u64,
    pub connect: u64,
    pub timeout: u64,
}

/// What one connect chain needs. The chain's entries point at `addr` and `timeout`: they must stay
/// where they are until every completion of the chain has arrived.
pub struct ConnectChain<'a, const OPTS: usize> {
    /// `AF_INET` or `AF_INET6`.
    pub domain: libc::c_int,
    /// The registered-file-table slot the new socket goes to (a direct descriptor), on which the
    /// options are set and the connect is made.
    pub slot: u32,
    pub sockopts: [SockOpt; OPTS],
    pub addr: *const libc::sockaddr,
    pub addr_len: libc::socklen_t,
    /// The link timeout guarding the whole chain.
    pub timeout: &'a types::Timespec,
    pub user_data: ConnectUserData,
}

impl<const OPTS: usize> ConnectChain<'_, OPTS> {
    /// socket (non-blocking TCP, into `slot`) -> each socket option -> connect, linked, then the
    /// link timeout: `OPTS + 3` entries, each of which completes once. `N` must be `OPTS + 3`
    /// (checked at compile time). `None` when `slot` cannot name a registered-file-table slot.
    pub fn entries<const N: usize>(&self) -> Option<[squeue::Entry; N]> {
        const { assert!(N == OPTS + 3, "a connect chain has socket, the options, connect and a timeout") };
        let dest = types::DestinationSlot::try_from_slot_target(self.slot).ok()?;
        let file = types::Fixed(self.slot);
        let link = squeue::Flags::IO_LINK;
        let ud = self.user_data;
        Some(std::array::from_fn(|i| match i {
            0 => opcode::Socket::new(self.domain, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, libc::IPPROTO_TCP)
                .file_index(Some(dest))
                .build()
                .flags(link)
                .user_data(ud.socket),
            i if i <= OPTS => {
                let opt = self.sockopts[i - 1];
                opcode::SetSockOpt::new(file, opt.level as u32, opt.name as u32, opt.value, opt.len)
                    .build()
                    .flags(link)
                    .user_data(ud.sockopt)
            }
            i if i == OPTS + 1 => {
                opcode::Connect::new(file, self.addr, self.addr_len).build().flags(link).user_data(ud.connect)
            }
            _ => opcode::LinkTimeout::new(self.timeout).build().user_data(ud.timeout),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static ONE: libc::c_int = 1;

    #[test]
    fn fields_pack_and_unpack_without_touching_each_other() {
        const KIND: Field = Field::new(0, 8);
        const SLOT: Field = Field::new(8, 24);
        const GEN: Field = Field::new(32, 32);
        assert_eq!((KIND.max(), SLOT.max(), GEN.max()), (0xff, 0xff_ffff, 0xffff_ffff));
        let packed = KIND.pack(7) | SLOT.pack(SLOT.max()) | GEN.pack(u64::from(u32::MAX));
        assert_eq!((KIND.unpack(packed), SLOT.unpack(packed), GEN.unpack(packed)), (7, SLOT.max(), GEN.max()));
        assert_eq!(Field::new(0, 64).unpack(u64::MAX), u64::MAX);
    }

    #[test]
    fn a_connect_chain_is_socket_options_connect_then_its_timeout() {
        let timeout = types::Timespec::new();
        let user_data = ConnectUserData { socket: 1, sockopt: 2, connect: 3, timeout: 4 };
        let chain = ConnectChain {
            domain: libc::AF_INET,
            slot: 9,
            sockopts: [SockOpt::new(libc::IPPROTO_TCP, libc::TCP_NODELAY, &ONE); 2],
            // Never submitted: nothing reads it.
            addr: std::ptr::null(),
            addr_len: std::mem::size_of::<libc::sockaddr_in>() as u32,
            timeout: &timeout,
            user_data,
        };
        let entries: [squeue::Entry; 5] = chain.entries().expect("a valid slot");
        let codes: Vec<u32> = entries.iter().map(squeue::Entry::get_opcode).collect();
        let expected = [
            opcode::Socket::CODE,
            opcode::SetSockOpt::CODE,
            opcode::SetSockOpt::CODE,
            opcode::Connect::CODE,
            opcode::LinkTimeout::CODE,
        ];
        assert_eq!(codes, expected.map(u32::from));
        let user_datas: Vec<u64> = entries.iter().map(squeue::Entry::get_user_data).collect();
        assert_eq!(user_datas, [1, 2, 2, 3, 4]);
        // Every entry but the timeout links to the next one (the flags are only in the Debug text).
        let linked = |e: &squeue::Entry| {
            let text = format!("{e:?}");
            let flags = text.split("flags: ").nth(1).and_then(|rest| rest.split(',').next());
            flags.and_then(|f| f.trim().parse::<u8>().ok()).map(|f| f & squeue::Flags::IO_LINK.bits() != 0)
        };
        let flags: Vec<Option<bool>> = entries.iter().map(linked).collect();
        assert_eq!(flags, [true, true, true, true, false].map(Some));
    }

    #[test]
    fn a_ring_is_built_with_or_without_the_newer_flags() {
        let ring = build_ring(RingOptions { entries: 64, cq_entries: Some(256) }).expect("ring");
        assert_eq!((ring.params().sq_entries(), ring.params().cq_entries()), (64, 256));
        let ring = build_ring(RingOptions { entries: 64, cq_entries: None }).expect("ring");
        assert_eq!(ring.params().cq_entries(), 128);
    }
}
