"""SASS of the built FP4 GEMM modules (no GPU needed): each contains the tensor-core instruction it exists
for, the Blackwell modules contain a cubin for their one arch only, and _gemm_sm90's PTX assembles for its
own target (sm_80: no instruction that target lacks). A module that was not built is skipped (the CUTLASS
ones are built only with FP4REF_BUILD_CUTLASS=1); scripts/check_sass.sh is the same check for CI logs."""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = [  # module, cubin arch, instruction pattern
    ("sm90", "sm_90a", r"HMMA\.16816\.F32\.BF16"),
    ("sm100a", "sm_100a", r"UTC(Q)?OMMA"),
    ("sm120a", "sm_120a", r"OMMA\.SF"),
]


def _tool(name: str) -> str | None:
    try:
        import nvidia

        for root in nvidia.__path__:
            f = os.path.join(root, "cu13", "bin", name)
            if os.path.exists(f):
                return f
    except ImportError:
        pass
    home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    f = os.path.join(home, "bin", name)
    return f if os.path.exists(f) else shutil.which(name)


def _module_file(name: str) -> str | None:
    files = glob.glob(os.path.join(ROOT, "fp4ref_cuda", f"_gemm_{name}*.so"))
    return files[0] if files else None


@pytest.mark.parametrize("name,arch,pattern", CASES)
def test_module_has_tensor_core_instructions(name, arch, pattern):
    so = _module_file(name)
    if so is None:
        pytest.skip(f"fp4ref_cuda._gemm_{name} not built")
    cuobjdump, nvdisasm = _tool("cuobjdump"), _tool("nvdisasm")
    if cuobjdump is None or nvdisasm is None:
        pytest.skip("needs cuobjdump and nvdisasm (pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm)")
    env = dict(os.environ, PATH=os.path.dirname(nvdisasm) + os.pathsep + os.environ.get("PATH", ""))
    elfs = subprocess.run([cuobjdump, "--list-elf", so], capture_output=True, text=True, check=True, env=env).stdout
    archs = set(re.findall(r"sm_\d+[af]?", elfs))
    if name == "sm90":
        assert arch in archs
    else:
        assert archs == {arch}, f"{so} has cubins for {sorted(archs)}, expected only {arch}"
    sass = subprocess.run([cuobjdump, "-sass", "-arch", arch, so], capture_output=True, text=True, check=True,
                          env=env).stdout
    assert re.search(pattern, sass), f"no /{pattern}/ in the {arch} SASS of {so}"


def test_sm90_ptx_assembles_for_its_target(tmp_path):
    """_gemm_sm90 ships compute_80 PTX for the GPUs without its sm_90a cubin; the driver's JIT rejects PTX that
    uses an instruction its .target lacks (cvt.rn.f16x2.e4m3x2 needs sm_89), so ptxas must accept it."""
    so = _module_file("sm90")
    if so is None:
        pytest.skip("fp4ref_cuda._gemm_sm90 not built")
    cuobjdump, ptxas = _tool("cuobjdump"), _tool("ptxas")
    if cuobjdump is None or ptxas is None:
        pytest.skip("needs cuobjdump and ptxas")
    subprocess.run([cuobjdump, "-xptx", "all", so], cwd=tmp_path, capture_output=True, check=True)
    ptx = sorted(tmp_path.glob("*.ptx"))
    assert ptx, f"no PTX in {so}"
    for f in ptx:
        target = re.search(r"^\.target (sm_\d+[af]?)", f.read_text(), re.M).group(1)
        r = subprocess.run([ptxas, f"-arch={target}", "-o", str(tmp_path / "out.cubin"), str(f)],
                           capture_output=True, text=True)
        assert r.returncode == 0, f"{f.name} ({target}): {r.stderr[:500]}"
