"""How many SASS instructions one GPU thread issues per tile of each hot kernel (no GPU needed).

Compiles benchmarks/sass_probe.cu (one tile per thread, options fixed so that dead branches fold away) for
sm_90a with the extension's nvcc flags, disassembles it with cuobjdump and counts, per probe, all
instructions and the integer/logic ones (LOP3, IADD3, SHF, PRMT, IMAD, LEA, ...: half the float throughput,
64 against 128 per clock per SM at compute capability 9.0): the quantizers, dequantizers and the small-M GEMM's dequantization are
close to issue-bound, so these counts are a proxy for their speed that a machine without a GPU can measure.
Counts are static: a probe with a rarely taken path (the NaN fallback of the table dequantizer, a division's
slow path) includes that code once. Then the same for the main loop (one 128-wide chunk per lane) of every
small-M GEMM kernel, both data paths, as compiled in gemm_sm90.cu (static: both branches of a branch).

    python benchmarks/sass_instructions.py [--csrc fp4ref_cuda/csrc]
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INT_OPS = ("LOP3", "IADD3", "SHF", "PRMT", "IMAD", "LEA", "VIADD", "ISETP", "SEL", "VIMNMX", "IMNMX", "I2F",
           "F2I", "POPC", "FLO", "BMSK", "SGXT")
PER_TILE = {"probe_mx_quant": 32, "probe_nv_quant": 32, "probe_had32_mx_quant": 32,
            "probe_had128_mx_quant_lanes": 32, "probe_had128_mx_quant_one": 128, "probe_mx_dequant_table": 32,
            "probe_nv_dequant_table": 16, "probe_mx_dequant_tile": 32,
            # one lane's share of one 128-wide chunk of the small-M GEMM: 64 rows x 128 k / 32 lanes
            "probe_chunk_m8_one_mul": 256, "probe_chunk_m8_two_mul": 256, "probe_chunk_m16_one_mul": 256}


def cuobjdump() -> str:
    try:
        import nvidia

        for root in nvidia.__path__:
            for sub in ("cu13", "cu12", "cuda_cuobjdump"):
                f = Path(root) / sub / "bin" / "cuobjdump"
                if f.exists():
                    return str(f)
    except ImportError:
        pass
    return "cuobjdump"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csrc", default=str(ROOT / "fp4ref_cuda" / "csrc"))
    args = ap.parse_args()
    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda-13.0")
    nvcc = Path(cuda_home) / "bin" / "nvcc"
    tool = cuobjdump()
    env = dict(os.environ, PATH=f"{Path(tool).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    regs: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "probe.cubin"
        subprocess.run([str(nvcc), "-O3", "-std=c++20", "--extended-lambda", "--expt-relaxed-constexpr",
                        "--fmad=false", "--prec-div=true", "--prec-sqrt=true", "--ftz=false", "-arch=sm_90a",
                        "-cubin", f"-I{args.csrc}", "-o", str(cubin), str(ROOT / "benchmarks" / "sass_probe.cu")],
                       check=True)
        sass = subprocess.run([tool, "-sass", str(cubin)], check=True, capture_output=True, text=True,
                              env=env).stdout
        usage = subprocess.run([tool, "--dump-resource-usage", str(cubin)], check=True, capture_output=True,
                               text=True, env=env).stdout
    for m in re.finditer(r"Function (\S+):\s*REG:(\d+)", usage):
        name = next((p for p in PER_TILE if p in m.group(1)), None)
        if name:
            regs[name] = int(m.group(2))
    funcs: dict[str, list[str]] = {}
    cur = None
    for line in sass.splitlines():
        m = re.search(r"Function : (\S+)", line)
        if m:
            cur = next((p for p in PER_TILE if p in m.group(1)), None)
            funcs.setdefault(cur, []) if cur else None
            continue
        m = re.match(r"\s*/\*[0-9a-f]+\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", line)
        if cur and m and m.group(2).split(".")[0] not in ("NOP", "EXIT", "BRA"):
            funcs[cur].append(m.group(2).split(".")[0])
    version = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True).stdout.strip().splitlines()
    print(f"# SASS of benchmarks/sass_probe.cu and fp4ref_cuda/csrc/gemm_sm90.cu for sm_90a ({version[-1]}); "
          "static counts, no GPU involved")
    print(f"{'probe':<28} {'elements':>8} {'instr':>6} {'int':>5} {'instr/elem':>10} {'int/elem':>9} {'regs':>5}")
    for name, n in PER_TILE.items():
        ops = funcs.get(name, [])
        ints = sum(op in INT_OPS for op in ops)
        print(f"{name:<28} {n:>8} {len(ops):>6} {ints:>5} {len(ops) / n:>10.1f} {ints / n:>9.1f} "
              f"{regs.get(name, 0):>5}")
    print()
    print(f"{'small-M GEMM main loop (per chunk, lane)':<58} {'instr':>6} {'int':>5} {'HMMA':>5}")
    for name, body in gemm_loops(sass):
        ints = sum(op in INT_OPS for op in body)
        print(f"{name:<58} {len(body):>6} {ints:>5} {body.count('HMMA'):>5}")
    return 0


def gemm_loops(sass: str) -> list[tuple[str, list[str]]]:
    """(kernel, opcodes of its main loop) for the bf16-output small-M kernels: the longest backward-branch
    body holding HMMA."""
    out = []
    for chunk in re.split(r"\n\s*Function : ", sass)[1:]:
        head = chunk.split("\n", 1)[0]
        m = re.search(r"(linear_\w+?_kernel)ILi(\d)ELb(\d)E13__nv_bfloat16(?:Li(\d+)E)?", head)
        if not m:
            continue
        lines = re.findall(r"^\s*/\*([0-9a-f]+)\*/\s+([^;]*);", chunk, re.M)
        addr = [int(a, 16) for a, _ in lines]
        best: list[str] = []
        for i, (_, ins) in enumerate(lines):
            t = re.search(r"BRA (0x[0-9a-f]+)", ins)
            if t and int(t.group(1), 16) < addr[i]:
                body = [x for _, x in lines[addr.index(int(t.group(1), 16)):i + 1]]
                if any("HMMA" in b for b in body) and len(body) > len(best):
                    best = body
        ops = [re.sub(r"^@!?U?P\w+\s+", "", b).split()[0].split(".")[0] for b in best]
        ops = [o for o in ops if o not in ("NOP", "BRA")]
        fmt = "NVFP4/E4M3" if m.group(3) == "1" else "MXFP4/E8M0"
        kind = "registers" if "small" in m.group(1) else f"pipelined, block {m.group(4)}"
        out.append((f"{kind}, M <= {8 * int(m.group(2))}, {fmt} scales", ops))
    return sorted(out)


if __name__ == "__main__":
    sys.exit(main())
