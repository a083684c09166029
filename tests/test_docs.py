"""The documentation cannot rot: links resolve, examples run, shown output is the real output.

- Every relative link in every Markdown file of the repository (tracked, or new and not ignored) must
  resolve to a file inside the repository, and a link with an anchor must name a heading or an explicit
  ``<a id="...">`` of the target page. No page may point at the brief the project was built from.
- Every ```python block of README.md and docs/*.md runs as written: each file's blocks in order, in one
  namespace, with a fresh temporary directory as the working directory. A block preceded by the line
  ``<!-- no-run: reason -->`` is only compiled (for examples that need a GPU or a big model).
- A python block followed by a ```text block (optionally after a line ``Output:``) must print exactly
  that text. ``python tests/test_docs.py --update [FILE ...]`` rewrites those output blocks from a run.
- The ```cpp block of docs/checking-kernels.md is compiled with g++ and run on fp4ref's conformance vectors
  (skipped without g++); its output block is checked the same way.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS_WITH_EXAMPLES = ["README.md"] + sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))
NO_RUN = re.compile(r"^\s*<!--\s*no-run:\s*\S.*-->\s*$")
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")


# --- Markdown parsing ---------------------------------------------------------------------------------------
@dataclass
class Block:
    lang: str
    code: str
    start: int  # line index of the opening fence
    end: int  # line index of the closing fence
    no_run: bool
    output: "Block | None" = None


def parse_blocks(text: str) -> list[Block]:
    """Fenced blocks in order; a python/cpp block's ``output`` is the ```text block right after it."""
    lines = text.split("\n")
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, lang = m.group(2), m.group(3).lower()
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            j += 1
        prev = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
        blocks.append(Block(lang, "\n".join(lines[i + 1:j]), i, j, bool(NO_RUN.match(prev))))
        i = j + 1
    for a, b in zip(blocks, blocks[1:]):
        between = [ln.strip() for ln in lines[a.end + 1:b.start] if ln.strip()]
        if a.lang in ("python", "cpp") and b.lang == "text" and between in ([], ["Output:"]):
            a.output = b
    return blocks


def without_code(text: str, inline: bool = True) -> str:
    """The text with fenced blocks blanked out and (``inline``) code spans removed: links there are not links."""
    lines = text.split("\n")
    for b in parse_blocks(text):
        for k in range(b.start, min(b.end + 1, len(lines))):
            lines[k] = ""
    text = "\n".join(lines)
    return re.sub(r"(`+)(?:(?!\1).)+?\1", "", text) if inline else text


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    h = re.sub(r"<[^>]+>", "", heading).strip().lower()
    h = re.sub(r"[^\w\- ]", "", h)
    return h.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = path.read_text(encoding="utf-8")
    found = set(re.findall(r"<a\s+(?:id|name)=\"([^\"]+)\"", text))
    counts: dict[str, int] = {}
    for line in without_code(text, inline=False).split("\n"):
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            s = slug(m.group(1))
            n = counts.get(s, 0)
            counts[s] = n + 1
            found.add(s if n == 0 else f"{s}-{n}")
    return found


LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REF_DEF = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s.*)?$", re.M)
HTML_LINK = re.compile(r"<(?:a|img)\s[^>]*(?:href|src)=\"([^\"]+)\"")


def links(text: str) -> list[str]:
    t = without_code(text)
    return LINK.findall(t) + REF_DEF.findall(t) + HTML_LINK.findall(t)


def markdown_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", "*.md"],
                             cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
        files = [ROOT / f for f in out]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: every .md outside build outputs
        files = [p for p in ROOT.rglob("*.md") if not any(part.startswith(".") or part in ("build", "node_modules")
                                                          for part in p.relative_to(ROOT).parts)]
    return sorted(p for p in files if p.is_file())


# --- links ----------------------------------------------------------------------------------------------------
def test_markdown_links_resolve_inside_the_repository():
    problems = []
    files = markdown_files()
    assert ROOT / "docs" / "spec.md" in files
    for md in files:
        rel = md.relative_to(ROOT)
        for target in links(md.read_text(encoding="utf-8")):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto: ...
                if target.lower().startswith("file:"):
                    problems.append(f"{rel}: {target}: file: URLs point outside the repository")
                continue
            path, _, anchor = target.partition("#")
            if path.startswith("/"):
                problems.append(f"{rel}: {target}: absolute paths do not resolve in a clone")
                continue
            dest = (md.parent / path).resolve() if path else md
            try:
                dest.relative_to(ROOT)
            except ValueError:
                problems.append(f"{rel}: {target}: points outside the repository")
                continue
            if not dest.exists():
                problems.append(f"{rel}: {target}: {dest.relative_to(ROOT)} does not exist")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                problems.append(f"{rel}: {target}: no heading or id '{anchor}' in {dest.relative_to(ROOT)}")
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_no_page_cites_the_brief_instead_of_docs_spec():
    bad = []
    for md in markdown_files():
        for n, line in enumerate(without_code(md.read_text(encoding="utf-8")).split("\n"), 1):
            if "SPEC.md" in line or re.search(r"SPEC\s*§", line):
                bad.append(f"{md.relative_to(ROOT)}:{n}: {line.strip()[:100]}")
    assert not bad, "cite docs/spec.md (e.g. [spec §4](spec.md#s4)), not SPEC.md / 'SPEC §N':\n" + "\n".join(bad)


# results.md is a generated results page owned by the model pipeline; it links the pages that explain it.
SPEC_LINK_EXEMPT = {"docs/results.md"}


def test_every_page_links_the_spec():
    missing = []
    for md in [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md")):
        rel = str(md.relative_to(ROOT))
        if md.name == "spec.md" or rel in SPEC_LINK_EXEMPT:
            continue
        if not any(t.partition("#")[0].endswith("spec.md") for t in links(md.read_text(encoding="utf-8"))):
            missing.append(rel)
    assert not missing, f"pages without a link to docs/spec.md: {missing}"


def test_spec_has_a_stable_anchor_per_section():
    ids = anchors(ROOT / "docs" / "spec.md")
    assert {f"s{n}" for n in range(1, 17)} <= ids


# --- examples -------------------------------------------------------------------------------------------------
def _norm(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip("\n").split("\n")).rstrip()


def run_blocks(rel: str, workdir: Path) -> list[tuple[Block, str]]:
    """Run (or compile) every python block of ``rel``; returns (block, captured stdout) per run block."""
    text = (ROOT / rel).read_text(encoding="utf-8")
    ns: dict = {"__name__": "__doc_example__"}
    results = []
    old = os.getcwd()
    os.chdir(workdir)
    try:
        for k, b in enumerate(parse_blocks(text)):
            if b.lang != "python":
                continue
            name = f"{rel}, python block {k + 1} (line {b.start + 2})"
            code = compile(b.code, name, "exec")
            if b.no_run:
                continue
            buf = io.StringIO()
            try:
                with contextlib.redirect_stdout(buf):
                    exec(code, ns)
            except Exception as e:
                raise AssertionError(f"{name} raised {type(e).__name__}: {e}\n--- printed so far:\n{buf.getvalue()}"
                                     "\n(if it cannot run in CI, precede it with <!-- no-run: reason -->)") from e
            results.append((b, buf.getvalue()))
    finally:
        os.chdir(old)
    return results


def _files_with_python() -> list[str]:
    return [f for f in DOCS_WITH_EXAMPLES
            if (ROOT / f).exists() and any(b.lang == "python" for b in parse_blocks((ROOT / f).read_text("utf-8")))]


@pytest.mark.parametrize("rel", _files_with_python())
def test_python_examples_run_and_print_what_the_page_shows(rel, tmp_path):
    import torch

    threads = torch.get_num_threads()
    try:
        results = run_blocks(rel, tmp_path)
    finally:
        torch.set_num_threads(threads)
    for b, out in results:
        if b.output is not None:
            assert _norm(out) == _norm(b.output.code), (
                f"{rel} line {b.start + 2}: the printed output differs from the text block at line "
                f"{b.output.start + 2}; regenerate with `python tests/test_docs.py --update {rel}` and review.\n"
                f"--- printed:\n{out}\n--- the page shows:\n{b.output.code}")


def test_blocks_marked_no_run_are_rare_and_explained():
    for rel in DOCS_WITH_EXAMPLES:
        for b in parse_blocks((ROOT / rel).read_text("utf-8")):
            if b.no_run:
                assert b.lang == "python", f"{rel} line {b.start + 1}: no-run marks python blocks only"


# --- the C++ example against the conformance vectors ----------------------------------------------------------
def _cpp_block() -> Block:
    blocks = [b for b in parse_blocks((ROOT / "docs" / "checking-kernels.md").read_text("utf-8")) if b.lang == "cpp"]
    assert len(blocks) == 1, "docs/checking-kernels.md should hold exactly one ```cpp block"
    return blocks[0]


def run_cpp_example(workdir: Path) -> str:
    from fp4ref.vectors import write_vectors

    b = _cpp_block()
    src = workdir / "check_e2m1.cpp"
    src.write_text(b.code + "\n")
    exe = workdir / "check_e2m1"
    subprocess.run([shutil.which("g++") or "g++", "-std=c++17", "-O1", "-o", str(exe), str(src)], check=True,
                   capture_output=True, text=True)
    write_vectors(workdir / "vectors")
    r = subprocess.run([str(exe), "vectors/encode_e2m1_sat.safetensors"], cwd=workdir, capture_output=True,
                       text=True)
    assert r.returncode == 0, f"the C++ example failed (rc {r.returncode}):\n{r.stdout}\n{r.stderr}"
    return r.stdout


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
def test_cpp_example_checks_the_conformance_vectors(tmp_path):
    b = _cpp_block()
    out = run_cpp_example(tmp_path)
    assert b.output is not None and _norm(out) == _norm(b.output.code), f"printed:\n{out}"


# --- regenerating the output blocks -------------------------------------------------------------------------
def _update(rel: str) -> None:
    import tempfile

    path = ROOT / rel
    text = path.read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory() as d:
        results = run_blocks(rel, Path(d))
        if rel == "docs/checking-kernels.md" and shutil.which("g++"):
            results.append((_cpp_block(), run_cpp_example(Path(d))))
    lines = text.split("\n")
    for b, out in sorted(results, key=lambda r: -r[0].start):  # bottom up, so line numbers stay valid
        if b.output is not None:
            lines[b.output.start + 1:b.output.end] = _norm(out).split("\n")
    path.write_text("\n".join(lines), encoding="utf-8")
    print(f"updated {rel}")


if __name__ == "__main__":
    args = sys.argv[1:]
    if not args or args[0] != "--update":
        sys.exit("usage: python tests/test_docs.py --update [FILE ...]   (or run it with pytest)")
    for rel in args[1:] or _files_with_python():
        _update(rel)
