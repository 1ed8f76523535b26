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
``refusal="..."`` mimic cut or refused answers; ``raw_body`` is sent instead of a completion; ``status=429, headers={"Retry-After": "1"}``
or ``status=500`` fail (with ``error_body`` as the JSON body); ``delay`` sleeps before
answering; ``hang=True`` never answers (until the server stops), for client timeouts;
``trickle_s=30`` sends the answer one byte at a time spread over 30 s (``server.disconnects``
records a client that hung up first, ``server.completed`` the answers sent whole).
Key echo: :data:`ECHO_KEY` and :data:`ECHO_MASKED_KEY` in a reply's content or error body
are replaced by the API key the request carried (whole, or masked as providers do).
Helpers: :func:`shown_responses` reads the responses out of a ranking prompt,
:func:`rank_by` builds a handler that ranks them by a key (e.g. whether a marker word is in
the text), the judge whose answer a test can predict; :func:`quote` is such a judge that also
quotes responses verbatim, :func:`echo` a server that answers with part of the request.
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
    trickle_s: float = 0.0  # send the body one byte at a time, spread over this many seconds
    raw_body: str | None = None  # sent as it is instead of a completion (a malformed body)
    refusal: str | None = None
    error_body: dict[str, Any] | None = None
    prompt_tokens: int | None = None  # default: characters / 4 of the messages
    completion_tokens: int | None = None


@dataclass
class LoggedRequest:
    """One request as the server received it."""

    received: float  # time.monotonic() on arrival
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def last_user_message(self) -> str:
        """The content of the last user message (a ranking prompt's query)."""
        return [m for m in self.body["messages"] if m["role"] == "user"][-1]["content"]


Handler = Callable[[dict[str, Any], int], Reply]

#: Replaced, in a reply's content and error body, by the API key the request carried.
ECHO_KEY = "{{api_key}}"
#: Replaced by the key masked as providers quote it: its first 12 and last 4 characters.
ECHO_MASKED_KEY = "{{masked_api_key}}"


@dataclass
class Disconnect:
    """A client that hung up before the whole answer was sent."""

    number: int  # the request's number
    sent: int  # bytes of the body sent
    total: int  # bytes the body had
    at: float  # time.monotonic()


def _with_key(text: str, headers: Any) -> str:
    key = str(headers.get("Authorization", "")).removeprefix("Bearer ")
    return text.replace(ECHO_KEY, key).replace(ECHO_MASKED_KEY, f"{key[:12]}****{key[-4:]}")


class _Server(ThreadingHTTPServer):
    # The default listen backlog of 5 resets connections when a client opens dozens at once,
    # which real API servers never do.
    request_queue_size = 256


class ChatServer:
    """``POST /v1/chat/completions`` on a free port of 127.0.0.1, in a daemon thread."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[LoggedRequest] = []
        self.disconnects: list[Disconnect] = []
        self.completed: list[int] = []  # numbers of the requests answered whole
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
                    headers = dict(self.headers.items())
                    server.requests.append(LoggedRequest(time.monotonic(), body, headers))
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
                text = json.dumps(payload) if reply.raw_body is None else reply.raw_body
                data = _with_key(text, self.headers).encode()
                sent = 0
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for key, value in reply.headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    if reply.trickle_s:
                        pause = reply.trickle_s / len(data)
                        for sent in range(len(data)):
                            if server._stopped.is_set():
                                return
                            self.wfile.write(data[sent : sent + 1])
                            self.wfile.flush()
                            time.sleep(pause)
                        sent = len(data)
                    else:
                        self.wfile.write(data)
                    with server._lock:
                        server.completed.append(number)
                except (BrokenPipeError, ConnectionResetError):  # the client hung up
                    with server._lock:
                        server.disconnects.append(
                            Disconnect(number, sent, len(data), time.monotonic())
                        )

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
# The paper's layout (RankingTemplate.paper()): "# Response-k. text" up to the next mark.
_PAPER_RESPONSE = re.compile(r"^# Response-(\d+)\. (.*?)(?=\n# Response-\d+\. |\Z)", re.S | re.M)


def shown_responses(user_message: str) -> list[str]:
    """The responses of a ranking prompt's task, in display order (either template)."""
    tagged = [text for _, text in _RESPONSE.findall(user_message)]
    if tagged or "\n# Response-0. " not in user_message:
        return tagged
    listing = user_message.split("### Responses:\n", 1)[-1]
    # What the template appends after the last response (a better response, JSON asked for).
    listing = re.split(r"\n(?=After the ranking line, |Answer with only a JSON object)", listing)[0]
    return [text for _, text in _PAPER_RESPONSE.findall(listing)]


def rank_by(key: Callable[[str], float]) -> Handler:
    """A handler that ranks the shown responses by ``key`` (higher first, stable)."""

    def handler(body: dict[str, Any], number: int) -> Reply:
        user = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
        shown = shown_responses(user)
        return Reply(f"Thinking done.\n### The desired ranking is: {_ranking_by(key, shown)}")

    return handler


def _ranking_by(key: Callable[[str], float], shown: list[str]) -> list[int]:
    return sorted(range(len(shown)), key=lambda k: -key(shown[k]))


def quote(
    key: Callable[[str], float],
    quoted: Callable[[str], bool],
    where: str = "reasoning",
    better: str = "A careful, kind answer.",
) -> Handler:
    """An honest judge (ranks by ``key``, as :func:`rank_by`) that quotes every shown response
    for which ``quoted(text)`` holds, verbatim as it was shown: in its reasoning, before its
    own words and answer line (``where="reasoning"``), or inside the better response it
    writes after the answer line (``where="better"``)."""

    def handler(body: dict[str, Any], number: int) -> Reply:
        user = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
        shown = shown_responses(user)
        quotes = "\n".join(
            f'Response {k} reads:\n"{text}"' for k, text in enumerate(shown) if quoted(text)
        )
        answer = f"### The desired ranking is: {_ranking_by(key, shown)}"
        if where == "reasoning":
            return Reply(f"{quotes}\nHaving read them all, I rank them myself.\n{answer}")
        return Reply(f"My own ranking.\n{answer}\n### A better response is:\n{better}\n{quotes}")

    return handler


def echo(part: str = "task") -> Handler:
    """A server that answers with part of the request, verbatim: ``"task"`` (the last user
    message), ``"request"`` (every message's content, one after the other) or
    ``"response:K"`` (the K-th shown response)."""

    def handler(body: dict[str, Any], number: int) -> Reply:
        contents = [str(m["content"]) for m in body["messages"]]
        if part == "task":
            return Reply(contents[-1])
        if part == "request":
            return Reply("\n\n".join(contents))
        index = int(part.split(":", 1)[1])
        return Reply(shown_responses(contents[-1])[index])

    return handler
