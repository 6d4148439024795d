"""Counted vs true tokens of streams, the way Langchain-Chatchat and chat UIs call a local model.

The demo's model server (examples/local_model_server.py, a random-weight tiny model with a real
tokenizer) is the ground truth: it reports the tokens it generated when asked for the usage chunk.
The same prompts are streamed through the openai SDK, LangChain's ChatOpenAI and litellm, with
`stream_include_usage` on (the default: the server's usage) and off (counted locally, from the
decoded text, with the model's tokenizer mapped in `tokenizers:`). "before" is the plain
re-tokenized count of the decoded text, what was recorded before counts were capped at max_tokens.

    python bench/stream_counts.py [--prompts 12] [--max-tokens 12]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples"))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, str(ROOT / "examples" / "local_model_server.py"), "--port", str(port),
                                "--model", str(model)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return process, f"http://127.0.0.1:{port}/v1"
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit("the model server did not start")


def prompts(count: int) -> list[list[dict[str, str]]]:
    topics = ["refund policy", "知识库的更新频率", "VPN setup", "报销流程", "on-call rota", "GPU quota",
              "password reset", "年假规定", "expense limits", "laptop renewal", "数据备份", "office hours"]
    return [[{"role": "system", "content": "You answer from the company knowledge base."},
             {"role": "user", "content": f"What does the knowledge base say about {topics[i % len(topics)]}? ({i})"}]
            for i in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=12)
    parser.add_argument("--max-tokens", type=int, default=12)
    args = parser.parse_args()

    import openai
    from _sdk import recorded
    from tiny_local_model import ensure
    from transformers import AutoTokenizer

    from otel_tokens import names
    from otel_tokens.config.settings import Settings

    model_path = ensure()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = model_path.name
    process, base_url = start_server(model_path)
    try:
        bare = openai.OpenAI(base_url=base_url, api_key="x", max_retries=0)
        truth: list[tuple[int, int, str]] = []
        for messages in prompts(args.prompts):
            text, usage = "", None
            for chunk in bare.chat.completions.create(model=model, messages=messages, stream=True,
                                                      max_tokens=args.max_tokens,
                                                      stream_options={"include_usage": True}):
                text += "".join(c.delta.content or "" for c in chunk.choices)
                usage = chunk.usage or usage
            assert usage is not None
            truth.append((usage.prompt_tokens, usage.completion_tokens, text))

        def run(client_name: str, include_usage: bool) -> list[tuple[int, int, str]]:
            settings = Settings(tokenizers={model: str(model_path)}, stream_include_usage=include_usage)
            with recorded(settings) as exporter:
                for messages in prompts(args.prompts):
                    stream_once(client_name, base_url, model, messages, args.max_tokens)
                spans = exporter.get_finished_spans()
            return [(s.attributes.get(names.GEN_AI_USAGE_INPUT_TOKENS),
                     s.attributes.get(names.GEN_AI_USAGE_OUTPUT_TOKENS), s.attributes.get(names.LLM_USAGE_SOURCE))
                    for s in spans]

        retokenized = [(p, len(tokenizer.encode(t, add_special_tokens=False)), "counted") for p, _, t in truth]
        rows = [("before: re-tokenized text, no cap", retokenized)]
        for client_name in ("openai", "langchain", "litellm"):
            for include_usage in (False, True):
                label = f"{client_name}, stream_include_usage={'true' if include_usage else 'false'}"
                rows.append((label, run(client_name, include_usage)))
    finally:
        process.kill()
        process.wait()

    true_out = sum(c for _, c, _ in truth)
    print(f"{args.prompts} streamed chats, max_tokens={args.max_tokens}, server truth: "
          f"{sum(p for p, _, _ in truth)} input / {true_out} output tokens\n")
    print(f"{'how':<44} {'source':<18} {'input err':>9} {'output':>7} {'output err':>10} {'exact':>6}")
    for label, measured in rows:
        inputs = sum(m[0] or 0 for m in measured)
        outputs = sum(m[1] or 0 for m in measured)
        exact = sum(1 for m, t in zip(measured, truth, strict=True) if (m[0], m[1]) == (t[0], t[1]))
        sources = ",".join(sorted({str(m[2]) for m in measured}))
        in_err = 100 * (inputs - sum(p for p, _, _ in truth)) / max(1, sum(p for p, _, _ in truth))
        out_err = 100 * (outputs - true_out) / max(1, true_out)
        print(f"{label:<44} {sources:<18} {in_err:>+8.1f}% {outputs:>7} {out_err:>+9.1f}% {exact:>3}/{len(truth)}")


def stream_once(client_name: str, base_url: str, model: str, messages: list[dict[str, str]], max_tokens: int) -> Any:
    if client_name == "openai":
        import openai

        client = openai.OpenAI(base_url=base_url, api_key="x", max_retries=0)
        return "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model=model, messages=messages, stream=True, max_tokens=max_tokens) if c.choices)
    if client_name == "langchain":
        from langchain_openai import ChatOpenAI

        chat = ChatOpenAI(model=model, base_url=base_url, api_key="x", max_tokens=max_tokens, streaming=True,
                          max_retries=0)
        return "".join(str(c.content) for c in chat.stream([(m["role"], m["content"]) for m in messages]))
    import litellm

    return "".join(c.choices[0].delta.content or "" for c in litellm.completion(
        model=f"openai/{model}", messages=messages, api_base=base_url, api_key="x", stream=True,
        max_tokens=max_tokens) if c.choices)


if __name__ == "__main__":
    main()
