//! Stable hashing for server identities and client addresses.
//!
//! Owns the one hash function whose output decides which server a client lands on under
//! `source-hash`. Its output must never change between builds, versions or processes (two ringlb
//! nodes behind one VIP must agree), so it is written out here instead of borrowed from `std`
//! (whose `DefaultHasher` is explicitly allowed to change) and its values are pinned by tests.
//! It never hashes memory addresses or indices: only names and IP address bytes.

use std::net::IpAddr;

/// Seed of every identity and client hash (the ASCII bytes "ringlb\0\x01").
pub const SEED: u64 = 0x7269_6e67_6c62_0001;

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// A 64-bit finalizer with full avalanche (the constants of the SplitMix64 output function).
#[inline]
pub(crate) fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Hashes little-endian 64-bit words; `len` (in bytes) and the seed separate inputs of different
/// kinds that would otherwise produce the same words.
#[inline]
fn hash_words(seed: u64, len: u64, words: &[u64]) -> u64 {
    let mut h = mix(seed ^ len.wrapping_mul(GOLDEN));
    for &w in words {
        h = mix(h ^ w).wrapping_add(GOLDEN);
    }
    mix(h)
}

/// Hash of arbitrary bytes (server names).
pub fn hash_bytes(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = mix(seed ^ (bytes.len() as u64).wrapping_mul(GOLDEN));
    for chunk in bytes.chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        h = mix(h ^ u64::from_le_bytes(word)).wrapping_add(GOLDEN);
    }
    mix(h)
}

/// Hash of a client IP address. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, what a dual-stack
/// listener reports for IPv4 clients) hashes like the IPv4 address itself, so one client keeps
/// its server whichever listener it came in through.
#[inline]
pub fn hash_ip(seed: u64, ip: IpAddr) -> u64 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => hash_words(seed, 4, &[u64::from(u32::from_be_bytes(v4.octets()))]),
        IpAddr::V6(v6) => {
            let bits = u128::from_be_bytes(v6.octets());
            hash_words(seed, 16, &[(bits >> 64) as u64, bits as u64])
        }
    }
}

/// Maps a 64-bit hash uniformly onto `0..n` without a division (multiply and keep the high half).
#[inline]
pub(crate) fn reduce(hash: u64, n: usize) -> usize {
    ((u128::from(hash) * n as u128) >> 64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn hash_values_are_pinned_across_versions() {
        // These values decide client placement under source-hash on every ringlb node; changing
        // them moves every client. Never update them without a release note.
        assert_eq!(hash_bytes(SEED, b""), PINNED[0]);
        assert_eq!(hash_bytes(SEED, b"web-1"), PINNED[1]);
        assert_eq!(hash_bytes(SEED, b"10.0.0.1:8080"), PINNED[2]);
        assert_eq!(hash_ip(SEED, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7))), PINNED[3]);
        assert_eq!(hash_ip(SEED, IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7))), PINNED[4]);
    }

    const PINNED: [u64; 5] = [
        0x86df_6b61_df48_d33c,
        0xe3f4_2c9a_63d0_3ae0,
        0xf321_6931_3f40_6b3e,
        0x3185_b889_6588_b9fb,
        0xc8d1_d0dd_2a1e_4cd3,
    ];

    #[test]
    fn ipv4_mapped_ipv6_hashes_like_ipv4() {
        let v4 = Ipv4Addr::new(198, 51, 100, 23);
        assert_eq!(hash_ip(SEED, IpAddr::V4(v4)), hash_ip(SEED, IpAddr::V6(v4.to_ipv6_mapped())));
        assert_ne!(hash_ip(SEED, IpAddr::V4(v4)), hash_ip(SEED, IpAddr::V6(v4.to_ipv6_compatible())));
    }

    #[test]
    fn reduce_stays_in_range_and_spreads() {
        let mut counts = [0u32; 7];
        for i in 0..70_000u64 {
            let r = reduce(mix(i), 7);
            counts[r] += 1;
        }
        for c in counts {
            assert!((9_500..10_500).contains(&c), "{counts:?}");
        }
        assert_eq!(reduce(u64::MAX, 65_537), 65_536);
        assert_eq!(reduce(0, 65_537), 0);
    }
}
