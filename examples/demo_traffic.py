"""Demo traffic: several users in three departments, run under `opentelemetry-instrument` (no
telemetry code here beyond `usage_context`). Some call the local model in-process through a
transformers pipeline, some go through the `openai` SDK to the local OpenAI-compatible server, and
one batch job speeds up until the quota guard enabled in this process's config refuses it (budget
mode in the demo: at the call that would cross its quota).

With DEMO_ONLY_RUNAWAY=user:department only that runaway runs, until refused (the demo's nightly
job, in alert mode: it asks the paid API's DEMO_RUNAWAY_MODEL, is served by the local model server once its
warning fires, and refused once its critical alert fires, well past its quota).

Environment: OPENAI_BASE_URL (the local server, or the paid API for the nightly job), DEMO_MODEL (the model
folder), DEMO_ROUNDS, DEMO_PAUSE, DEMO_ONLY_RUNAWAY, DEMO_RUNAWAY_MODEL, DEMO_RUNAWAY_PAUSE.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import openai
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

from otel_tokens import QuotaExceededError, QuotaStatus, quota_status, usage_context

QUESTIONS = ["How do I reset my password?", "Where is the refund policy?", "请总结这个工单。",
             "Summarise this support ticket.", "退款政策在哪里？"]


def main() -> None:
    model_path = os.environ.get("DEMO_MODEL", ".demo/tiny-chat-model")
    rounds = int(os.environ.get("DEMO_ROUNDS", "6"))
    pause = float(os.environ.get("DEMO_PAUSE", "3"))
    client = openai.OpenAI(api_key="local", max_retries=0)  # OPENAI_BASE_URL points at the local server
    model = os.path.basename(model_path.rstrip("/"))
    runaway_model = os.environ.get("DEMO_RUNAWAY_MODEL", model)

    def chat(question: str, stream: bool = False, usage_chunk: bool = True, max_tokens: int = 24,
             asked: str = model, **extra: Any) -> Any:
        messages = [{"role": "system", "content": "You answer from the knowledge base."},
                    {"role": "user", "content": question}]
        if not stream:
            return client.chat.completions.create(model=asked, messages=messages, max_tokens=max_tokens, **extra)
        options = {"include_usage": True} if usage_chunk else None
        for _ in client.chat.completions.create(model=asked, messages=messages, max_tokens=max_tokens,
                                                stream=True, stream_options=options):
            pass
        return None

    if os.environ.get("DEMO_ONLY_RUNAWAY"):
        user, department = os.environ["DEMO_ONLY_RUNAWAY"].split(":")
        with usage_context(user_id=user, department=department):
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and runaway(chat, QUESTIONS[2], runaway_model):  # until refused
                time.sleep(float(os.environ.get("DEMO_RUNAWAY_PAUSE", "0.3")))
        print("traffic done", flush=True)
        sys.stdin.read()
        return
    local = pipeline("text-generation", model=AutoModelForCausalLM.from_pretrained(model_path),
                     tokenizer=AutoTokenizer.from_pretrained(model_path), device="cpu")
    for round_ in range(rounds):
        question = QUESTIONS[round_ % len(QUESTIONS)]
        with usage_context(user_id="alice", department="support", session_id=f"alice-{round_}"):
            local([{"role": "user", "content": question}], max_new_tokens=20, do_sample=True)
        with usage_context(user_id="bob", department="support"):
            chat(question)
        with usage_context(user_id="carol", department="research"):
            chat(question, stream=True)
        with usage_context(user_id="dave", department="research"):
            chat(question, stream=True, usage_chunk=False)  # no usage block: counted with the local tokenizer
        with usage_context(user_id="batch-bot", department="operations"):
            for _ in range(1 + round_ // 2):  # a runaway script of long summaries, speeding up
                if not runaway(chat, question, **BATCH):
                    break
        print(f"round {round_ + 1}/{rounds}", flush=True)
        time.sleep(pause)  # lets the live view, and the warning before the critical, be seen
    with usage_context(user_id="batch-bot", department="operations"):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and runaway(chat, QUESTIONS[0], **BATCH):  # it goes on until refused
            time.sleep(0.3)
    with usage_context(user_id="bob", department="support"):
        chat(QUESTIONS[1])  # other users are not affected
        print("served bob after the refusal", flush=True)
    print("traffic done", flush=True)
    sys.stdin.read()  # keep the metrics endpoint up for the last scrape, until the demo closes stdin


# the batch job: a load-test script asking for 160 tokens every time (vLLM's `ignore_eos`, as its benchmarks send);
# its last call is shortened to what its quota has left
BATCH = {"max_tokens": 160, "extra_body": {"ignore_eos": True}}
_refused = [0]
_told: set[str] = set()


def runaway(chat: Any, question: str, model: str | None = None, max_tokens: int = 48, **extra: Any) -> bool:
    """One call of the batch job; False once the guard refuses it (an app would answer HTTP 429). Says once
    what the caller sees of a call the guard shortened (`fit`) or sent to the local model (`downgrade`)."""
    try:
        reply = chat(question, max_tokens=max_tokens, **({"asked": model} if model else {}), **extra)
        choice = reply.choices[0]
        if reply.usage.completion_tokens < max_tokens and choice.finish_reason == "length" and "fit" not in _told:
            _told.add("fit")
            print(f"shortened: asked for {max_tokens} tokens, answered with {reply.usage.completion_tokens} "
                  f"(finish_reason {choice.finish_reason}): all its quota had left", flush=True)
        if model and reply.model != model and "moved" not in _told:
            _told.add("moved")
            print(f"served by the local model: asked {model}, answered by {reply.model}", flush=True)
        return True
    except QuotaExceededError as error:
        _refused[0] += 1
        if _refused[0] == 1:
            print(f"refused: {error}", flush=True)
            status = quota_status()  # budget mode only: alert mode knows who is over, not how far
            if status.available:
                print(f"status the app can show its user: {where_they_stand(status)}", flush=True)
        return False


def where_they_stand(status: QuotaStatus) -> str:
    """One part per window and kind with a limit (what a front end would show)."""
    parts = []
    for w in status.windows:
        resets = "rolling" if w.resets_at is None else f"resets {w.resets_at:%Y-%m-%d %H:%M %Z}"
        amounts = (f"{w.used:,.0f} of {w.limit:,.0f}" if w.currency is None
                   else f"{w.used:,.4f} of {w.limit:,.2f} {w.currency}")
        parts.append(f"{w.principal} {w.window} {w.kind} {amounts} ({w.ratio:.0%}, {resets})")
    return "; ".join(parts)


if __name__ == "__main__":
    main()
