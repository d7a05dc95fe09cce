//! The benchmark workloads: the pure, deterministic core of the `workloads` task module.
//!
//! The same code builds for `wasm32-wasip2` (inside the task module) and natively (the
//! host's benchmark, `cargo bench -p taskhost --bench runtime`, compares the two). Each
//! workload makes its own input from a fixed seed, does its work and returns a checksum
//! of the result, so that native and wasm runs can be checked against each other.
//!
//! | workload | what it does at `scale` |
//! |---|---|
//! | [`Workload::Md`] | Lennard-Jones molecular dynamics: `scale` velocity-Verlet steps of 4,000 particles (f64, all pairs, cut-off, periodic box) |
//! | [`Workload::Sha256`] | SHA-256 over `scale` MiB of pseudo-random bytes |
//! | [`Workload::Sort`] | sorts `scale` million pseudo-random `u32`s (`sort_unstable`) |
//! | [`Workload::Json`] | parses and re-serializes a JSON document of `scale` thousand records (serde_json) |
//! | [`Workload::Compress`] | deflate (level 6) and inflate `scale` MiB of text-like bytes (miniz_oxide) |

use std::fmt;
use std::str::FromStr;

mod md;

pub use md::md_steps;

/// One of the workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Lennard-Jones molecular dynamics ([`md_steps`]).
    Md,
    /// SHA-256 of pseudo-random bytes ([`sha256`]).
    Sha256,
    /// Sorting integers ([`sort`]).
    Sort,
    /// JSON parse and re-serialize ([`json`]).
    Json,
    /// A compression round trip ([`compress`]).
    Compress,
}

impl Workload {
    /// Every workload, in the order the benchmark prints them.
    pub const ALL: [Workload; 5] = [
        Workload::Md,
        Workload::Sha256,
        Workload::Sort,
        Workload::Json,
        Workload::Compress,
    ];

    /// Its name in a job document (`"workload"`).
    pub fn name(self) -> &'static str {
        match self {
            Workload::Md => "md",
            Workload::Sha256 => "sha256",
            Workload::Sort => "sort",
            Workload::Json => "json",
            Workload::Compress => "compress",
        }
    }

    /// Runs it at `scale` (see the table above) and returns the checksum of its result.
    pub fn run(self, scale: u64) -> u64 {
        match self {
            Workload::Md => md_steps(4000, scale),
            Workload::Sha256 => sha256(scale),
            Workload::Sort => sort(scale),
            Workload::Json => json(scale),
            Workload::Compress => compress(scale),
        }
    }
}

/// A workload name that is not one of [`Workload::ALL`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownWorkload(pub String);

impl fmt::Display for UnknownWorkload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown workload {:?}: one of md, sha256, sort, json, compress",
            self.0
        )
    }
}

impl std::error::Error for UnknownWorkload {}

impl FromStr for Workload {
    type Err = UnknownWorkload;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Workload::ALL
            .into_iter()
            .find(|w| w.name() == s)
            .ok_or_else(|| UnknownWorkload(s.to_owned()))
    }
}

/// A small, fast, deterministic generator (SplitMix64): the workloads' inputs.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 pseudo-random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A float in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// SHA-256 over `mib` MiB of pseudo-random bytes, made 64 KiB at a time; the checksum is
/// the digest's first 8 bytes.
pub fn sha256(mib: u64) -> u64 {
    let mut rng = Rng::new(1);
    let mut buf = vec![0u8; 64 << 10];
    let mut h = hmac_sha256::Hash::new();
    for _ in 0..mib * 16 {
        for word in buf.chunks_exact_mut(8) {
            word.copy_from_slice(&rng.next_u64().to_le_bytes());
        }
        h.update(&buf);
    }
    let digest = h.finalize();
    u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// Sorts `millions` million pseudo-random `u32`s; the checksum mixes the sorted values
/// with their positions (so it is also a check of the order).
pub fn sort(millions: u64) -> u64 {
    let mut rng = Rng::new(2);
    let n = (millions * 1_000_000) as usize;
    let mut v: Vec<u32> = (0..n).map(|_| rng.next_u64() as u32).collect();
    v.sort_unstable();
    v.iter().enumerate().fold(0u64, |acc, (i, &x)| {
        acc.rotate_left(5) ^ (x as u64).wrapping_mul(i as u64 | 1)
    })
}

/// Makes a JSON document of `thousands` thousand records (strings with escapes, integers,
/// floats, booleans, nulls, nested arrays and objects), then parses it into a
/// `serde_json::Value` and serializes that again, three times; the checksum covers the
/// text's length and bytes.
pub fn json(thousands: u64) -> u64 {
    let text = json_document(thousands);
    let mut sum = 0u64;
    for _ in 0..3 {
        let value: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        let again = serde_json::to_string(&value).expect("serializable");
        sum = sum.wrapping_add(again.len() as u64);
        sum = again
            .bytes()
            .step_by(61)
            .fold(sum, |acc, b| acc.rotate_left(3) ^ b as u64);
    }
    sum
}

/// The document [`json`] parses: an object with an array of records.
pub fn json_document(thousands: u64) -> String {
    use std::fmt::Write as _;
    let mut rng = Rng::new(3);
    let n = thousands * 1000;
    let mut s = String::with_capacity(n as usize * 260);
    s.push_str("{\"kind\":\"bench\",\"records\":[");
    for i in 0..n {
        if i > 0 {
            s.push(',');
        }
        let a = rng.next_u64();
        let x = rng.next_f64() * 1e3 - 500.0;
        let y = rng.next_f64();
        write!(
            s,
            "{{\"id\":{i},\"name\":\"item-{a:x}\",\"note\":\"line \\\"{}\\\"\\n\\tend \\u00e9\",\
             \"active\":{},\"score\":{x},\"ratio\":{y:e},\"tags\":[\"t{}\",\"t{}\",\"t{}\"],\
             \"pos\":{{\"x\":{},\"y\":{},\"z\":null}},\"counts\":[{},{},{},{}]}}",
            a % 1000,
            a & 1 == 0,
            a % 7,
            a % 11,
            a % 13,
            (a >> 8) % 100_000,
            (a >> 24) % 100_000,
            a >> 40,
            (a >> 20) & 0xffff,
            a % 3,
            i * 7
        )
        .expect("writing to a String");
    }
    s.push_str("]}");
    s
}

/// Deflates `mib` MiB of text-like bytes (words drawn from a small vocabulary with a
/// skewed distribution, about 3:1 compressible) at level 6 and inflates them back; the
/// checksum covers the compressed length and the bytes. Panics if the round trip differs.
pub fn compress(mib: u64) -> u64 {
    const WORDS: [&str; 16] = [
        "the ", "quick ", "brown ", "fox ", "jumps ", "over ", "lazy ", "dog ", "and ", "runs ",
        "far ", "away, ", "while ", "birds ", "sing.\n", "42 ",
    ];
    let mut rng = Rng::new(4);
    let n = (mib << 20) as usize;
    let mut data = Vec::with_capacity(n + 16);
    while data.len() < n {
        let r = rng.next_u64();
        // Skewed: low indices far more often.
        let i = ((r & 0xf) * ((r >> 4) & 0xf) / 15) as usize;
        data.extend_from_slice(WORDS[i].as_bytes());
        if r >> 60 == 0 {
            data.extend_from_slice(format!("{} ", r % 100_000).as_bytes());
        }
    }
    data.truncate(n);
    let packed = miniz_oxide::deflate::compress_to_vec(&data, 6);
    let unpacked = miniz_oxide::inflate::decompress_to_vec(&packed).expect("valid deflate");
    assert!(unpacked == data, "the round trip changed the data");
    (packed.len() as u64)
        .wrapping_mul(0x1000_0001)
        .wrapping_add(packed.iter().step_by(97).map(|&b| b as u64).sum::<u64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for w in Workload::ALL {
            assert_eq!(w.name().parse::<Workload>(), Ok(w));
        }
        assert!("nope".parse::<Workload>().is_err());
    }

    #[test]
    fn small_runs_are_deterministic() {
        for w in Workload::ALL {
            assert_eq!(w.run(1), w.run(1), "{w:?}");
        }
    }

    #[test]
    fn the_json_document_parses() {
        let doc = json_document(1);
        let v: serde_json::Value = serde_json::from_str(&doc).unwrap();
        assert_eq!(v["records"].as_array().unwrap().len(), 1000);
    }

    #[test]
    fn sha256_matches_a_known_digest_of_empty_input() {
        let d = hmac_sha256::Hash::hash(b"");
        assert_eq!(d[0], 0xe3);
        assert_ne!(sha256(1), sha256(2));
    }
}
