// mimalloc: a run makes millions of small, short-lived allocations (requests, block-hash lists, rows);
// it took 6% off scenario (a) against the system allocator, measured interleaved. Outputs do not depend
// on addresses.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(servesim::app::main_with_args(std::env::args_os()));
}
