//! Reading a process's CPU time, memory, open files and open-file limit
//! from `/proc`, and the machine's description from `/proc/cpuinfo` and
//! `/proc/meminfo`.

use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context as _;

/// Clock ticks per second (`getconf CLK_TCK`), asked once; 100 when it
/// cannot be asked.
fn ticks_per_second() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse().ok())
            .filter(|&ticks| ticks > 0)
            .unwrap_or(100)
    })
}

/// CPU time a process has used, in user and in kernel mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Cpu {
    /// `utime`.
    pub(crate) user: Duration,
    /// `stime`.
    pub(crate) system: Duration,
}

impl Cpu {
    /// User plus system time.
    pub(crate) fn total(self) -> Duration {
        self.user + self.system
    }

    /// The CPU time used since `earlier`.
    pub(crate) fn since(self, earlier: Self) -> Self {
        Self {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
        }
    }
}

/// The CPU time the process has used so far.
pub(crate) fn cpu_time(pid: u32) -> anyhow::Result<Cpu> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let (user, system) = cpu_ticks(&stat).with_context(|| format!("parsing {path}"))?;
    let per_second = ticks_per_second();
    let time = |ticks: u64| Duration::from_micros(ticks.saturating_mul(1_000_000) / per_second);
    Ok(Cpu {
        user: time(user),
        system: time(system),
    })
}

/// `utime` and `stime` (fields 14 and 15, in clock ticks) of a
/// `/proc/<pid>/stat` line. The command name (field 2) is in parentheses
/// and may hold spaces or parentheses itself, so fields are counted from
/// the last `)`.
fn cpu_ticks(stat: &str) -> Option<(u64, u64)> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    // The text after the name starts at field 3 (the state).
    let mut fields = after_name.split_whitespace().skip(14 - 3);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime, stime))
}

/// CPU time of the whole machine, all cores together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct MachineCpu {
    /// Time some core was busy (anything but idle and I/O wait).
    pub(crate) busy: Duration,
    /// Busy plus idle time.
    pub(crate) total: Duration,
}

impl MachineCpu {
    /// The CPU time spent since `earlier`.
    pub(crate) fn since(self, earlier: Self) -> Self {
        Self {
            busy: self.busy.saturating_sub(earlier.busy),
            total: self.total.saturating_sub(earlier.total),
        }
    }

    /// Busy share of the time, in percent.
    pub(crate) fn busy_pct(self) -> f64 {
        100.0 * self.busy.as_secs_f64() / self.total.as_secs_f64().max(f64::MIN_POSITIVE)
    }
}

/// The machine's CPU time so far, from the `cpu` line of `/proc/stat`.
pub(crate) fn machine_cpu() -> anyhow::Result<MachineCpu> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let (busy, total) = machine_ticks(&stat).context("parsing /proc/stat")?;
    let per_second = ticks_per_second();
    let time = |ticks: u64| Duration::from_micros(ticks.saturating_mul(1_000_000) / per_second);
    Ok(MachineCpu {
        busy: time(busy),
        total: time(total),
    })
}

/// Busy and total ticks of the first line of `/proc/stat`: `cpu user nice
/// system idle iowait irq softirq steal …` (guest time is already in user).
fn machine_ticks(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .take(8)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    let total: u64 = ticks.iter().sum();
    let idle = ticks.get(3)? + ticks.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// Resident memory of a process now and at its peak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Memory {
    /// `VmRSS`, in KiB.
    pub(crate) rss_kib: u64,
    /// `VmHWM` (the peak RSS), in KiB.
    pub(crate) peak_kib: u64,
}

impl Memory {
    /// `VmRSS` in MiB.
    pub(crate) fn rss_mib(self) -> f64 {
        kib_to_mib(self.rss_kib)
    }

    /// `VmHWM` in MiB.
    pub(crate) fn peak_mib(self) -> f64 {
        kib_to_mib(self.peak_kib)
    }
}

/// KiB to MiB.
pub(crate) fn kib_to_mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// `VmRSS` and `VmHWM` of a process.
pub(crate) fn memory(pid: u32) -> anyhow::Result<Memory> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |name| kib_field(&status, name).with_context(|| format!("no {name} in {path}"));
    Ok(Memory {
        rss_kib: field("VmRSS")?,
        peak_kib: field("VmHWM")?,
    })
}

/// The value of a `Name:   1234 kB` line of `/proc/<pid>/status` or
/// `/proc/meminfo`.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(':')?;
        value.trim().strip_suffix("kB")?.trim().parse().ok()
    })
}

/// Open file descriptors of a process: the entries of `/proc/<pid>/fd`
/// (sockets, the log, the epoll instance, …).
pub(crate) fn open_fds(pid: u32) -> anyhow::Result<usize> {
    let path = format!("/proc/{pid}/fd");
    let entries = std::fs::read_dir(&path).with_context(|| format!("reading {path}"))?;
    Ok(entries.filter(Result::is_ok).count())
}

/// The soft limit on open files of a process (`Max open files` in
/// `/proc/<pid>/limits`); `None` when it is unlimited.
pub(crate) fn open_file_limit(pid: u32) -> anyhow::Result<Option<u64>> {
    let path = format!("/proc/{pid}/limits");
    let limits = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    soft_limit(&limits, "Max open files").with_context(|| format!("no open-file limit in {path}"))
}

/// The soft limit of a `/proc/<pid>/limits` line (`Max open files  20000
/// 20000  files`): `Some(None)` when unlimited, `None` when the line is
/// missing or unreadable.
fn soft_limit(limits: &str, name: &str) -> Option<Option<u64>> {
    let line = limits.lines().find(|line| line.starts_with(name))?;
    match line[name.len()..].split_whitespace().next()? {
        "unlimited" => Some(None),
        soft => soft.parse().ok().map(Some),
    }
}

/// What the figures were measured on.
#[derive(Debug, Clone)]
pub(crate) struct Machine {
    /// Logical CPUs this process may use.
    pub(crate) nproc: usize,
    /// `model name` of the first CPU in `/proc/cpuinfo`.
    pub(crate) cpu_model: String,
    /// `MemTotal` of `/proc/meminfo`, in MiB.
    pub(crate) memory_mib: u64,
}

/// The machine, read once.
pub(crate) fn machine() -> &'static Machine {
    static MACHINE: OnceLock<Machine> = OnceLock::new();
    MACHINE.get_or_init(|| {
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| cpu_model(&text))
            .unwrap_or_else(|| "unknown".to_owned());
        let memory_mib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| kib_field(&text, "MemTotal"))
            .map_or(0, |kib| kib / 1024);
        Machine {
            nproc: std::thread::available_parallelism().map_or(1, usize::from),
            cpu_model,
            memory_mib,
        }
    })
}

fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == "model name").then(|| value.trim().to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_fields_14_and_15_even_with_a_strange_command_name() {
        // Fields 3.. of a real line, behind a name with a space and a paren.
        let stat = "4242 (openai key) s) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                    731 269 0 0 20 0 4 0 123456 123456789 2048 18446744073709551615";
        assert_eq!(cpu_ticks(stat), Some((731, 269)));
        assert_eq!(cpu_ticks("4242 (x) S 1 2"), None);
        assert_eq!(cpu_ticks("no name here"), None);
    }

    #[test]
    fn machine_time_is_busy_unless_idle_or_waiting() {
        let stat = "cpu  100 10 20 500 5 0 3 2 7 0\ncpu0 50 5 10 250 2 0 1 1 3 0\n";
        assert_eq!(machine_ticks(stat), Some((135, 640)));
        assert_eq!(machine_ticks("cpu0 1 2 3 4\n"), None);
        assert!(machine_cpu().unwrap().total > Duration::ZERO);
    }

    #[test]
    fn memory_fields_are_read_in_kib() {
        let status = "Name:\topenai-key-serv\nVmPeak:\t  600000 kB\nVmHWM:\t    9216 kB\n\
                      VmRSS:\t    7168 kB\nThreads:\t4\n";
        assert_eq!(kib_field(status, "VmRSS"), Some(7168));
        assert_eq!(kib_field(status, "VmHWM"), Some(9216));
        assert_eq!(kib_field(status, "VmSwap"), None);
        assert_eq!(kib_field(status, "Threads"), None);
        let memory = Memory {
            rss_kib: 7168,
            peak_kib: 9216,
        };
        assert!((memory.rss_mib() - 7.0).abs() < f64::EPSILON);
        assert!((memory.peak_mib() - 9.0).abs() < f64::EPSILON);
    }

    #[test]
    fn the_open_file_limit_is_the_soft_one() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             95000                95000                processes \n\
                      Max open files            20000                40000                files     \n";
        assert_eq!(soft_limit(limits, "Max open files"), Some(Some(20_000)));
        assert_eq!(soft_limit(limits, "Max processes"), Some(Some(95_000)));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(soft_limit(unlimited, "Max open files"), Some(None));
        assert_eq!(soft_limit(limits, "Max locked memory"), None);
        let pid = std::process::id();
        assert!(open_file_limit(pid).is_ok());
        assert!(open_fds(pid).unwrap() >= 3);
    }

    #[test]
    fn the_cpu_model_is_the_first_model_name() {
        let cpuinfo = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Processor\n\
                       processor\t: 1\nmodel name\t: other\n";
        assert_eq!(
            cpu_model(cpuinfo).as_deref(),
            Some("Intel(R) Xeon(R) Processor")
        );
    }

    #[test]
    fn this_process_can_be_read() {
        let pid = std::process::id();
        assert!(memory(pid).unwrap().rss_kib > 0);
        assert!(cpu_time(pid).is_ok());
    }
}
