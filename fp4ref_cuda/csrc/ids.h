// The ids fp4ref_cuda's layers pass to each other, and the 128x4 scale layout's size and offset rules: the
// one C++ copy. Python's copy is fp4ref_cuda/ids.py (ids) and fp4ref/layouts.py (layout); tests compare the
// two through the CPU build (tests/test_arith_cpu.py::test_ids_and_layout_match_python). No other header
// defines an id or repeats a layout formula.
#pragma once
#include <stdint.h>

namespace fp4ref {

// Element formats (fp4ref/formats.py).
enum FmtId : int { E2M1 = 0, E2M3 = 1, E3M2 = 2, E4M3 = 3, E5M2 = 4, E8M0 = 5 };
constexpr int FMT_LAST = E8M0;
constexpr int MX_ELEM_LAST = E5M2;  // MX element formats: every format but the E8M0 scale itself
// MX scale modes (fp4ref/mx.py SCALE_MODES).
enum ScaleMode : int { FLOOR = 0, CEIL = 1, EVEN = 2, RCEIL = 3, STRETCH = 4 };
constexpr int MODE_LAST = STRETCH;
// Tensor dtypes of inputs and outputs.
enum DType : int { DT_F32 = 0, DT_BF16 = 1, DT_F16 = 2 };
// Quantizer families: packed MXFP4, MX of any element (one byte per element), NVFP4 (TE recipe).
enum QuantKind : int { MX_E2M1 = 0, MX_ANY = 1, NV_TE = 2 };

// Bytes of the 128x4 blocked layout of a (rows, cols) scale matrix: padded to (128⌈rows/128⌉, 4⌈cols/4⌉).
constexpr int64_t blocked_size(int64_t rows, int64_t cols) { return (rows + 127) / 128 * 128 * ((cols + 3) / 4 * 4); }

// Offset of scale (r, c) in that layout: 512-byte tiles of 128x4, row-block-major; inside a tile
// (r % 32) * 16 + ((r % 128) / 32) * 4 + (c % 4) (SPEC §3).
constexpr int64_t blocked_offset(int64_t r, int64_t c, int64_t cols) {
  return ((r / 128) * ((cols + 3) / 4) + c / 4) * 512 + (r % 32) * 16 + ((r % 128) / 32) * 4 + (c % 4);
}

}  // namespace fp4ref
