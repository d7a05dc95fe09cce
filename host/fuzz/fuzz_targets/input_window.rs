//! `window_range` (the read-ahead window of `inputs.read`) on any numbers: no panic, and a
//! range it returns is the read's part of the window: inside `0..have`, from `offset - start`,
//! at most `len` long, and shorter only when the window ends at the object's end.
#![no_main]

use libfuzzer_sys::fuzz_target;
use taskhost::files::window_range;

fuzz_target!(|args: (u64, usize, usize, u64, usize)| {
    let (start, have, asked, offset, len) = args;
    let Some(r) = window_range(start, have, asked, offset, len) else {
        // It covers every read that lies inside what it has.
        let inside = offset
            .checked_sub(start)
            .and_then(|from| usize::try_from(from).ok())
            .and_then(|from| from.checked_add(len))
            .is_some_and(|end| end <= have);
        assert!(!inside, "a read inside the window was refused: {args:?}");
        return;
    };
    assert!(r.start <= r.end && r.end <= have, "{r:?} outside 0..{have}");
    assert_eq!(offset.checked_sub(start), Some(r.start as u64));
    assert!(r.len() <= len);
    if r.len() < len {
        assert!(have < asked, "short ({r:?} of {len}) from a whole window");
    }
});
