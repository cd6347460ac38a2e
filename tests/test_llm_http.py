"""labkit.llm.http: the OpenAI-compatible client. Round trips through a real `transformers serve` on loopback
(started and stopped by a fixture; skipped with the reason only if it cannot start), and every failure mode
against small real stdlib HTTP servers on loopback: HTTP 500 (retried, bounded), a 4xx (never retried),
garbage, JSON without choices, a server slower than the timeout, and a closed port."""
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from labkit.llm import connect
from labkit.llm.http import HttpLLM, LLMServerError


# ------------------------------------------------------------------------------------ small real servers

def serve(handler_body, status: int = 200, delay: float = 0.0):
    """A loopback HTTP server answering every POST with (status, body) after `delay` seconds; returns the
    server (its .hits counts requests). Stop it with server.shutdown()."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.server.hits += 1
            self.server.requests.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            time.sleep(delay)
            body = handler_body(self.server) if callable(handler_body) else handler_body
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (the timeout test)
                pass

        def log_message(self, *args):  # keep the test output quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.hits, server.requests = 0, []
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def client(server, **kw) -> HttpLLM:
    return HttpLLM(f"http://127.0.0.1:{server.server_address[1]}/v1", "m", backoff=0.01, **kw)


@pytest.fixture
def servers():
    started = []
    yield lambda *a, **kw: started.append(serve(*a, **kw)) or started[-1]
    for s in started:
        s.shutdown()
        s.server_close()


def one_choice(text="hi", reason="stop", chat=False):
    choice = {"index": 0, "finish_reason": reason, **({"message": {"role": "assistant", "content": text}} if chat
                                                       else {"text": text})}
    return json.dumps({"choices": [choice], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}).encode()


def test_http_500_is_retried_a_bounded_number_of_times_then_reported(servers):
    server = servers(b'{"detail": "model exploded"}', status=500)
    with pytest.raises(LLMServerError, match=r"answered HTTP 500: .*model exploded"):
        client(server, retries=2).generate("x")
    assert server.hits == 3


def test_a_4xx_is_never_retried(servers):
    server = servers(b'{"detail": "Unexpected fields in the request"}', status=422)
    with pytest.raises(LLMServerError, match="HTTP 422: .*Unexpected fields"):
        client(server, retries=2).generate("x")
    assert server.hits == 1


def test_garbage_is_reported_as_not_json(servers):
    with pytest.raises(LLMServerError, match="not JSON: b'<html>oops"):
        client(servers(b"<html>oops</html>")).generate("x")
    with pytest.raises(LLMServerError, match="not an object"):
        client(servers(b"[1, 2]")).generate("x")


def test_json_without_choices_names_the_missing_field(servers):
    with pytest.raises(LLMServerError, match="has no choices"):
        client(servers(b'{"id": "x", "usage": {}}')).generate("x")
    with pytest.raises(LLMServerError, match=r"has no choices\.0\.message"):
        client(servers(one_choice(chat=False))).chat([{"role": "user", "content": "x"}])
    with pytest.raises(LLMServerError, match="non-empty list"):
        client(servers(b'{"choices": []}')).generate("x")


def test_a_slow_server_times_out_and_is_retried(servers):
    server = servers(one_choice(), delay=1.0)
    start = time.perf_counter()
    with pytest.raises(LLMServerError, match=r"did not answer within 0.2 s \(2 attempts\)"):
        client(server, timeout=0.2, retries=1).generate("x")
    assert server.hits == 2 and time.perf_counter() - start < 5


def test_a_closed_port_says_no_server():
    with socket.socket() as s:  # a port nothing listens on: bind, note it, close
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    llm = HttpLLM(f"http://127.0.0.1:{port}", retries=2, backoff=0.01)
    with pytest.raises(LLMServerError, match=f"no server at http://127.0.0.1:{port}/v1 — is it running"):
        llm.generate("x")


def test_requests_fewer_choices_and_counts_usage(servers):
    server = servers(lambda s: one_choice(f"sample {s.hits}", "length"))
    llm = client(server)
    out = llm.generate("a prompt", n=3, temperature=1.0, seed=5, stop=["!"], max_tokens=7)
    assert [c.text for c in out] == ["sample 1", "sample 2", "sample 3"]
    assert all(c.finish_reason == "length" and c.tokens == 2 and c.logprob is None for c in out)
    assert [r["seed"] for r in server.requests] == [5, 6, 7] and [r["n"] for r in server.requests] == [3, 2, 1]
    first = server.requests[0]
    assert first["prompt"] == "a prompt" and first["stop"] == ["!"] and first["max_tokens"] == 7
    assert first["model"] == "m" and "top_k" not in first
    assert (llm.usage.calls, llm.usage.prompt_tokens, llm.usage.completion_tokens) == (1, 9, 6)


def test_chat_messages_go_to_chat_completions_and_stop_strings_are_cut(servers):
    server = servers(one_choice("Paris. More text", chat=True))
    [answer] = client(server).chat([{"role": "user", "content": "Capital?"}], stop=["."])
    assert answer.text == "Paris" and answer.finish_reason == "stop"
    assert server.requests[0]["messages"] == [{"role": "user", "content": "Capital?"}]


def test_logprobs_from_an_echoing_server(servers):
    # what vLLM answers for echo=True, logprobs=0: every token of prompt + continuation, and one generated
    body = {"choices": [{"text": "Q: A yes!", "logprobs": {"tokens": ["Q", ":", " A", " yes", "!"],
                                                           "text_offset": [0, 1, 2, 4, 8],
                                                           "token_logprobs": [None, -1.0, -2.0, -0.5, -3.0]}}]}
    server = servers(json.dumps(body).encode())
    assert client(server, logprobs=True).logprobs("Q: A", [" yes"]) == [-0.5]
    assert server.requests[0]["echo"] is True and server.requests[0]["prompt"] == "Q: A yes"
    with pytest.raises(NotImplementedError, match="does not return log-probabilities"):
        client(server).logprobs("Q: A", [" yes"])
    with pytest.raises(NotImplementedError, match="chat template"):
        client(server, logprobs=True).logprobs([{"role": "user", "content": "x"}], [" yes"])


def test_bad_settings():
    with pytest.raises(ValueError, match="http:// or https:// URL"):
        HttpLLM("127.0.0.1:8000")
    with pytest.raises(ValueError, match="timeout"):
        HttpLLM("http://127.0.0.1:1", timeout=0)
    with pytest.raises(ValueError, match="retries"):
        HttpLLM("http://127.0.0.1:1", retries=-1)
    with pytest.raises(NotImplementedError, match="cannot constrain"):
        HttpLLM("http://127.0.0.1:1").generate("x", constraint=lambda: None)
    assert HttpLLM("http://127.0.0.1:1/").base_url == HttpLLM("http://127.0.0.1:1/v1").base_url
    assert isinstance(connect(url="http://127.0.0.1:1/v1"), HttpLLM)


# --------------------------------------------------------------------------- a real transformers serve

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def transformers_serve():
    """`transformers serve` on a free loopback port serving the cached SmolLM2 folder; the base URL."""
    from labkit.models import smollm2_dir

    script = Path(sys.executable).parent / "transformers"
    if not script.exists():
        pytest.skip(f"no `transformers` command next to {sys.executable}: install transformers[serving]")
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    process = subprocess.Popen([str(script), "serve", "--host", "127.0.0.1", "--port", str(port), str(smollm2_dir())],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90  # ~6 s on an idle machine; the machine may be busy
        while True:
            if process.poll() is not None:
                pytest.skip(f"transformers serve exited with {process.returncode}: {process.stdout.read()[-500:]}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.skip("transformers serve did not become healthy within 90 s")
            time.sleep(0.5)
        yield url + "/v1"
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.slow
def test_chat_through_a_real_transformers_serve(transformers_serve):
    llm = HttpLLM(transformers_serve, timeout=120)
    [answer] = llm.chat([{"role": "user", "content": "What is the capital of France?"}], max_tokens=12)
    assert isinstance(answer.text, str) and answer.text.strip() and answer.finish_reason in ("stop", "length")
    assert llm.usage.calls == 1 and llm.usage.prompt_tokens > 10 and 0 < llm.usage.completion_tokens <= 12


@pytest.mark.slow
def test_completions_and_n_through_a_real_transformers_serve(transformers_serve):
    llm = connect(url=transformers_serve)
    out = llm.generate("Once upon a time", max_tokens=6, n=2)  # the server returns one choice: asked twice
    assert len(out) == 2 and all(c.text.strip() for c in out)
    assert llm.usage.completion_tokens == sum(c.tokens for c in out) and all(0 < c.tokens <= 6 for c in out)
    assert not llm.supports_logprobs
    with pytest.raises(LLMServerError, match="HTTP 4"):  # transformers serve rejects fields it does not know
        llm.generate("Once", max_tokens=2, top_k=5)
