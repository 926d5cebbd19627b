//! How many more threads this process can start before it runs out of memory maps. Each thread
//! takes four (its stack and guard page, and the alternate signal stack the Rust runtime gives
//! every thread, with its guard page), and a thread that cannot map its signal stack aborts the
//! whole process; the kernel's limit is `vm.max_map_count` (65,530 by default). Connection
//! coroutines take two each (stack and guard page), so a share of the limit is kept for them.

use crate::config::MAPS_PER_THREAD;

/// The share of `vm.max_map_count` kept free for everything but new threads (connection
/// coroutines, allocator arenas, buffers): one eighth, 8,191 maps by default.
const RESERVE_DIVISOR: usize = 8;

/// Threads that can still be started, or `None` when the limit or the maps cannot be read.
/// Reads `/proc/self/maps` (tens of milliseconds with tens of thousands of threads): for the
/// supervisor before it grows a pool, never on a request's path.
pub fn threads_room() -> Option<usize> {
    let max: usize = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let maps = std::fs::read("/proc/self/maps").ok()?;
    let used = maps.iter().filter(|&&b| b == b'\n').count();
    Some(room(max, used))
}

fn room(max: usize, used: usize) -> usize {
    max.saturating_sub(max / RESERVE_DIVISOR)
        .saturating_sub(used)
        / MAPS_PER_THREAD as usize
}

#[cfg(test)]
mod tests {
    #[test]
    fn room_keeps_a_reserve_and_counts_four_maps_a_thread() {
        assert_eq!(super::room(65_530, 1_000), (65_530 - 8_191 - 1_000) / 4);
        assert_eq!(super::room(65_530, 60_000), 0, "past the reserve: none");
        assert!(
            super::threads_room().is_some_and(|n| n > 0),
            "this process has room"
        );
    }
}
