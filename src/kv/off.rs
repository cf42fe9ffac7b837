//! `engine.kv_cache = "off"`: no KV cache at all, as a model run without `past_key_values`. Nothing is
//! cached or held, every allocation succeeds, and every decode token recomputes its request's whole
//! context ([`KvStore::recomputes_context`]): the replica prices the token as a forward pass (a prefill
//! chunk) over the prompt and every token generated so far, so generating o tokens after a prompt of P
//! costs the prefill of P, then of P + 1, ..., P + o - 1. No prefix reuse, no KV memory. It never leaps
//! (`decode_rule` keeps its default: every decode step is priced as a prefill).

use super::{CacheHit, KvStats, KvStore};
use crate::request::{Request, RequestTable};

#[derive(Clone, Debug, Default)]
pub struct KvOff;

impl KvStore for KvOff {
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
