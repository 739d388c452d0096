"""No secret leaves: an endpoint that echoes the request's Authorization header, Settings' repr, scrubbing rules."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.config import Settings
from pipeline.redact import scrub

KEY = "sk-test-4f9c2d8e7a6b5c4d3e2f1a0b9c8d"
AWS = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


class EchoingProxy:
    """A real HTTP endpoint that refuses every request with 401, echoing its Authorization header (as some
    proxies do) and a credential it was told about, the way a misconfigured gateway dumps its environment."""

    def __enter__(self) -> "EchoingProxy":
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = json.dumps({"error": {"message": f"Incorrect API key provided. Authorization: "
                                                        f"{self.headers.get('Authorization')}; upstream key "
                                                        f"{KEY[:12]}****{KEY[-4:]}; aws secret {AWS}",
                                             "type": "invalid_request_error"}}).encode()
                self.send_response(401)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def leaks(text: str) -> list[str]:
    return [s for s in (KEY, KEY[8:], KEY[-12:], AWS, AWS[:16]) if s in text]


@pytest.mark.slow
def test_a_401_echoing_the_key_leaves_it_nowhere(tiny_archive, tmp_path):
    runner = CliRunner()
    store = str(tiny_archive.path)
    with EchoingProxy() as proxy:
        env = {"OPENAI_BASE_URL": proxy.base_url, "OPENAI_API_KEY": KEY, "AWS_SECRET_ACCESS_KEY": AWS}
        asked = runner.invoke(main, ["ask", "What is the pump pressure?", "--store", store, "--trace", "--json"],
                              env=env)
        questions = tmp_path / "q.jsonl"
        questions.write_text('{"id": 1, "question": "What is the pump pressure?"}\n')
        out = tmp_path / "out.jsonl"
        batch = runner.invoke(main, ["batch", str(questions), "-o", str(out), "--store", store, "--no-progress",
                                     "--concurrency", "1"], env=env)
    assert asked.exit_code == 1 and batch.exit_code == 1, (asked.output, batch.output)
    record = json.loads(out.read_text())
    summary = (tmp_path / "out.summary.json").read_text()
    assert "Incorrect API key provided" in record["error"] and "[redacted]" in record["error"]  # said, minus secrets
    assert "HTTP 401" in asked.stderr and "Authorization: [redacted]" in asked.stderr
    for where, text in [("ask stdout", asked.stdout), ("ask stderr and trace", asked.stderr),
                        ("batch stdout", batch.stdout), ("batch stderr", batch.stderr),
                        ("OUT.jsonl", out.read_text()), ("summary", summary)]:
        assert not leaks(text), (where, text)


def test_settings_repr_hides_the_key():
    settings = Settings(api_key=KEY, base_url="http://x/v1")
    assert KEY not in repr(settings) and KEY not in str(settings) and KEY not in f"{settings}"
    assert "api_key='[hidden]'" in repr(settings) and "base_url='http://x/v1'" in repr(settings)
    assert "api_key=None" in repr(Settings())


def test_scrub_removes_configured_secrets_and_key_shapes(monkeypatch):
    monkeypatch.setenv("AWS_SESSION_TOKEN", "FwoGZXIvYXdzEJr//session-token-value")
    monkeypatch.setenv("MY_SERVICE_PASSWORD", "correct horse battery staple")
    text = ("token FwoGZXIvYXdzEJr//session-token-value, pw correct horse battery staple, "
            "Bearer abc.def-ghi_jkl, key sk-proj-****abcd, id AKIAIOSFODNN7EXAMPLE, "
            '{"api_key": "s3cr3t-value"}, Authorization=Basic dXNlcjpwYXNz, the bearer of news')
    clean = scrub(text, ["explicit-secret-1"]) + scrub("explicit-secret-1 stays out", ["explicit-secret-1"])
    for secret in ("FwoGZXIvYXdzEJr", "correct horse", "abc.def", "sk-proj", "AKIAIOSFODNN7EXAMPLE",
                   "s3cr3t-value", "dXNlcjpwYXNz", "explicit-secret-1"):
        assert secret not in clean, secret
    assert "the bearer of news" in clean and "stays out" in clean  # ordinary words survive
