//! Test-only: a store that keeps no KV. Nothing is cached or held, every allocation succeeds, and every
//! decode token recomputes its request's whole context ([`KvStore::recomputes_context`]). It models no
//! engine; it exists to prove that a store is one file plus one `KvKind` arm, through the CLI and the
//! leap tests (it never leaps: `decode_rule` keeps its default).

use super::{CacheHit, KvStats, KvStore};
use crate::request::{Request, RequestTable};

#[derive(Clone, Debug, Default)]
pub struct ToyRecompute;

impl KvStore for ToyRecompute {
    fn get_computed_blocks(&mut self, _req: &mut Request) -> CacheHit {
        CacheHit::default()
    }

    fn record_admission(&mut self, _req: &Request, _hit_tokens: u32) {}

    fn allocate_slots(&mut self, _req: &mut Request, _num_new: u32, _hit: CacheHit) -> bool {
        true
    }

    fn free(&mut self, _req: &mut Request) {}

    fn recomputes_context(&self) -> bool {
        true
    }

    fn used_blocks(&self) -> u32 {
        0
    }

    fn stats(&self) -> KvStats {
        KvStats::default()
    }

    fn check_invariants(&self, reqs: &RequestTable) -> Result<(), String> {
        match reqs.values().find(|r| r.kv.num_blocks_held() > 0) {
            Some(r) => Err(format!(
                "request {} holds blocks in a store without any",
                r.id
            )),
            None => Ok(()),
        }
    }
}
