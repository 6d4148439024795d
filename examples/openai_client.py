"""The openai SDK against any OpenAI-compatible server (vLLM, Xinference, Ollama, or
examples/local_model_server.py), attributed per user:

    OPENAI_BASE_URL=http://127.0.0.1:8000/v1 OPENAI_API_KEY=local \
        opentelemetry-instrument --traces_exporter console --metrics_exporter console python examples/openai_client.py
"""

import os

import openai

from otel_tokens import usage_context

client = openai.OpenAI()
model = os.environ.get("MODEL", "tiny-chat-model")
with usage_context(user_id="alice", department="support"):
    question = [{"role": "user", "content": "Where is the refund policy?"}]
    reply = client.chat.completions.create(model=model, messages=question)
    print(reply.choices[0].message.content)
    for chunk in client.chat.completions.create(model=model, stream=True,
                                                messages=[{"role": "user", "content": "怎么重置密码？"}]):
        print(chunk.choices[0].delta.content or "" if chunk.choices else "", end="")
    print()
