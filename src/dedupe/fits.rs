//! Does the configured dedupe index fit the container? (Here, not in `config`: the entry size
//! is the index's fact, and `config` imports nothing of the modules it configures.) fxgate reads its cgroup's memory limit
//! at start and refuses a config whose in-memory index, full at `dedupe.max_entries`, would take
//! more than half of it: a pod OOM-killed when its index fills loses the index with it, at the
//! busiest moment. The other half is for connections, buffers and the allocator.

use std::path::{Path, PathBuf};

use super::compact::BYTES_PER_ENTRY;
use crate::config::{Backend, Config, ConfigError};

fn invalid(key: &str, problem: String) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        problem,
    }
}

/// Limits at or above this are "unlimited" (cgroup v1 writes 2^63 rounded to a page).
const UNLIMITED: u64 = 1 << 62;

/// The memory limit that applies to this process: the smallest limit on its cgroup or any
/// ancestor (a parent's limit binds its children), cgroup v2 or v1. `None` when unlimited or
/// not under a cgroup with the memory controller.
pub fn cgroup_memory_limit() -> Option<u64> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mut limits = Vec::new();
    for (dir, file) in candidates(&own) {
        // Walk from the process's own cgroup up to the hierarchy's root.
        let mut at = Some(dir.as_path());
        while let Some(d) = at {
            if let Some(limit) = std::fs::read_to_string(d.join(file))
                .ok()
                .and_then(|v| parse_limit(&v))
            {
                limits.push(limit);
            }
            at = d.parent().filter(|p| p.starts_with("/sys/fs/cgroup"));
        }
    }
    limits.into_iter().min()
}

/// Where the memory limit files of the cgroups named in `/proc/self/cgroup` are: each
/// cgroup's directory and the name of its limit file (v1 or v2).
pub fn candidates(proc_self_cgroup: &str) -> Vec<(PathBuf, &'static str)> {
    let mut out = Vec::new();
    for line in proc_self_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let rel = path.trim_start_matches('/');
        if controllers.is_empty() {
            // cgroup v2: mounted at /sys/fs/cgroup, or at .../unified beside v1 ("hybrid").
            out.push((Path::new("/sys/fs/cgroup").join(rel), "memory.max"));
            out.push((Path::new("/sys/fs/cgroup/unified").join(rel), "memory.max"));
        } else if controllers.split(',').any(|c| c == "memory") {
            out.push((
                Path::new("/sys/fs/cgroup/memory").join(rel),
                "memory.limit_in_bytes",
            ));
        }
    }
    out
}

/// A limit file's value: bytes, or `None` for "max" and v1's near-2^63 "unlimited".
fn parse_limit(value: &str) -> Option<u64> {
    value.trim().parse::<u64>().ok().filter(|v| *v < UNLIMITED)
}

/// Refuses `cfg` when its in-memory dedupe index, full, would not fit in half of `limit`.
pub fn check_index_fits(cfg: &Config, limit: Option<u64>) -> Result<(), ConfigError> {
    let (Some(limit), Backend::Memory) = (limit, cfg.store.backend) else {
        return Ok(());
    };
    let needed = cfg.dedupe.max_entries.saturating_mul(BYTES_PER_ENTRY);
    if needed <= limit / 2 {
        return Ok(());
    }
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    Err(invalid(
        "dedupe.max_entries",
        format!(
            "{} entries need up to {:.0} MiB for the in-memory dedupe index ({BYTES_PER_ENTRY} bytes each), \
             more than half of this container's memory limit of {:.0} MiB; \
             set max_entries to at most {}, raise the memory limit to at least {:.0} MiB, \
             or use store.backend = \"redis\"",
            cfg.dedupe.max_entries,
            mib(needed),
            mib(limit),
            limit / 2 / BYTES_PER_ENTRY,
            mib(needed.saturating_mul(2)).ceil(),
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_files_read_bytes_and_treat_max_and_v1_unlimited_as_none() {
        assert_eq!(parse_limit("268435456\n"), Some(268_435_456));
        assert_eq!(parse_limit("max\n"), None);
        assert_eq!(parse_limit("9223372036854771712\n"), None);
        assert_eq!(parse_limit(""), None);
    }

    #[test]
    fn both_hierarchies_are_looked_at() {
        let c = candidates("12:memory:/kubepods/pod1\n3:cpu,cpuacct:/x\n0::/kubepods/pod1/c\n");
        let paths: Vec<String> = c
            .iter()
            .map(|(d, f)| format!("{}/{f}", d.display()))
            .collect();
        assert_eq!(
            paths,
            [
                "/sys/fs/cgroup/memory/kubepods/pod1/memory.limit_in_bytes",
                "/sys/fs/cgroup/kubepods/pod1/c/memory.max",
                "/sys/fs/cgroup/unified/kubepods/pod1/c/memory.max",
            ]
        );
    }
}
