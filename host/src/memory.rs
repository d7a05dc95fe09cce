//! The process's memory given back while it has nothing to do (issue 15: an idle worker's
//! resident set). Two calls, both no-ops where they do not apply:
//!
//! - [`limit_arenas`], once at start: glibc's malloc keeps a separate arena per thread that
//!   allocated (up to 8 per core), each holding memory freed into it; capped, fewer arenas
//!   hold less (measured in the README: the Pub/Sub worker's anonymous memory).
//! - [`release_idle`], once a worker has been idle a while: the free memory of every arena
//!   goes back to the kernel (`malloc_trim`), and so do the pages of this program's own code
//!   and read-only data that start-up and past jobs paged in (`MADV_PAGEOUT` on the
//!   executable's read-only mappings: clean file pages, read back from the file when next
//!   used). Nothing changes but what is resident.
//!
//! Only the glibc allocator is tuned (`target_env = "gnu"`); the page-out is Linux's (5.4
//! or newer; an older kernel refuses it, which changes nothing).

/// The malloc arenas the binary allows (glibc's default is 8 per core): two keep the idle
/// worker's anonymous memory low without making its threads wait on one lock.
pub const ARENAS: u32 = 2;

/// Caps glibc's malloc arenas at `arenas` (glibc's `M_ARENA_MAX`), before the threads that
/// would make more start. The binary skips it when `MALLOC_ARENA_MAX` (glibc's own variable)
/// is set, so that an explicit value wins.
#[allow(unsafe_code)]
pub fn limit_arenas(arenas: u32) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let arenas = i32::try_from(arenas.max(1)).unwrap_or(i32::MAX);
        // SAFETY: mallopt only sets an allocator parameter; M_ARENA_MAX takes any positive
        // count and affects only where later allocations are served from.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, arenas);
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = arenas;
}

/// Gives back what an idle process need not hold: every malloc arena's free memory and the
/// resident pages of the executable's read-only mappings (its code and constants). Blocks
/// for a few milliseconds (it walks the arenas and asks the kernel to reclaim); call it on a
/// blocking thread. Returns the bytes of the executable's mappings handed to the kernel
/// (resident or not), 0 where that does not apply.
pub fn release_idle() -> usize {
    trim_arenas();
    page_out_code()
}

#[allow(unsafe_code)]
fn trim_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory of the allocator's own arenas to the
    // kernel; no allocation is moved or freed.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[allow(unsafe_code)]
fn page_out_code() -> usize {
    #[cfg(target_os = "linux")]
    {
        let Ok(exe) = std::fs::read_link("/proc/self/exe") else {
            return 0;
        };
        let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
            return 0;
        };
        let mut bytes = 0;
        for (start, len) in read_only_mappings(&maps, &exe.to_string_lossy()) {
            // SAFETY: the range is a whole mapping of the executable that nothing writes
            // (read-only, private); MADV_PAGEOUT only reclaims its pages, whose content
            // the kernel reads back from the file (or swap) on the next access: no memory
            // this program sees changes.
            let done =
                unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_PAGEOUT) };
            if done == 0 {
                bytes += len;
            }
        }
        bytes
    }
    #[cfg(not(target_os = "linux"))]
    0
}

/// The `(start, length)` of each mapping in `maps` (the text of `/proc/self/maps`) of the
/// file `exe` that is neither writable nor shared.
fn read_only_mappings<'a>(
    maps: &'a str,
    exe: &'a str,
) -> impl Iterator<Item = (usize, usize)> + 'a {
    maps.lines().filter_map(move |line| {
        // `start-end perms offset dev inode`, single spaces, then padding and the path.
        let mut fields = line.splitn(6, ' ');
        let range = fields.next()?;
        let perms = fields.next()?;
        let path = fields.nth(3)?.trim_start();
        if path != exe || perms.contains('w') || !perms.ends_with('p') {
            return None;
        }
        let (start, end) = range.split_once('-')?;
        let start = usize::from_str_radix(start, 16).ok()?;
        let end = usize::from_str_radix(end, 16).ok()?;
        (end > start).then_some((start, end - start))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_executables_read_only_private_mappings() {
        let maps = "\
55d0c0000000-55d0c0100000 r--p 00000000 fe:01 42   /opt/bin/taskhost
55d0c0100000-55d0c0300000 r-xp 00100000 fe:01 42   /opt/bin/taskhost
55d0c0300000-55d0c0310000 rw-p 00300000 fe:01 42   /opt/bin/taskhost
55d0c0310000-55d0c0320000 r--s 00310000 fe:01 42   /opt/bin/taskhost
55d0c0320000-55d0c0330000 r--p 00000000 fe:01 43   /opt/bin/taskhost-other
7f0000000000-7f0000001000 r-xp 00000000 fe:01 44   /usr/lib/libc.so.6
7f0000001000-7f0000002000 rw-p 00000000 00:00 0
7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0    [stack]
";
        let got: Vec<_> = read_only_mappings(maps, "/opt/bin/taskhost").collect();
        assert_eq!(
            got,
            vec![(0x55d0c0000000, 0x100000), (0x55d0c0100000, 0x200000)]
        );
    }

    #[test]
    fn a_path_with_spaces_is_matched_whole() {
        let maps = "1000-3000 r-xp 00000000 fe:01 42   /opt/my dir/taskhost\n";
        let got: Vec<_> = read_only_mappings(maps, "/opt/my dir/taskhost").collect();
        assert_eq!(got, vec![(0x1000, 0x2000)]);
        assert_eq!(read_only_mappings(maps, "/opt/my").count(), 0);
    }

    #[test]
    fn releasing_keeps_the_program_working() {
        // Code paged out is read back on use: this test's own code runs on after it.
        let before: Vec<u8> = (0..=255).collect();
        let handed = release_idle();
        assert!(
            cfg!(not(target_os = "linux")) || handed > 0,
            "nothing paged out"
        );
        let after: Vec<u8> = (0..=255).collect();
        assert_eq!(before, after);
    }
}
