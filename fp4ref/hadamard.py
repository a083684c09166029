"""Block Hadamard rotations (SPEC §7).

Each block of ``b`` consecutive elements along an axis is multiplied by ``H_b / sqrt(b)``, the
orthonormal, symmetric Sylvester Hadamard matrix, optionally after a ±1 sign flip (the randomized
Hadamard ``H·diag(signs)``). The butterfly order and the single final scaling are fixed so that every
backend produces the same bits.
"""
from __future__ import annotations

import torch

from .codecs import check_int

MIN_BLOCK = 2
MAX_BLOCK = 256
_INPUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def check_block_size(block_size: object, arg: str = "block_size") -> int:
    """ValueError/TypeError unless ``block_size`` is a power of two in [2, 256]; returns it."""
    if isinstance(block_size, bool) or not isinstance(block_size, int):
        raise TypeError(f"{arg} must be an int, got {type(block_size).__name__}")
    if not (MIN_BLOCK <= block_size <= MAX_BLOCK) or not _is_pow2(block_size):
        raise ValueError(f"{arg} must be a power of two from {MIN_BLOCK} to {MAX_BLOCK}, got {block_size}")
    return block_size


def check_signs(signs: object, block_size: int, axis_len: int, arg: str = "signs") -> torch.Tensor:
    """Checks a ±1 vector of length ``block_size`` or ``axis_len``; returns it (any real dtype)."""
    if not isinstance(signs, torch.Tensor):
        raise TypeError(f"{arg} must be a torch.Tensor of ±1, got {type(signs).__name__}")
    if signs.dtype == torch.bool or signs.is_complex():
        raise TypeError(f"{arg} must be a real tensor of ±1, got {signs.dtype}")
    if signs.device.type == "meta":
        raise ValueError(f"{arg} is on the meta device: its values cannot be checked (fp4ref's ops are not "
                         "supported on meta tensors)")
    if signs.dim() != 1 or signs.numel() not in (block_size, axis_len):
        raise ValueError(f"{arg} must be 1-D of length block_size ({block_size}) or the axis length "
                         f"({axis_len}), got shape {tuple(signs.shape)}")
    if not bool(((signs == 1) | (signs == -1)).all()):
        raise ValueError(f"{arg} must hold only +1 and -1")
    return signs


def check_block_hadamard(x: object, block_size: object, signs: object = None, axis: object = -1, *,
                         arg: str = "block_size") -> int:
    """Argument checks shared by every backend of ``block_hadamard``; returns ``axis`` made non-negative.
    ``arg`` is the name the caller gave ``block_size`` (e.g. ``hadamard_block``)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _INPUT_DTYPES:
        raise TypeError(f"x must be float32, bfloat16, float16 or float64, got {x.dtype}")
    b = check_block_size(block_size, arg)
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise TypeError(f"axis must be an int, got {type(axis).__name__}")
    if x.dim() == 0:
        raise ValueError("x must have at least one dimension")
    if not -x.dim() <= axis < x.dim():
        raise ValueError(f"axis {axis} is out of range for a {x.dim()}-D tensor")
    axis %= x.dim()
    n = x.shape[axis]
    if n % b:
        raise ValueError(f"the length of axis {axis} ({n}) must be a multiple of block_size ({b})")
    if signs is not None:
        check_signs(signs, b, n)
    return axis




def inv_sqrt(block_size: int, dtype: torch.dtype = torch.float32) -> float:
    """``fp32(1 / fp32(sqrt(block_size)))`` (or the float64 analogue): each step correctly rounded."""
    t = torch.tensor(float(block_size), dtype=dtype)
    return float(torch.reciprocal(torch.sqrt(t)).item())


def _butterfly(v: torch.Tensor, block_size: int) -> torch.Tensor:
    """Unnormalized fast Walsh-Hadamard transform of the last axis (length ``block_size``), stages h = 1, 2, ...

    Stage h pairs ``v[i]`` with ``v[i+h]`` for ``i & h == 0``: viewing each block as (b/2h, 2, h), those are
    the two halves of the middle axis.
    """
    lead = v.shape[:-1]
    h = 1
    while h < block_size:
        w = v.reshape(*lead, block_size // (2 * h), 2, h)
        a, b = w[..., 0, :], w[..., 1, :]
        v = torch.stack((a + b, a - b), dim=-2).reshape(*lead, block_size)
        h *= 2
    return v


def block_hadamard(x: torch.Tensor, block_size: int, *, signs: torch.Tensor | None = None,
                   axis: int = -1) -> torch.Tensor:
    """Blockwise ``y = (H_b / sqrt(b)) · diag(signs) · x`` along ``axis``, in float32 as SPEC §7 fixes it.

    float32/bfloat16/float16 inputs are converted to float32 exactly and give float32. float64 input (an
    extension for float64 pipelines such as GPTQ) runs the same butterfly in float64 and gives float64.
    """
    axis = check_block_hadamard(x, block_size, signs, axis)
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    v = x.to(dtype).movedim(axis, -1)
    n = v.shape[-1]
    if signs is not None:
        s = signs.to(device=v.device, dtype=dtype)
        v = v * (s if s.numel() == n else s.repeat(n // block_size))
    shape = v.shape
    v = _butterfly(v.reshape(*shape[:-1], n // block_size, block_size), block_size)
    v = v * inv_sqrt(block_size, dtype)
    return v.reshape(shape).movedim(-1, axis).contiguous()


def rotate_weight(weight: torch.Tensor, block_size: int, signs: torch.Tensor | None = None) -> torch.Tensor:
    """Rotates the rows of a (N, K) weight along K: ``W ← W·R`` with R the block rotation applied to inputs.

    Because R is orthogonal, ``block_hadamard(x) @ rotate_weight(W).T == x @ W.T`` in exact arithmetic.
    """
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (out_features, in_features), got shape {tuple(weight.shape)}")
    return block_hadamard(weight, block_size, signs=signs, axis=-1)


def hadamard_matrix(n: int, dtype: torch.dtype = torch.float32, *,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """The (n, n) Sylvester Hadamard matrix ``H[i, j] = (-1)^popcount(i & j)`` (unnormalized), n a power of two."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    if not _is_pow2(n) or n > 2**15:
        raise ValueError(f"n must be a power of two from 1 to 32768, got {n}")
    if not isinstance(dtype, torch.dtype) or dtype == torch.bool or dtype.is_complex:
        raise TypeError(f"dtype must be a real torch.dtype, got {dtype!r}")
    i = torch.arange(n, device=device)
    bits = i[:, None] & i[None, :]
    parity = torch.zeros_like(bits)
    for k in range(max(n.bit_length() - 1, 0)):
        parity ^= (bits >> k) & 1
    return (1 - 2 * parity).to(dtype)


def random_signs(n: int, seed: int | None = None, generator: torch.Generator | None = None, *,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """``n`` independent fair ±1 signs (float32) from ``seed`` or ``generator`` (torch's default RNG if neither)."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n must be an int, got {type(n).__name__} {n!r}")
    if n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if seed is not None:
        check_int(seed, "seed")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if seed is not None and generator is not None:
        raise ValueError("give seed or generator, not both")
    if seed is not None:
        generator = torch.Generator(device=device or "cpu").manual_seed(int(seed))
    if generator is not None:
        device = generator.device
    bits = torch.randint(0, 2, (n,), generator=generator, device=device)
    return (1 - 2 * bits).to(torch.float32)
