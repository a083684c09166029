#!/usr/bin/env bash
# Checks that the built FP4 GEMM extension modules contain the tensor-core instructions they exist for:
#   fp4ref_cuda/_gemm_sm100a*.so : only an sm_100a cubin, with UTCOMMA/UTCQMMA (tcgen05.mma block-scaled FP4)
#   fp4ref_cuda/_gemm_sm120a*.so : only an sm_120a cubin, with OMMA.SF (mma.sync kind::mxf4nvf4.block_scale)
#   fp4ref_cuda/_gemm_sm90*.so   : an sm_90a cubin with HMMA.16816.F32.BF16 (the small-M kernels' mma.sync)
#                                  and LDGSTS.E.BYPASS.128 (the pipelined small-M kernel's cp.async), and
#                                  PTX that ptxas assembles for the PTX's own .target (sm_80): no instruction
#                                  that target lacks (csrc/ptx.cuh guards them), so the driver's JIT accepts it
# Needs no GPU. cuobjdump and nvdisasm (PyPI nvidia-cuda-cuobjdump, nvidia-cuda-nvdisasm): $CUOBJDUMP, else the nvidia-cuda-cuobjdump wheel, else $CUDA_HOME/bin or PATH.
# A missing module is skipped, unless FP4REF_REQUIRE_CUTLASS=1 (CI after FP4REF_BUILD_CUTLASS=1) for the
# Blackwell ones. Exit status 1 on any failed check.
set -uo pipefail
cd "$(dirname "$0")/.."

find_cuobjdump() {
  if [ -n "${CUOBJDUMP:-}" ]; then echo "$CUOBJDUMP"; return; fi
  local p
  p=$(python - <<'PY' 2>/dev/null
import os
try:
    import nvidia
    for root in nvidia.__path__:
        for sub in ("cu13", "cu12", "cuda_cuobjdump"):
            f = os.path.join(root, sub, "bin", "cuobjdump")
            if os.path.exists(f):
                print(f)
                raise SystemExit
except ImportError:
    pass
PY
)
  if [ -n "$p" ]; then echo "$p"; return; fi
  if [ -x "${CUDA_HOME:-/usr/local/cuda}/bin/cuobjdump" ]; then echo "${CUDA_HOME:-/usr/local/cuda}/bin/cuobjdump"; return; fi
  command -v cuobjdump || true
}

CUOBJ=$(find_cuobjdump)
if [ -z "$CUOBJ" ]; then
  echo "check_sass: no cuobjdump (pip install nvidia-cuda-cuobjdump)" >&2
  exit 1
fi

# cuobjdump -sass runs nvdisasm: take the one next to it (the nvidia-cuda-nvdisasm wheel puts it there).
export PATH="$(dirname "$CUOBJ"):$PATH"
command -v nvdisasm >/dev/null || { echo "check_sass: no nvdisasm (pip install nvidia-cuda-nvdisasm)" >&2; exit 1; }

fail=0
# check NAME ELF_ARCH REGEX REQUIRED
check() {
  local name=$1 arch=$2 regex=$3 required=$4 so
  so=$(ls fp4ref_cuda/_gemm_${name}*.so 2>/dev/null | head -n 1)
  if [ -z "$so" ]; then
    if [ "$required" = 1 ]; then echo "FAIL $name: module not built"; fail=1; else echo "skip $name: not built"; fi
    return
  fi
  local elfs
  elfs=$("$CUOBJ" --list-elf "$so" | grep -o 'sm_[0-9]*[af]\?' | sort -u | tr '\n' ' ')
  if [ "$name" != sm90 ] && [ "$elfs" != "$arch " ]; then
    echo "FAIL $name: cubins for [$elfs], expected only $arch"; fail=1; return
  fi
  local sass n
  sass=$("$CUOBJ" -sass -arch "$arch" "$so") || { echo "FAIL $name: cuobjdump -sass failed"; fail=1; return; }
  n=$(grep -cE "$regex" <<< "$sass")
  if [ "$n" -gt 0 ]; then
    echo "ok   $name: $n instructions matching /$regex/ in the $arch cubin ($so)"
  else
    echo "FAIL $name: no /$regex/ in the $arch cubin of $so"; fail=1
  fi
}

# check_ptx NAME MODULE: every PTX of fp4ref_cuda/MODULE*.so assembles with ptxas for the architecture its
# .target names (a module without PTX passes: _C and the CUTLASS modules carry SASS only).
check_ptx() {
  local name=$1 so tmp ptxas f target
  so=$(ls fp4ref_cuda/$2*.so 2>/dev/null | head -n 1)
  [ -z "$so" ] && { echo "skip $name PTX: not built"; return; }
  ptxas=$(command -v ptxas || echo "${CUDA_HOME:-/usr/local/cuda}/bin/ptxas")
  [ -x "$ptxas" ] || { echo "skip $name PTX: no ptxas"; return; }
  tmp=$(mktemp -d)
  (cd "$tmp" && "$CUOBJ" -xptx all "$OLDPWD/$so" >/dev/null 2>&1) || { echo "FAIL $name: cuobjdump -xptx failed"; fail=1; rm -rf "$tmp"; return; }
  for f in "$tmp"/*.ptx; do
    [ -e "$f" ] || { echo "ok   $name: no PTX in $so"; break; }
    target=$(grep -m1 -o '^\.target sm_[0-9]*[af]\?' "$f" | awk '{print $2}')
    if "$ptxas" -arch="$target" -o "$tmp/out.cubin" "$f" 2>"$tmp/err"; then
      echo "ok   $name: its $target PTX assembles for $target ($(basename "$f"))"
    else
      echo "FAIL $name: its $target PTX does not assemble for $target: $(head -n 2 "$tmp/err" | tr '\n' ' ')"; fail=1
    fi
  done
  rm -rf "$tmp"
}

req=${FP4REF_REQUIRE_CUTLASS:-0}
check sm90 sm_90a 'HMMA\.16816\.F32\.BF16' 0
check sm90 sm_90a 'LDGSTS\.E\.BYPASS\.128' 0  # the pipelined small-M kernel's cp.async.cg (16 bytes)
check_ptx sm90 _gemm_sm90
check_ptx _C _C
check sm100a sm_100a 'UTC(Q)?OMMA|UTCQMMA' "$req"
check sm120a sm_120a 'OMMA\.SF' "$req"
exit $fail
