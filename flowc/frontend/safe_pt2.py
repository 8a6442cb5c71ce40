"""Open a torch model archive without ever running code from it.

`torch.export.load` is not safe on a file from someone else: it retries a failed weights-only
load of the saved sample inputs with `weights_only=False`, and a weights or constants config
entry with `use_pickle: true` (or a custom/opaque object constant, or a legacy `.pt` weights
file) makes it unpickle that member, which can run arbitrary code. torch's reader also does
not check the zip CRCs, so a damaged archive loads as a different model.

Two layers, both needed:
- `scan_archive` reads every member once before torch sees the file: zip-level problems
  (encryption, unknown compression, duplicate names, sizes past the limit, CRC mismatches)
  and every pickled part are refused with one line;
- `no_unpickling` wraps the torch call: `torch.load` runs weights-only whatever its caller
  asked, and the raw unpicklers torch uses for custom objects raise. So even a pickled part the
  scan did not recognise cannot execute. `--trust-pickle` lifts both.
It also keeps torch's log records and warnings off the terminal: a failure is one line.
"""

from __future__ import annotations

import json
import logging
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

from flowc.errors import ModelLoadError

#: Members larger than this are refused before inflating (a decompression bomb).
MAX_MEMBER_BYTES = 16 << 30
#: Total declared uncompressed size of an archive.
MAX_ARCHIVE_BYTES = 32 << 30
_CHUNK = 1 << 20
_PICKLED_CONSTANT_PREFIXES = ("custom_obj_", "opaque_obj_")


class PickleRefused(ModelLoadError):
    """A model archive asks to unpickle one of its parts and --trust-pickle was not given."""


def _refuse(path: Path, what: str) -> PickleRefused:
    return PickleRefused(f"{path}: {what} is pickled; unpickling runs arbitrary code, so flowc "
                         "loads it only with --trust-pickle (re-save the model with "
                         "torch.export.save from a current torch)")


def scan_archive(path: Path, trust_pickle: bool = False) -> list[str]:
    """Check every member of the zip at `path` (CRC, method, size, names) and refuse pickled
    parts unless `trust_pickle`; returns the member names. Raises ModelLoadError (exit 2)."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: not a readable zip archive ({exc})") from exc
    with zf:
        infos = zf.infolist()
        _check_infos(path, infos)
        for info in infos:
            _verify_member(path, zf, info)
        names = [i.filename for i in infos]
        if not trust_pickle:
            _check_pickled_parts(path, zf, names)
    return names


def _check_infos(path: Path, infos: list[zipfile.ZipInfo]) -> None:
    seen: set[str] = set()
    total = 0
    for info in infos:
        name = info.filename
        if name in seen:
            raise ModelLoadError(f"{path}: member {name!r} appears twice in the archive")
        seen.add(name)
        if info.flag_bits & 0x1:
            raise ModelLoadError(f"{path}: member {name!r} is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise ModelLoadError(f"{path}: member {name!r} uses compression method "
                                 f"{info.compress_type} (stored or deflate expected)")
        if info.file_size > MAX_MEMBER_BYTES:
            raise ModelLoadError(f"{path}: member {name!r} declares {info.file_size} bytes, "
                                 f"over the limit of {MAX_MEMBER_BYTES}")
        total += info.file_size
    if total > MAX_ARCHIVE_BYTES:
        raise ModelLoadError(f"{path}: members declare {total} bytes in all, over the limit "
                             f"of {MAX_ARCHIVE_BYTES}")


def _verify_member(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> None:
    """Read the member to its end: zipfile checks the CRC-32 and the declared size there."""
    try:
        with zf.open(info) as f:
            read = 0
            while chunk := f.read(_CHUNK):
                read += len(chunk)
        if read != info.file_size:
            raise zipfile.BadZipFile(f"{read} bytes, {info.file_size} declared")
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, NotImplementedError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ModelLoadError(f"{path}: member {info.filename!r} is corrupt ({first})") from exc
    except Exception as exc:  # zlib.error and friends on a damaged deflate stream
        raise ModelLoadError(f"{path}: member {info.filename!r} is corrupt "
                             f"({type(exc).__name__})") from exc


def _check_pickled_parts(path: Path, zf: zipfile.ZipFile, names: list[str]) -> None:
    """Refuse the archive parts torch would unpickle: legacy `.pt` weights/constants files,
    config entries with use_pickle, custom and opaque object constants."""
    for name in names:
        tail = name.split("/", 1)[-1]
        if tail.startswith(("data/weights/", "data/constants/")) and tail.endswith(".pt"):
            raise _refuse(path, f"the legacy weights file {name!r}")
        if not (tail.startswith(("data/weights/", "data/constants/"))
                and tail.endswith("_config.json")):
            continue
        try:
            config = json.loads(zf.read(name))
            entries = config["config"].items()
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ModelLoadError(f"{path}: {name} is not a payload config ({exc})") from exc
        for fqn, meta in entries:
            if not isinstance(meta, dict):
                raise ModelLoadError(f"{path}: {name}: entry {fqn!r} is not an object")
            if meta.get("use_pickle", False) is not False:
                raise _refuse(path, f"{fqn!r} ({name}: use_pickle)")
            if str(meta.get("path_name", "")).startswith(_PICKLED_CONSTANT_PREFIXES):
                raise _refuse(path, f"the custom object {fqn!r} ({name})")


@contextmanager
def no_unpickling(path: Path, trust_pickle: bool = False) -> Iterator[None]:
    """Inside: torch.load is weights-only whatever its caller asks, torch's raw object
    unpicklers raise PickleRefused, and torch's log records and warnings are held back."""
    import torch
    import torch.export.pt2_archive._package as package

    patches: list[tuple[object, str, object]] = []
    if not trust_pickle:
        original_load = torch.load

        def weights_only_load(f, *args, weights_only=None, **kwargs):
            if weights_only is False:
                raise PickleRefused(
                    f"{path}: a part of it is not readable weights-only (corrupt, or pickled "
                    "objects); torch would unpickle it, which runs arbitrary code, so flowc "
                    "does so only with --trust-pickle")
            return original_load(f, *args, weights_only=True, **kwargs)

        def refuse_raw(*args, **kwargs):
            raise _refuse(path, "a custom object constant")

        patches = [(torch, "load", weights_only_load), (torch._C, "_pickle_load_obj", refuse_raw),
                   (package, "pickle", SimpleNamespace(loads=refuse_raw, load=refuse_raw))]
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    for obj, name, new in patches:
        setattr(obj, name, new)
    logging.disable(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)
        for obj, name, old in saved:
            setattr(obj, name, old)
