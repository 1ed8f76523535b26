"""A real HTTP server on 127.0.0.1 that speaks the OpenAI chat-completions wire format.

Tests, benchmarks and examples drive it with the real ``openai`` client. Behaviour comes
from a ``handler(body, number) -> Reply`` (``body`` is the request's JSON, ``number`` counts
requests from 0, retries included), so one server covers valid answers, garbage, 429s,
500s, stalls and refusals. Every request is logged (``server.requests``: arrival time and
body, in arrival order, thread-safe) so tests can count requests and read the prompts.

    with ChatServer(lambda body, n: Reply("### The desired ranking is: [1, 0]")) as server:
        ranker = OpenAIRanker("test", base_url=server.base_url)
        ranker.rank(...)
        assert server.count == 1

In tests, the ``chat_server`` fixture of ``conftest.py`` starts one per call and stops it
at teardown: ``server = chat_server(handler)``.

Replies: ``Reply(content)`` answers; ``finish_reason="length"`` / ``"content_filter"``,
``refusal="..."`` mimic cut or refused answers; ``status=429, headers={"Retry-After": "1"}``
or ``status=500`` fail (with ``error_body`` as the JSON body); ``delay`` sleeps before
answering; ``hang=True`` never answers (until the server stops), for client timeouts.
Helpers: :func:`shown_responses` reads the responses out of a ranking prompt, and
:func:`rank_by` builds a handler that ranks them by a key (e.g. whether a marker word is in
the text), the judge whose answer a test can predict.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    """What the server answers to one request."""

    content: str = ""
    finish_reason: str = "stop"
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering
    hang: bool = False  # never answer: the client times out (released when the server stops)
    refusal: str | None = None
    error_body: dict[str, Any] | None = None
    prompt_tokens: int | None = None  # default: characters / 4 of the messages
    completion_tokens: int | None = None


@dataclass
class LoggedRequest:
    """One request as the server received it."""

    received: float  # time.monotonic() on arrival
    body: dict[str, Any]

    @property
    def last_user_message(self) -> str:
        """The content of the last user message (a ranking prompt's query)."""
        return [m for m in self.body["messages"] if m["role"] == "user"][-1]["content"]


Handler = Callable[[dict[str, Any], int], Reply]


class _Server(ThreadingHTTPServer):
    # The default listen backlog of 5 resets connections when a client opens dozens at once,
    # which real API servers never do.
    request_queue_size = 256


class ChatServer:
    """``POST /v1/chat/completions`` on a free port of 127.0.0.1, in a daemon thread."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[LoggedRequest] = []
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        server = self

        class _Handler(BaseHTTPRequestHandler):
            # Keep-alive, as every real API server does: the client reuses its connections.
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes; with Nagle's algorithm on, the second
            # waits for the client's delayed ACK (~40 ms a request). Real servers set
            # TCP_NODELAY too.
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                with server._lock:
                    number = len(server.requests)
                    server.requests.append(LoggedRequest(time.monotonic(), body))
                reply = server.handler(body, number)
                if reply.hang:
                    server._stopped.wait()
                    return  # the connection closes without an answer
                if reply.delay:
                    time.sleep(reply.delay)
                if reply.status != 200:
                    payload = reply.error_body or {
                        "error": {"message": f"status {reply.status}", "type": "test"}
                    }
                else:
                    payload = completion(body, reply)
                data = json.dumps(payload).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for key, value in reply.headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out
                    pass

        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> ChatServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> ChatServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def count(self) -> int:
        """Requests received so far."""
        with self._lock:
            return len(self.requests)


def completion(body: dict[str, Any], reply: Reply) -> dict[str, Any]:
    """A ``chat.completion`` object as the OpenAI API returns it."""
    chars = sum(len(str(m.get("content", ""))) for m in body.get("messages", []))
    prompt_tokens = reply.prompt_tokens if reply.prompt_tokens is not None else chars // 4 + 1
    completion_tokens = (
        reply.completion_tokens
        if reply.completion_tokens is not None
        else len(reply.content) // 4 + 1
    )
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "test"),
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": reply.content,
                    "refusal": reply.refusal,
                },
                "finish_reason": reply.finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


_RESPONSE = re.compile(r"<response id=(\d+)>\n(.*?)\n</response id=\1>", re.S)


def shown_responses(user_message: str) -> list[str]:
    """The responses of a ranking prompt's task, in display order."""
    return [text for _, text in _RESPONSE.findall(user_message)]


def rank_by(key: Callable[[str], float]) -> Handler:
    """A handler that ranks the shown responses by ``key`` (higher first, stable)."""

    def handler(body: dict[str, Any], number: int) -> Reply:
        user = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
        shown = shown_responses(user)
        ranking = sorted(range(len(shown)), key=lambda k: -key(shown[k]))
        return Reply(f"Thinking done.\n### The desired ranking is: {ranking}")

    return handler
