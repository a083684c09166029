"""Conformance vectors (SPEC §15): write, verify, catch planted flips; spot checks against the spec's tables."""
import math
import time

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from fp4ref.cli import main
from fp4ref.nvfp4 import RECIPES
from fp4ref.vectors import META_KEYS, verify_file


@pytest.fixture(scope="module")
def vec_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("vectors")
    assert main(["vectors", str(out)]) == 0
    return out


def _load(path):
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118


def _rewrite(path, meta, tensors):
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=meta)


def test_files_readme_and_metadata(vec_dir):
    names = {p.stem for p in vec_dir.glob("*.safetensors")}
    for fmt in ("e2m1", "e2m3", "e3m2", "e4m3", "e5m2", "e8m0"):
        assert {f"encode_{fmt}_sat", f"encode_{fmt}_nosat", f"decode_{fmt}"} <= names
    for mode in ("floor", "ceil", "even", "rceil", "stretch"):
        assert f"mx_e2m1_{mode}" in names
    assert "mx_e5m2_rceil" in names and "mx_e4m3_stretch" not in names
    assert "te" in RECIPES
    for r in RECIPES:
        assert f"nvfp4_{r}" in names
    assert {"pack_fp4", "swizzle_scales"} <= names
    readme = (vec_dir / "README.md").read_text()
    for word in ("<case>.<field>", "saturate", "recipe", "mode", "global_scale"):
        assert word in readme
    for p in vec_dir.glob("*.safetensors"):
        meta, _ = _load(p)
        assert set(META_KEYS) <= set(meta), p.name


def test_unimplemented_recipes_are_left_out(vec_dir):
    names = {p.stem for p in vec_dir.glob("*.safetensors")}
    for r in RECIPES:
        assert (f"nvfp4_{r}" in names) == (r in RECIPES)


def test_round_trip_through_verify(vec_dir, capsys):
    assert main(["verify", str(vec_dir)]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out and ": 0 mismatches" in out


def _index_of(x, v):
    hit = torch.nonzero((x == v) & (torch.signbit(x) == (math.copysign(1, v) < 0))).reshape(-1)
    return int(hit[0])


def test_e2m1_ties_in_vectors(vec_dir):
    # SPEC §2: 0.25->0, 0.75->1, 1.25->1, 1.75->2, 2.5->2, 3.5->4, 5->4 (codes 0, 2, 2, 4, 4, 6, 6); -0.25 -> -0.
    _, t = _load(vec_dir / "encode_e2m1_sat.safetensors")
    x, codes = t["edge.x"], t["edge.codes"]
    for v, c in ((0.25, 0), (0.75, 2), (1.25, 2), (1.75, 4), (2.5, 4), (3.5, 6), (5.0, 6), (-0.25, 8), (-0.0, 8),
                 (7.0, 7), (-math.inf, 0xF)):
        assert int(codes[_index_of(x, v)]) == c, v
    # one float32 above a tie rounds up, one below rounds down
    above = torch.nextafter(torch.tensor(0.25), torch.tensor(1.0))
    below = torch.nextafter(torch.tensor(2.5), torch.tensor(0.0))
    assert int(codes[_index_of(x, float(above))]) == 1 and int(codes[_index_of(x, float(below))]) == 4
    assert int(codes[torch.isnan(x)][0]) == 7


def test_mx_scale_edges_in_vectors(vec_dir):
    _, t = _load(vec_dir / "mx_e2m1_floor.safetensors")
    x, scales = t["edge.x"], t["edge.scales"][:, 0]
    amax = x.abs().amax(1)

    def byte(a):
        return int(scales[torch.nonzero(amax == a)[0, 0]])

    assert byte(6.0) == 127  # 6 = 1.5 * 2^2: X = 2 - 2
    assert byte(float(torch.nextafter(torch.tensor(8.0), torch.tensor(0.0)))) == 127
    assert byte(8.0) == 128
    assert byte(torch.finfo(torch.float32).max) == 127 + 127 - 2
    assert byte(2.0**-126) == 0  # X = -128 clamps to -127
    assert int(scales[(amax == 0).nonzero()[0, 0]]) == 0
    assert int(scales[torch.isnan(x).any(1)][0]) == 0xFF and int(scales[torch.isinf(x).any(1)][0]) == 0xFF


def test_planted_bit_flip_in_codes(vec_dir, tmp_path, capsys):
    src = vec_dir / "encode_e2m1_sat.safetensors"
    meta, t = _load(src)
    i = _index_of(t["edge.x"], 0.75)  # expected code 0x2 (1.0); flipping bit 0 gives 0x3 (1.5)
    t["edge.codes"][i] ^= 1
    bad = tmp_path / "bad.safetensors"
    _rewrite(bad, meta, t)
    assert main(["verify", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "edge.codes: 1 of" in out and f"[{i}]" in out
    assert "0x3 (1.5)" in out and "0x2 (1.0)" in out and "0.75" in out and "1 mismatches" in out


def test_planted_bit_flip_in_packed_mx_data(vec_dir, tmp_path):
    meta, t = _load(vec_dir / "mx_e2m1_floor.safetensors")
    t["random.data"][7, 3] ^= 0x40  # high nibble of byte 3: element 7 of row 7
    _rewrite(tmp_path / "bad.safetensors", meta, t)
    res = verify_file(tmp_path / "bad.safetensors")
    assert res.mismatches == 1 and "random.data: 1 of" in res.reports[0] and "[7, 7]" in res.reports[0]


def test_planted_flip_in_nvfp4_scale_and_global_scale(vec_dir, tmp_path):
    meta, t = _load(vec_dir / "nvfp4_te.safetensors")
    t["random.scales"][2, 5] ^= 0x08
    t["unit_scale.global_scale"] = torch.tensor(1.5)
    _rewrite(tmp_path / "bad.safetensors", meta, t)
    res = verify_file(tmp_path / "bad.safetensors")
    text = "\n".join(res.reports)
    assert res.mismatches == 2 and "random.scales: 1 of" in text and "[2, 5]" in text
    assert "unit_scale.global_scale" in text and "1.5" in text


def test_nvfp4_scale_edges_in_vectors(vec_dir):
    # global_amax 2688 makes the te chain's block scale e4m3(amax / 6): some round to 0, some saturate to 448.
    _, t = _load(vec_dir / "nvfp4_te.safetensors")
    s = t["unit_scale.scales"][:, 0]
    assert float(t["unit_scale.global_scale"]) == 1.0
    assert (s == 0).any() and (s == 0x7E).any() and (s == 0x7F).any()  # 0, 448 and NaN blocks
    assert float(t["global_amax_zero.global_scale"]) == 1.0  # A == 0 gives S_enc = 1
    assert int(t["global_amax_zero.data"].max()) == 0


def test_someone_elses_file(tmp_path):
    # Another implementation's outputs: only the codes, for e4m3 without saturation (0x7F for overflow).
    x = torch.tensor([0.0, -0.0, 1.0, 448.0, 464.0, 465.0, -math.inf, 2.0**-10])  # 464: tie to even 448
    codes = torch.tensor([0x00, 0x80, 0x38, 0x7E, 0x7E, 0x7F, 0x7F, 0x00], dtype=torch.uint8)
    meta = {"op": "encode", "format": "e4m3", "saturate": "false"}
    save_file({"mine.x": x, "mine.codes": codes}, str(tmp_path / "ok.safetensors"), metadata=meta)
    assert verify_file(tmp_path / "ok.safetensors").mismatches == 0
    save_file({"mine.x": x, "mine.code": codes}, str(tmp_path / "typo.safetensors"), metadata=meta)
    res = verify_file(tmp_path / "typo.safetensors")
    assert res.mismatches == 1 and "unknown fields ['code']" in res.reports[0]
    save_file({"mine.x": x, "mine.codes": codes}, str(tmp_path / "noop.safetensors"), metadata={"format": "e4m3"})
    assert "metadata op" in verify_file(tmp_path / "noop.safetensors").reports[0]
    codes[3] = 0x7D
    save_file({"mine.x": x, "mine.codes": codes}, str(tmp_path / "wrong.safetensors"), metadata=meta)
    res = verify_file(tmp_path / "wrong.safetensors")
    assert "[3]" in res.reports[0] and "0x7D (416.0)" in res.reports[0] and "0x7E (448.0)" in res.reports[0]


def test_unpacked_data_accepted_but_not_as_pack_output(vec_dir, tmp_path):
    from fp4ref.layouts import unpack_fp4

    meta, t = _load(vec_dir / "nvfp4_te.safetensors")
    t = {k: v for k, v in t.items() if k.startswith("random.")}
    t["random.data"] = unpack_fp4(t["random.data"])
    _rewrite(tmp_path / "unpacked.safetensors", meta, t)
    assert verify_file(tmp_path / "unpacked.safetensors").mismatches == 0
    t["random.data"][1, 9] ^= 2
    _rewrite(tmp_path / "unpacked_bad.safetensors", meta, t)
    res = verify_file(tmp_path / "unpacked_bad.safetensors")
    assert res.mismatches == 1 and "[1, 9]" in res.reports[0]
    # pack_fp4's output must be packed: returning the input unchanged is a failure
    meta, t = _load(vec_dir / "pack_fp4.safetensors")
    t["random.packed"] = t["random.codes"].clone()
    _rewrite(tmp_path / "nopack.safetensors", meta, t)
    assert "shape" in verify_file(tmp_path / "nopack.safetensors").reports[0]


def test_verify_missing_path_fails(tmp_path, capsys):
    assert main(["verify", str(tmp_path / "nothing")]) == 2  # a usage error, not a failed verification
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such file or folder" in err and "Traceback" not in err


def _one_line_usage_error(capsys, argv, *words):
    assert main(argv) == 2, argv
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, (argv, err)
    return err


def test_vectors_refuses_a_folder_it_did_not_write(tmp_path, capsys):
    """`fp4ref vectors DIR` once overwrote a user's README.md without a word."""
    user = tmp_path / "mine"
    user.mkdir()
    (user / "README.md").write_text("my notes\n")
    _one_line_usage_error(capsys, ["vectors", str(user)], "not empty", "--force")
    assert (user / "README.md").read_text() == "my notes\n" and sorted(p.name for p in user.iterdir()) == ["README.md"]
    _one_line_usage_error(capsys, ["demo", "--no-model", "--out", str(user)], "not empty")
    assert (user / "README.md").read_text() == "my notes\n"
    assert main(["vectors", str(user), "--force"]) == 0  # asked for: written, marker left
    assert (user / ".fp4ref-vectors").is_file() and (user / "README.md").read_text().startswith("# fp4ref")


def test_vectors_rewrites_its_own_folder(tmp_path, capsys):
    out = tmp_path / "v"
    assert main(["vectors", str(out)]) == 0 and (out / ".fp4ref-vectors").is_file()
    (out / "extra.txt").write_text("x")  # its own folder (marker) may hold other files too
    assert main(["vectors", str(out)]) == 0
    (out / ".fp4ref-vectors").unlink()  # a folder from before the marker: only its vectors and README.md
    (out / "extra.txt").unlink()
    assert main(["vectors", str(out)]) == 0


def test_cli_usage_errors_are_one_line_exit_2(tmp_path, capsys):
    f = tmp_path / "file.txt"
    f.write_text("x")
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line_usage_error(capsys, ["vectors", str(f)], "not a folder")
    _one_line_usage_error(capsys, ["vectors", str(f / "sub")], "cannot write")
    _one_line_usage_error(capsys, ["vectors"], "out")
    _one_line_usage_error(capsys, ["vectors", str(tmp_path / "n"), "--bogus"], "--bogus")
    _one_line_usage_error(capsys, ["verify", str(empty)], "without .safetensors")
    _one_line_usage_error(capsys, ["verify", "--max-report", "-1", str(empty)], "--max-report", ">= 0")
    _one_line_usage_error(capsys, ["verify", "--max-report", "many", str(empty)], "--max-report")
    _one_line_usage_error(capsys, ["demo", "--bogus"], "--bogus")
    _one_line_usage_error(capsys, [], "command")
    _one_line_usage_error(capsys, ["bogus"], "unknown command 'bogus'")
    _one_line_usage_error(capsys, ["--bogus"], "unknown option '--bogus'")


def test_version(capsys):
    from fp4ref import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"fp4ref {__version__}\n"


def test_demo_vectors_step_under_30_s(vec_dir, tmp_path, capsys):
    t0 = time.process_time()  # CPU time: wall time on a shared CI machine says little
    assert main(["demo", "--no-model", "--out", str(tmp_path / "v")]) == 0
    assert time.process_time() - t0 < 30
    out = capsys.readouterr().out
    assert "mismatches:       0" in out and "files:" in out and "vectors checked:" in out
    assert (tmp_path / "v" / "README.md").exists()
    for p in vec_dir.glob("*.safetensors"):  # the same vectors, byte for byte, on a second write
        assert (tmp_path / "v" / p.name).read_bytes() == p.read_bytes(), p.name


def test_decode_vectors_match_the_table(vec_dir):
    values = load_file(str(vec_dir / "decode_e2m1.safetensors"))["all_codes.values"]
    assert values.tolist() == [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]
    assert torch.signbit(values).tolist() == [False] * 8 + [True] * 8
