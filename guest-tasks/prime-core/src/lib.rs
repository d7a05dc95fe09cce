//! Counting primes by plain trial division: the pure, CPU-bound core of the `prime-count`
//! task module.
//!
//! Dependency-free and `no_std`, so the same code builds for `wasm32-wasip2` (inside the
//! task module) and natively (the host's benchmark compares the two). The algorithm is
//! deliberately naive: it is a workload, not a prime sieve.

#![cfg_attr(not(test), no_std)]

/// Counts the primes `p` with `from <= p < to` (zero when `from >= to`).
///
/// Each number is tested by [`is_prime`]: trial division by 2, then by the odd numbers up
/// to its square root. The cost grows like `(to - from) * sqrt(to)`.
pub fn count_primes(from: u64, to: u64) -> u64 {
    let mut count = 0;
    let mut p = from;
    while p < to {
        if is_prime(p) {
            count += 1;
        }
        p += 1;
    }
    count
}

/// Whether `n` is prime, by trial division: 2, then the odd divisors up to `sqrt(n)`.
pub fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    if n < 4 {
        return true;
    }
    if n.is_multiple_of(2) {
        return false;
    }
    let limit = n.isqrt();
    let mut d = 3;
    while d <= limit {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::{count_primes, is_prime};

    #[test]
    fn counts_primes_below() {
        // (n, number of primes below n)
        let cases = [
            (0, 0),
            (1, 0),
            (2, 0),
            (3, 1),
            (10, 4),
            (100, 25),
            (1_000, 168),
            (100_000, 9_592),
        ];
        for (n, expected) in cases {
            assert_eq!(count_primes(0, n), expected, "primes below {n}");
        }
    }

    #[test]
    fn ranges_add_up() {
        let whole = count_primes(0, 100_000);
        let mut sum = 0;
        let mut from = 0;
        while from < 100_000 {
            let to = (from + 7_777).min(100_000);
            sum += count_primes(from, to);
            from = to;
        }
        assert_eq!(sum, whole);
        assert_eq!(count_primes(50, 50), 0);
        assert_eq!(count_primes(60, 50), 0);
    }

    #[test]
    fn primality() {
        let primes = [2, 3, 5, 7, 11, 13, 97, 7_919, 1_000_000_007, 4_294_967_291];
        let composites = [
            0,
            1,
            4,
            9,
            15,
            25,
            49,
            7_917,
            1_000_000_007 * 3,
            4_294_967_297,
        ];
        for p in primes {
            assert!(is_prime(p), "{p} is prime");
        }
        for c in composites {
            assert!(!is_prime(c), "{c} is not prime");
        }
    }
}
