//! Gives the C heap's free pages back to the system.
//!
//! glibc keeps freed memory for reuse and only returns the top of the heap
//! on its own. After a burst of sign-ins (buffers for every connection at
//! once) that is megabytes of resident memory nobody uses until the next
//! burst; `malloc_trim` hands the free pages in the middle back too. Other
//! C libraries (musl) and systems have no such call: there it does nothing.

/// Returns the heap's free pages to the system; true when some were.
pub fn release_free_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        #[expect(unsafe_code, reason = "glibc's malloc_trim has no safe binding")]
        // SAFETY: `malloc_trim` takes no pointer, only how much free space
        // to keep at the top of the heap (0: none), and takes each arena's
        // lock itself, so it is safe to call from any thread at any time.
        let released = unsafe { libc::malloc_trim(0) };
        released != 0
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freed_memory_between_live_blocks_is_released() {
        // Four megabytes in 1 KiB blocks; every 64th stays alive, so that
        // the free runs between them cannot go back from the top of the
        // heap by themselves.
        let mut blocks: Vec<Vec<u8>> = (0..4096).map(|i| vec![i as u8; 1024]).collect();
        let kept: Vec<Vec<u8>> = blocks.iter_mut().step_by(64).map(std::mem::take).collect();
        drop(blocks);
        let released = release_free_memory();
        if cfg!(all(target_os = "linux", target_env = "gnu")) {
            assert!(released, "glibc had free pages to give back");
        }
        assert!(kept.iter().enumerate().all(|(i, b)| b[0] == (i * 64) as u8));
        // Safe from another thread too, with little left to give back.
        std::thread::spawn(release_free_memory).join().unwrap();
    }
}
