"""Writing the vectors to disk: the output-folder policy (``check_output_folder``, the ``.fp4ref-vectors``
marker, ``OutputFolderError``) and ``write_vectors`` (safetensors files with sorted metadata, README.md)."""
from __future__ import annotations

import json
from pathlib import Path

from .._version import __version__
from .build import build_vectors
from .readme import README


MARKER = ".fp4ref-vectors"  # left in every folder write_vectors fills: it may overwrite that folder again


class OutputFolderError(ValueError):
    """``write_vectors`` refuses an output folder (not a folder, not writable, or holding someone else's files)."""


def _ours(out: Path) -> bool:
    """True if ``out`` was written by write_vectors: it holds the marker, or (written before the marker
    existed) only *.safetensors files and the README.md that write_vectors writes."""
    if (out / MARKER).is_file():
        return True
    names = [p for p in out.iterdir()]
    readme = out / "README.md"
    try:
        legacy = readme.is_file() and readme.read_text(errors="replace").startswith("# fp4ref conformance vectors")
    except OSError:
        return False
    return legacy and all(p == readme or (p.suffix == ".safetensors" and p.is_file()) for p in names)


def check_output_folder(out: str | Path, *, force: bool = False) -> Path:
    """``out`` as a Path if write_vectors may write there: absent (it is created), empty, or written by
    write_vectors before (see MARKER); any other folder only with ``force``. OutputFolderError otherwise."""
    if not isinstance(out, (str, Path)) or not str(out):
        raise TypeError(f"out must be a folder path (str or Path), got {out!r}")
    if not isinstance(force, bool):
        raise TypeError(f"force must be a bool (True or False), got {type(force).__name__} {force!r}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputFolderError(f"{out} exists and is not a folder")
    if out.is_dir() and not force:
        try:
            empty = next(out.iterdir(), None) is None
        except OSError as err:
            raise OutputFolderError(f"cannot read the folder {out}: {err.strerror or err}") from None
        if not empty and not _ours(out):
            raise OutputFolderError(f"{out} is not empty and was not written by fp4ref vectors (no {MARKER} "
                                    "file); choose an empty or new folder, or pass --force (force=True) to "
                                    "write into it anyway (files of the same names are overwritten)")
    return out


def write_vectors(out: str | Path, *, force: bool = False) -> list[Path]:
    """Write every vector file, a README.md and the marker file ``.fp4ref-vectors`` into ``out`` (created if
    needed); returns the files. A folder that is not empty and was not written here before (no marker) is
    refused with OutputFolderError (a ValueError) unless ``force=True``: its README.md could be a user's."""
    from safetensors.torch import save_file

    out = check_output_folder(out, force=force)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / MARKER).write_text(f"written by fp4ref {__version__} (fp4ref vectors); fp4ref may overwrite the "
                                  "vector files and README.md of this folder\n")
    except OSError as err:
        raise OutputFolderError(f"cannot write into {out}: {err.strerror or err}") from None
    paths = []
    for name, (meta, tensors) in build_vectors().items():
        meta = dict(meta, cases=",".join(sorted({k.rsplit(".", 1)[0] for k in tensors})))
        path = out / f"{name}.safetensors"
        save_file(tensors, str(path), metadata=meta)
        _sort_metadata(path)
        paths.append(path)
    (out / "README.md").write_text(README.format(version=__version__, n=len(paths)))
    return paths


def _sort_metadata(path: Path) -> None:
    """Rewrite the header with the metadata keys sorted (safetensors writes them in hash order), so that the
    same vectors give the same bytes; the header keeps its length, so no offset moves."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
    text = json.dumps(header, separators=(",", ":")).encode()
    if len(text) <= n:
        path.write_bytes(raw[:8] + text + b" " * (n - len(text)) + raw[8 + n:])
