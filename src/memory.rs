//! This machine's memory, and a run's estimate of the memory it will hold, so that a configuration that
//! cannot fit is refused before it starts (exit 2, naming the key to lower) rather than allocating until
//! the operating system kills it.
//!
//! What a run holds that grows with its configuration is the replicas' KV bookkeeping: per block, the
//! piece pool's hash index (at most 8 slots of 16 bytes), its pieces (48 bytes), and after a hand-over the
//! per-block pool's record, free-queue entry and index again. [`BYTES_PER_BLOCK`] bounds their sum. The
//! rest (requests in flight, rows in batches, the summary's latency lists) grows with the workload's
//! size, which the workload's own bounds (`duration_s`, `max_sessions`, `max_requests`) limit.

use crate::config::Config;
use crate::error::ConfigError;

/// An upper bound on the bytes of KV bookkeeping one block costs a replica (see the module docs).
pub const BYTES_PER_BLOCK: u64 = 384;

/// Fixed bytes per replica beyond its blocks (scheduler queues, request table, scratch lists).
pub const BYTES_PER_REPLICA: u64 = 64 << 10;

/// The share of physical memory a run may plan to use.
const USABLE_SHARE: f64 = 0.75;

/// The memory this process may use, in bytes, when the platform says: physical memory, or the cgroup's
/// `memory.max` when a container sets a lower one.
pub fn physical_bytes() -> Option<u64> {
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    match (machine_bytes(), cgroup) {
        (Some(m), Some(c)) => Some(m.min(c)),
        (m, c) => m.or(c),
    }
}

fn machine_bytes() -> Option<u64> {
    #[cfg(unix)]
    {
        // SAFETY: sysconf reads a system constant and has no preconditions.
        let (pages, size) = unsafe {
            (
                libc::sysconf(libc::_SC_PHYS_PAGES),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        if pages > 0 && size > 0 {
            return Some((pages as u64).saturating_mul(size as u64));
        }
    }
    None
}

/// The estimated bytes a run of `cfg` with `num_gpu_blocks` blocks per replica holds for its KV pools.
pub fn estimate_kv_bytes(cfg: &Config, num_gpu_blocks: u32) -> u64 {
    let per_replica = (num_gpu_blocks as u64)
        .saturating_mul(BYTES_PER_BLOCK)
        .saturating_add(BYTES_PER_REPLICA);
    per_replica.saturating_mul(cfg.cluster.slots() as u64)
}

/// Refuses a run whose estimate exceeds the usable share of `physical` bytes (this machine's memory when
/// `None`), naming the keys that drive it.
pub fn check_fits(
    cfg: &Config,
    num_gpu_blocks: u32,
    physical: Option<u64>,
) -> Result<(), ConfigError> {
    check_fits_parallel(cfg, num_gpu_blocks, 1, physical)
}

/// As [`check_fits`], for `parallel` such runs at once (`compare -j`): each gets its share of memory.
pub fn check_fits_parallel(
    cfg: &Config,
    num_gpu_blocks: u32,
    parallel: usize,
    physical: Option<u64>,
) -> Result<(), ConfigError> {
    let Some(physical) = physical.or_else(physical_bytes) else {
        return Ok(());
    };
    let need = estimate_kv_bytes(cfg, num_gpu_blocks).saturating_mul(parallel.max(1) as u64);
    let usable = (physical as f64 * USABLE_SHARE) as u64;
    if need <= usable {
        return Ok(());
    }
    let blocks_key = if cfg.engine.num_gpu_blocks.is_some() {
        "engine.num_gpu_blocks"
    } else {
        "the hardware's memory_gib (or set engine.num_gpu_blocks)"
    };
    Err(ConfigError::invalid(
        "cluster.replicas / engine.num_gpu_blocks",
        format!(
            "the run would hold about {} MiB of KV bookkeeping ({} replica(s) x {num_gpu_blocks} blocks x {} \
             bytes{}), more than the {} MiB this machine can give it ({:.0}% of {} MiB); lower \
             cluster.replicas or {blocks_key}{}",
            need >> 20,
            cfg.cluster.slots(),
            BYTES_PER_BLOCK,
            if parallel > 1 {
                format!(", x {parallel} runs at once")
            } else {
                String::new()
            },
            usable >> 20,
            USABLE_SHARE * 100.0,
            physical >> 20,
            if parallel > 1 { ", or run fewer at once (-j)" } else { "" }
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estimate_refuses_what_cannot_fit_and_names_the_key() {
        let mut cfg = Config::default();
        cfg.cluster.replicas = 100_000;
        // 100,000 x (27,973 x 384 + 65,536) B = 1.08e12 B, over 0.75 x 16 GiB = 12.9e9 B.
        let e = check_fits(&cfg, 27_973, Some(16 << 30))
            .unwrap_err()
            .to_string();
        assert!(e.contains("lower cluster.replicas"), "{e}");
        // One replica: 27,973 x 384 + 65,536 = 10.8e6 B fits.
        cfg.cluster.replicas = 1;
        check_fits(&cfg, 27_973, Some(16 << 30)).unwrap();
        cfg.engine.num_gpu_blocks = Some(u32::MAX);
        // 4.29e9 x 384 B = 1.65e12 B.
        let e = check_fits(&cfg, u32::MAX, Some(16 << 30))
            .unwrap_err()
            .to_string();
        assert!(e.contains("engine.num_gpu_blocks"), "{e}");
    }

    #[test]
    fn this_machine_reports_its_memory() {
        let m = physical_bytes().expect("unix reports physical memory");
        assert!(m > 256 << 20, "{m}");
    }
}
