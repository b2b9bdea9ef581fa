"""Crafted model files that once exhausted ``nnx.load`` (time, memory, stack, a hang).

Each maker writes one file into a folder and returns its path; the sizes are those of
the reports (a 4 GB parameter in a 4 MB file, a header padded with GBs of spaces, a
3.6 TiB array, 400k modules, nesting 500 deep, ...) unless ``small`` is set, which
keeps the same attack at a size that is cheap to create. Used by
tests/test_hostile_files.py, in process and in a subprocess that measures RSS.
"""

from __future__ import annotations

import io
import json
import os
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

GOOD_HEADER = {"format": "nnx-model", "version": 1, "metadata": {}}


def _npy_header(shape: tuple[int, ...], descr: str = "<f4", pad: int = 0) -> bytes:
    text = repr({"descr": descr, "fortran_order": False, "shape": shape})
    text += " " * pad
    body = text.encode("latin1")
    body += b" " * (-(len(body) + 13) % 64) + b"\n"
    if len(body) < 65536 and pad == 0:
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(body)) + body
    return b"\x93NUMPY\x02\x00" + struct.pack("<I", len(body)) + body


def _header_entry(header: dict) -> bytes:
    raw = json.dumps(header).encode()
    return _npy_header((len(raw),), "|u1") + raw


def _linear_header(n_in: int, n_out: int) -> dict:
    return {
        **GOOD_HEADER,
        "architecture": {
            "class": "Sequential",
            "config": {},
            "children": [
                {
                    "class": "Linear",
                    "config": {"input_size": n_in, "output_size": n_out, "bias": False},
                    "children": [],
                }
            ],
        },
        "parameters": {"0.weight": {"shape": [n_in, n_out], "dtype": "float32"}},
    }


def _zeros_deflated(zf: zipfile.ZipFile, name: str, prefix: bytes, nbytes: int) -> None:
    """A deflated entry: ``prefix`` then ``nbytes`` zero bytes, streamed (no big buffer)."""
    info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    chunk = bytes(1 << 22)
    with zf.open(info, "w", force_zip64=True) as f:
        f.write(prefix)
        left = nbytes
        while left:
            n = min(left, len(chunk))
            f.write(chunk[:n])
            left -= n


def big_parameter(folder: Path, small: bool = False) -> Path:
    """A 4 GB float32 parameter (all zeros, deflated: the file is about 4 MB)."""
    n = 4096 if small else 32768
    path = folder / "big_parameter.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("__nnx__.npy", _header_entry(_linear_header(n, n)))
        _zeros_deflated(zf, "param/0.weight.npy", _npy_header((n, n)), n * n * 4)
    return path


def padded_json_header(folder: Path, small: bool = False) -> Path:
    """A valid header followed by GBs of spaces (deflated: a few MB)."""
    path = folder / "padded_header.npz"
    raw = json.dumps(_linear_header(2, 3)).encode()
    pad = (64 << 20) if small else (3 << 30)
    with zipfile.ZipFile(path, "w") as zf:
        info = zipfile.ZipInfo("__nnx__.npy", date_time=(2020, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_DEFLATED
        with zf.open(info, "w", force_zip64=True) as f:
            f.write(_npy_header((len(raw) + pad,), "|u1") + raw)
            spaces = b" " * (1 << 22)
            left = pad
            while left:
                n = min(left, len(spaces))
                f.write(spaces[:n])
                left -= n
        zf.writestr("param/0.weight.npy", _npy_header((2, 3)) + bytes(24))
    return path


def padded_npy_header(folder: Path, small: bool = False) -> Path:
    """A parameter whose ``.npy`` header (not the JSON) is padded with 100 MB of spaces."""
    path = folder / "padded_npy_header.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("__nnx__.npy", _header_entry(_linear_header(2, 3)))
        zf.writestr("param/0.weight.npy", _npy_header((2, 3), pad=100 << 20) + bytes(24))
    return path


def huge_declared_array(folder: Path, small: bool = False) -> Path:
    """A header (and ``.npy`` header) declaring a 3.6 TiB array next to 24 bytes."""
    n = 1 << 20 if not small else 1 << 20
    path = folder / "huge_declared.npz"
    header = _linear_header(n, 900_000)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("__nnx__.npy", _header_entry(header))
        zf.writestr("param/0.weight.npy", _npy_header((n, 900_000)) + bytes(24))
    return path


def many_modules(folder: Path, small: bool = False, n: int = 400_000) -> Path:
    """400k ``ReLU`` modules (the JSON header deflates to a few kB)."""
    path = folder / f"many_modules_{n}.npz"
    header = {
        **GOOD_HEADER,
        "architecture": {
            "class": "Sequential",
            "config": {},
            "children": [{"class": "ReLU"}] * n,
        },
        "parameters": {},
    }
    raw = json.dumps(header, separators=(",", ":")).encode()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("__nnx__.npy", _npy_header((len(raw),), "|u1") + raw)
    return path


def deep_nesting(folder: Path, small: bool = False, depth: int = 500) -> Path:
    """Sequentials nested ``depth`` deep (RecursionError once)."""
    path = folder / f"deep_{depth}.npz"
    open_ = '{"class": "Sequential", "config": {}, "children": ['
    inner = '{"class": "ReLU", "config": {}, "children": []}'
    arch = open_ * depth + inner + "]}" * depth  # built as text: json.dumps would recurse
    raw = (
        '{"format": "nnx-model", "version": 1, "parameters": {}, "architecture": ' + arch + "}"
    ).encode()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("__nnx__.npy", _npy_header((len(raw),), "|u1") + raw)
    return path


def deep_json(folder: Path, small: bool = False) -> Path:
    """JSON nested 100k lists deep in the metadata (the parser's own recursion)."""
    path = folder / "deep_json.npz"
    header = json.dumps(_linear_header(2, 3))
    raw = (header[:-1] + ', "junk": ' + "[" * 100_000 + "]" * 100_000 + "}").encode()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("__nnx__.npy", _npy_header((len(raw),), "|u1") + raw)
        zf.writestr("param/0.weight.npy", _npy_header((2, 3)) + bytes(24))
    return path


def infinite_size(folder: Path, small: bool = False) -> Path:
    """``"input_size": Infinity`` (OverflowError once)."""
    path = folder / "infinity.npz"
    header = _linear_header(2, 3)
    header["architecture"]["children"][0]["config"]["input_size"] = float("inf")
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("__nnx__.npy", _header_entry(header))
        zf.writestr("param/0.weight.npy", _npy_header((2, 3)) + bytes(24))
    return path


def duplicated_header(folder: Path, small: bool = False) -> Path:
    """Two ``__nnx__`` entries: a harmless one and another (silently taken once)."""
    import warnings

    path = folder / "duplicated.npz"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("__nnx__.npy", _header_entry(_linear_header(2, 3)))
            zf.writestr("param/0.weight.npy", _npy_header((2, 3)) + bytes(24))
            zf.writestr("__nnx__.npy", _header_entry(_linear_header(2, 3)))
    return path


def fifo(folder: Path, small: bool = False) -> Path:
    """A named pipe nobody writes to (opening it for reading blocks forever)."""
    path = folder / "pipe.npz"
    os.mkfifo(path)
    return path


def lying_sizes(folder: Path, small: bool = False) -> Path:
    """A deflated entry whose directory declares 4 GB but whose data expands to 4 MB."""
    path = folder / "lying.npz"
    buf = io.BytesIO()
    n = 32768
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("__nnx__.npy", _header_entry(_linear_header(n, n)))
        body = _npy_header((n, n)) + bytes(4 << 20)
        info = zipfile.ZipInfo("param/0.weight.npy", date_time=(2020, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_DEFLATED
        zf.writestr(info, body)
    data = buf.getvalue()
    comp = zlib.compress(body)  # only to prove the sizes below are a lie
    assert len(comp) < len(body)
    path.write_bytes(data)
    return path


MAKERS: dict[str, Callable[..., Path]] = {
    "big_parameter": big_parameter,
    "padded_json_header": padded_json_header,
    "padded_npy_header": padded_npy_header,
    "huge_declared_array": huge_declared_array,
    "many_modules": many_modules,
    "many_modules_100k": lambda folder, small=False: many_modules(folder, small, 100_000),
    "deep_nesting_500": deep_nesting,
    "deep_nesting_5000": lambda folder, small=False: deep_nesting(folder, small, 5000),
    "deep_json": deep_json,
    "infinite_size": infinite_size,
    "duplicated_header": duplicated_header,
    "fifo": fifo,
}

EXPECTED = {
    "big_parameter": r"would expand|more than",
    "padded_json_header": r"header entry declares|MAX_HEADER_BYTES|would expand",
    "padded_npy_header": r"malformed header|would expand",
    "huge_declared_array": r"max_bytes|do not fit",
    "many_modules": r"header entry declares",
    "many_modules_100k": r"more than 10000 modules",
    "deep_nesting_500": r"nested deeper than|nested too deeply",
    "deep_nesting_5000": r"nested deeper than|nested too deeply",
    "deep_json": r"nested too deeply",
    "infinite_size": r"not a finite number",
    "duplicated_header": r"appears twice",
    "fifo": r"not a regular file",
}


def probe(path: Path) -> tuple[str, float]:
    """Load ``path``; returns (outcome, seconds)."""
    import time

    import nnx

    t = time.perf_counter()
    try:
        nnx.load(path)
        outcome = "loaded"
    except Exception as exc:  # noqa: BLE001 - the outcome is the point
        outcome = f"{type(exc).__name__}: {exc}"
    return outcome, time.perf_counter() - t


def main(argv: list[str]) -> None:
    """``make FOLDER [--full]`` writes every file; ``probe FOLDER`` loads each one in
    this fresh process and prints, as JSON, the outcome, the seconds and the growth of
    the peak RSS (kB) over the baseline of an imported nnx."""
    import resource

    command, folder = argv[0], Path(argv[1])
    if command == "make":
        for make in MAKERS.values():
            make(folder, "--full" not in argv)
        return
    import nnx  # noqa: F401 - the baseline includes nnx and NumPy

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    results = {}
    for path in sorted(folder.iterdir()):
        outcome, seconds = probe(path)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        results[path.name] = {"outcome": outcome, "seconds": seconds, "rss_kb": peak - base}
    print(json.dumps(results))


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
