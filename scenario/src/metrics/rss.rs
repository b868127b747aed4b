//! Peak resident memory from procfs: `VmHWM` (the high-water mark) and its reset through
//! `/proc/self/clear_refs`, so a run can measure the peak of one phase rather than of the whole process.

/// Resets the process's peak resident set size (`VmHWM`) to its current size by writing `5` to
/// `/proc/self/clear_refs`; false where that is unsupported (not Linux, or procfs not writable).
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The process's peak resident set size in bytes (`VmHWM` in `/proc/self/status`); `None` where procfs
/// is unavailable.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_hwm(&status)
}

/// Extracts `VmHWM` (reported in kB) from the text of `/proc/<pid>/status`, in bytes.
pub(super) fn parse_vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().next()?.parse().ok()?;
    kb.checked_mul(1024)
}
