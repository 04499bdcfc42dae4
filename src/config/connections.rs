//! The connection cap: `MAX_CONNECTIONS`, or a default derived once, at
//! start, from the process's open-file limit.

/// File descriptors kept free for everything but client connections: the
/// listener, logs, and connections to Google and OpenAI beyond one per
/// client (pooled ones, and a sweep's concurrent deletes).
const RESERVED_FDS: u64 = 256;
/// The default cap never goes beyond this, however high the open-file
/// limit: a connection costs about 11 KiB even when it sends nothing (the
/// bench's `connections` scenario), so 4,096 idle ones are about 45 MiB.
const MAX_DEFAULT: u64 = 4_096;
/// Nor below this, however low the limit.
const MIN_DEFAULT: u64 = 16;

/// The connection cap, and where it came from (for `check-config`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimit {
    /// Connections open at once.
    pub max: usize,
    /// The process's open-file limit, when the cap was derived from it.
    pub derived_from_fd_limit: Option<u64>,
}

impl ConnectionLimit {
    /// `configured` (`MAX_CONNECTIONS`), or a default derived from the
    /// open-file limit: half of what is left after 256 for everything else,
    /// since a request in progress may hold a connection to Google or
    /// OpenAI as well, from 16 to 4,096.
    pub fn new(configured: Option<usize>) -> Self {
        match configured {
            Some(max) => Self {
                max,
                derived_from_fd_limit: None,
            },
            None => {
                let fds = open_file_limit().unwrap_or(1024);
                Self {
                    max: Self::derive(fds),
                    derived_from_fd_limit: Some(fds),
                }
            }
        }
    }

    fn derive(fds: u64) -> usize {
        let max = (fds.saturating_sub(RESERVED_FDS) / 2).clamp(MIN_DEFAULT, MAX_DEFAULT);
        usize::try_from(max).unwrap_or(usize::MAX)
    }
}

/// The soft limit on open files (`RLIMIT_NOFILE`), from `/proc/self/limits`
/// (Linux); `None` elsewhere.
pub fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .next()?;
    if soft == "unlimited" {
        return Some(u64::MAX);
    }
    soft.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_cap_is_half_of_the_open_file_limit_after_a_reserve_within_bounds() {
        assert_eq!(ConnectionLimit::derive(1024), 384);
        assert_eq!(ConnectionLimit::derive(4096), 1920);
        assert_eq!(ConnectionLimit::derive(256), 16);
        assert_eq!(ConnectionLimit::derive(20_000), 4_096);
        assert_eq!(ConnectionLimit::derive(u64::MAX), 4_096);
        let configured = ConnectionLimit::new(Some(7));
        assert_eq!(configured.max, 7);
        assert_eq!(configured.derived_from_fd_limit, None);
        assert!(open_file_limit().is_some(), "Linux has /proc/self/limits");
    }
}
