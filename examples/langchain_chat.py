"""LangChain's ChatOpenAI (as Langchain-Chatchat uses it) against an OpenAI-compatible server:

    OPENAI_BASE_URL=http://127.0.0.1:8000/v1 OPENAI_API_KEY=local \
        opentelemetry-instrument --traces_exporter console --metrics_exporter console python examples/langchain_chat.py
"""

import os

from langchain_openai import ChatOpenAI

from otel_tokens import usage_context

llm = ChatOpenAI(model=os.environ.get("MODEL", "tiny-chat-model"))


@usage_context(user_id="bob", department="research")
def answer(question: str) -> str:
    return llm.invoke([("system", "You answer from the knowledge base."), ("human", question)]).content


print(answer("Summarise this support ticket."))
with usage_context(user_id="carol", department="research"):
    print("".join(chunk.content for chunk in llm.stream("请总结这个工单。")))
