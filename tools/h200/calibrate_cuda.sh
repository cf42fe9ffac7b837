#!/usr/bin/env bash
# Builds servesim with candle's CUDA backend on a machine without a CUDA toolkit or GPU, for
# `servesim calibrate --device cuda` on a GPU machine that has the CUDA 13 driver and PyTorch's CUDA
# libraries but no Rust. What this project ran to take data/profiles/h200/candle/.
#
#   tools/h200/calibrate_cuda.sh build          # here: nvcc from NVIDIA's wheels, link stubs, build
#   tools/h200/calibrate_cuda.sh run OUT.toml   # there: the carried binary, PyTorch's libraries
set -euo pipefail
CUDA=${CUDA:-/opt/cuda13}
case "${1:-}" in
build)
    # nvcc, its compiler front end (nvvm), the CUDA headers and libcu++ (candle's kernels include them).
    pip download --no-deps -d "$CUDA/wheels" "nvidia-cuda-nvcc==13.0.*" "nvidia-cuda-runtime==13.0.*" \
        "nvidia-cuda-crt==13.0.*" "nvidia-nvvm==13.0.*" "nvidia-cuda-cccl==13.0.*"
    for w in "$CUDA"/wheels/*.whl; do python3 -m zipfile -e "$w" "$CUDA"; done
    chmod +x "$CUDA"/nvidia/cu13/bin/* "$CUDA"/nvidia/cu13/nvvm/bin/*
    # cudarc links the driver, cuBLAS, cuRAND and NVRTC dynamically: stub libraries with their sonames
    # stand in at link time (the real ones are loaded on the GPU machine).
    cargo fetch
    src=$(find ~/.cargo/registry/src -maxdepth 2 -type d -name 'cudarc-0.19*' | head -1)/src
    mkdir -p "$CUDA/stubs"
    for spec in driver:cuda:libcuda.so.1 nvrtc:nvrtc:libnvrtc.so.13 curand:curand:libcurand.so.10 \
        cublas:cublas:libcublas.so.13 cublaslt:cublasLt:libcublasLt.so.13; do
        IFS=: read -r mod lib soname <<<"$spec"
        grep -ohE 'load::<_F>\("[A-Za-z0-9_]+"\)' "$src/$mod/sys/mod.rs" | sed -E 's/.*"(.*)".*/\1/' |
            sort -u | awk '{print "void "$1"(void){}"}' >"$CUDA/stubs/$lib.c"
        gcc -shared -fPIC -w -Wl,-soname,"$soname" -o "$CUDA/stubs/lib$lib.so" "$CUDA/stubs/$lib.c"
    done
    ln -sf "$CUDA/nvidia/cu13/lib/libcudart.so.13" "$CUDA/stubs/libcudart.so"
    PATH=$CUDA/nvidia/cu13/bin:$PATH CUDA_COMPUTE_CAP=90 CUDA_ROOT=$CUDA/nvidia/cu13 \
        CARGO_PROFILE_RELEASE_DEBUG=0 RUSTFLAGS="-L $CUDA/stubs" \
        cargo build --release --features cuda --target-dir target/cuda
    echo "built target/cuda/release/servesim (carry it to the GPU machine)"
    ;;
run)
    LD_LIBRARY_PATH=$(python3 -c "import nvidia, glob, os; r = nvidia.__path__[0]; print(':'.join(sorted({os.path.dirname(p) for p in glob.glob(r + '/**/lib*.so*', recursive=True)})))")
    export LD_LIBRARY_PATH
    target/cuda/release/servesim calibrate --device cuda:0 --model llama-3.1-8b --scale 1 --repeats 20 \
        --out "${2:?output profile}"
    ;;
*)
    echo "usage: $0 build | run OUT.toml" >&2
    exit 2
    ;;
esac
