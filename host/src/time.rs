//! The one clock helper: this host's wall clock in milliseconds since the Unix epoch, the
//! unit of every time stored or compared across machines (leases, publish times, clock
//! checks). The rules that compare such times across machines are in
//! `checkpoint::ownership`.

/// This host's wall clock, in ms since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
