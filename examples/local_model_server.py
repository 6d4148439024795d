"""A minimal OpenAI-compatible server for a local transformers model, like vLLM or Xinference serve
Qwen for Langchain-Chatchat: `/v1/chat/completions`, JSON and SSE streams (with the usage chunk
when `stream_options.include_usage` is asked for).

Run it under the agent and its own `generate` calls are counted and attributed too:

    OTEL_TOKENS_TRUST_BAGGAGE=true opentelemetry-instrument python examples/local_model_server.py \
        --port 8000 --model .demo/tiny-chat-model

Clients instrumented with otel-tokens send `traceparent` and `baggage` (user.id, department) to
internal hosts; this server extracts them as an instrumented web framework (FastAPI, Flask) would,
and, trusting its callers' baggage (it sits behind the apps, never on the internet), charges the
server-side counts to the same user, in the same trace.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from opentelemetry import context, propagate


class ModelServer:
    def __init__(self, model_path: Path, name: str | None = None) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModelForCausalLM.from_pretrained(model_path).eval()
        self.name = name or Path(model_path).name
        self.lock = threading.Lock()  # one generate at a time on this small CPU box

    def complete(self, body: dict[str, Any], streamer: Any = None) -> tuple[str, int, int, str]:
        """(reply text, prompt tokens, completion tokens as the server itself counts them, finish reason)."""
        import torch

        inputs = self.tokenizer.apply_chat_template(body["messages"], add_generation_prompt=True,
                                                    return_tensors="pt", return_dict=True)
        max_new = int(body.get("max_tokens") or body.get("max_completion_tokens") or 32)
        with self.lock:
            torch.manual_seed(len(str(body["messages"])))
            # vLLM's `ignore_eos` (what load tests send): generate the whole limit
            floor = {"min_new_tokens": max_new} if body.get("ignore_eos") is True else {}
            output = self.model.generate(**inputs, max_new_tokens=max_new, do_sample=True, top_k=50,
                                         streamer=streamer, **floor)
        prompt = int(inputs["input_ids"].shape[1])
        generated = output[0, prompt:].tolist()
        eos = self.tokenizer.eos_token_id
        completion = generated.index(eos) + 1 if eos in generated else len(generated)
        finish = "stop" if eos in generated[:completion] else "length"  # cut at max_tokens, as vLLM says
        return self.tokenizer.decode(generated[:completion], skip_special_tokens=True), prompt, completion, finish


def make_handler(server: ModelServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
            token = context.attach(propagate.extract(dict(self.headers)))
            try:
                if self.path.rstrip("/").endswith("/chat/completions"):
                    self._chat(body)
                else:
                    self._send(404, {"error": {"message": f"unknown path {self.path}", "type": "not_found"}})
            finally:
                context.detach(token)

        def _chat(self, body: dict[str, Any]) -> None:
            text, prompt, completion, finish = server.complete(body)
            base = {"id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "created": int(time.time()), "model": server.name}
            usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
            if not body.get("stream"):
                self._send(200, {**base, "object": "chat.completion", "usage": usage, "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}]})
                return
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            chunk = {**base, "object": "chat.completion.chunk"}
            events = [{**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}]
            events += [{**chunk, "choices": [{"index": 0, "delta": {"content": text[i:i + 8]}}]}
                       for i in range(0, len(text), 8)]
            events.append({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
            if (body.get("stream_options") or {}).get("include_usage"):
                events.append({**chunk, "choices": [], "usage": usage})
            for event in events:
                self._chunk(f"data: {json.dumps(event)}\n\n".encode())
            self._chunk(b"data: [DONE]\n\n")
            self._chunk(b"")

        def _chunk(self, data: bytes) -> None:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model", type=Path, default=Path(".demo/tiny-chat-model"))
    parser.add_argument("--served-model-name", help="the model name it answers with (default: the folder's name)")
    args = parser.parse_args()
    if args.model == Path(".demo/tiny-chat-model") and not (args.model / "config.json").exists():
        import sys

        sys.path.insert(0, str(Path(__file__).parent))
        from tiny_local_model import ensure

        ensure(args.model)  # the demo's tiny random-weight model, built from a config (no download)
    elif not (args.model / "config.json").exists():
        raise SystemExit(f"{args.model}: no transformers model there (config.json); give --model a local model "
                         "folder, or leave it out for the tiny demo model")
    httpd = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(ModelServer(args.model, args.served_model_name)))
    print(f"serving {args.model} on http://127.0.0.1:{args.port}/v1", flush=True)
    httpd.serve_forever()


if __name__ == "__main__":
    main()
