"""Concurrent openai calls in one process: threads sharing one client and asyncio tasks sharing one async
client, plain and streaming, reported and counted, interleaved. Every token lands on the right user, every span
ends once, and the totals equal the server's own counts (the in-process accounting is shared by all of them)."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter

import openai

from otel_tokens import names, usage_context
from tests.support.openai_server import OpenAIServer

MODEL = "gpt-4"
CALLS = 24  # per worker


def _messages(worker: int, i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"worker {worker} question {i}: " + "why " * (i % 5)}]


def test_threads_and_asyncio_tasks_account_exactly(telemetry):
    truth: Counter[tuple[str, str]] = Counter()
    truth_lock = threading.Lock()
    errors: list[BaseException] = []
    with OpenAIServer(usage_mode="auto") as server:
        reply = server.completion_tokens(MODEL, server.reply)

        def expect(user: str, messages: list[dict[str, str]]) -> None:
            with truth_lock:
                truth[(user, "input")] += server.prompt_tokens(MODEL, messages)
                truth[(user, "output")] += reply

        client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)

        def thread_worker(worker: int) -> None:
            user = f"thread-{worker}"
            try:
                with usage_context(user_id=user, department=f"dept-{worker % 3}"):
                    for i in range(CALLS):
                        messages = _messages(worker, i)
                        if i % 3 == 0:  # plain: reported by the server
                            client.chat.completions.create(model=MODEL, messages=messages)
                        else:  # streamed, the caller declining the usage chunk: counted locally
                            for _ in client.chat.completions.create(model=MODEL, messages=messages, stream=True,
                                                                    stream_options={"include_usage": False}):
                                pass
                        expect(user, messages)
            except BaseException as error:  # surfaced below: a thread's failure must fail the test
                errors.append(error)

        threads = [threading.Thread(target=thread_worker, args=(w,)) for w in range(6)]

        async def task_worker(async_client: openai.AsyncOpenAI, worker: int) -> None:
            user = f"task-{worker}"
            with usage_context(user_id=user, department=f"dept-{worker % 3}"):
                for i in range(CALLS):
                    messages = _messages(100 + worker, i)
                    if i % 2:
                        await async_client.chat.completions.create(model=MODEL, messages=messages)
                    else:
                        stream = await async_client.chat.completions.create(
                            model=MODEL, messages=messages, stream=True, stream_options={"include_usage": True})
                        async for _ in stream:
                            await asyncio.sleep(0)  # let the other tasks' streams interleave with this one
                    expect(user, messages)

        async def tasks() -> None:
            async_client = openai.AsyncOpenAI(base_url=server.base_url, api_key="x", max_retries=0)
            await asyncio.gather(*(task_worker(async_client, w) for w in range(6)))
            await async_client.close()

        for t in threads:
            t.start()
        asyncio.run(tasks())  # the tasks run while the threads do
        for t in threads:
            t.join()
    assert not errors, errors
    totals = telemetry.token_totals(names.USER_ID, names.GEN_AI_TOKEN_TYPE)
    assert totals == dict(truth)
    spans = telemetry.spans()
    assert len(spans) == 12 * CALLS == len(server.requests)
    per_user = Counter(s.attributes[names.USER_ID] for s in spans)
    assert set(per_user.values()) == {CALLS}
    sources = Counter(s.attributes[names.LLM_USAGE_SOURCE] for s in spans)
    assert sources == {"reported": 6 * 8 + 6 * CALLS, "counted": 6 * 16}
    requests = sum(p.value for p in telemetry.metrics()[names.METRIC_LLM_REQUESTS])
    assert requests == 12 * CALLS
