"""SASS of the built FP4 GEMM modules (no GPU needed): each contains the tensor-core instruction it exists
for, and the Blackwell modules contain a cubin for their one arch only. A module that was not built is
skipped (the CUTLASS ones are built only with FP4REF_BUILD_CUTLASS=1); scripts/check_sass.sh is the same
check for CI logs."""
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
