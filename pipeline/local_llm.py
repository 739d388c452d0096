"""An embedded local LLM: llama.cpp's OpenAI-compatible server as a child process.

Two parts (the model files themselves come from `pipeline.gguf`):
- the server: `python -m llama_cpp.server` on 127.0.0.1 and a free port, awaited until `/v1/models`
  answers, stopped on exit, Ctrl-C, SIGTERM and errors (and killed by the kernel if we die first).
- the CLI hook: `--llm local|remote|auto` and `--local-model`, resolved by `llm_endpoint()` into the
  `Settings` that the ordinary `openai` client path uses.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, TypeVar

import click

from pipeline.config import Settings
from pipeline.gguf import DEFAULT_MODEL, MODELS, LocalLLMError, output_tail, resolve_model
from pipeline.redact import SECRET_NAME

LOCAL_EXTRA_HINT = "pip install '.[local]'  (or run `make demo`, which installs it)"
SERVER_MODULES = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings")
LOCAL_API_KEY = "local"  # the server checks no key, but the openai client insists on one
# One request at a time on a CPU: a long prompt, or one queued behind another, takes minutes, not seconds.
LOCAL_REQUEST_TIMEOUT_S = 900.0


# --------------------------------------------------------------------------- the server process


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
# in our (threaded) process. PR_SET_PDEATHSIG survives exec.
_DIE_WITH_PARENT = ("import os, sys; from pipeline.children import die_with_parent; "
                    "die_with_parent(int(sys.argv[1])); os.execv(sys.argv[2], sys.argv[2:])")


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


CHILD_ENV = {"PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TEMP", "TMP", "PYTHONPATH",
             "PYTHONHOME", "VIRTUAL_ENV", "LD_LIBRARY_PATH", "CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES"}
CHILD_ENV_PREFIXES = ("LC_", "OMP_", "GGML_", "LLAMA_", "OPENBLAS_", "MKL_")


def child_environment(env: Mapping[str, str]) -> dict[str, str]:
    """The variables the llama.cpp server needs (paths, locale, thread and GPU settings) and nothing else: no
    API keys or cloud credentials reach it. HOST, PORT, MODEL, CONFIG_FILE (which the server reads and which
    would override our flags) are never passed."""
    return {name: value for name, value in env.items()
            if name in CHILD_ENV or (name.startswith(CHILD_ENV_PREFIXES) and not SECRET_NAME.search(name))}


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
        child_env = child_environment(os.environ if self.env is None else self.env)
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
        import urllib.request  # here, not at the top: `ask`/`batch`/`eval --help` import this module for its options

        try:
            with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as response:
                return response.status == 200 and "data" in json.load(response)
        except (OSError, ValueError):  # URLError is an OSError
            return False

    def log_tail(self, lines: int = 15) -> str:
        try:
            return output_tail(self.log_path.read_text(errors="replace"), lines)
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
