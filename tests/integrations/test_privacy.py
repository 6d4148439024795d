"""No prompt or completion text leaves the process through any telemetry channel.

Every integration runs with distinctive markers in its prompts, completions and exception messages, and
every channel the process has is searched for them: finished spans (names, attributes, events, links,
status, resource, scope), metric data (every attribute, resource, scope), Python log records at DEBUG from
every logger, an OTel LoggerProvider's exported log records, the OTLP protobuf encodings of spans, metrics
and logs (as bytes), `otel_tokens.ops.doctor.report()`, and the headers of every outgoing request (the
`baggage` header carries user.id, department and session.id only).

With OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT unset or `false` the markers appear nowhere. With it
`true` the prompt and completion markers appear on openai spans, and only in the documented attributes
(`gen_ai.input.messages`, `gen_ai.output.messages`, `gen_ai.system_instructions`); everything else, metrics and
logs included, stays clean, and exception messages never appear. transformers `generate` sees token ids only and
captures nothing either way. A control test leaks a marker into each channel on purpose and checks that the search
catches it, so a clean result means clean, not unsearched.
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

import openai
import pytest
import torch
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_tokens import TokenUsageInstrumentor, names, usage_context
from otel_tokens import logs as safety
from otel_tokens.ops import doctor
from tests.support.local_tokenizer import build_local_tokenizer
from tests.support.openai_server import OpenAIServer
from tests.support.telemetry import LogRecords
from tests.support.tiny_models import ForceTokens, forcing

PROMPT_MARKER = "Qz7PromptMarkerXk"
COMPLETION_MARKER = "Vb3CompletionMarkerWj"
ERROR_MARKER = "Ht9ErrorMarkerPq"
CJK_MARKER = "绝密提示词甲乙丙"
MARKERS = (PROMPT_MARKER, COMPLETION_MARKER, ERROR_MARKER, CJK_MARKER)

PROMPT = f"Summarise the report {PROMPT_MARKER} for me {CJK_MARKER}."
REPLY = f"The report says {COMPLETION_MARKER} and nothing else."
ATTRIBUTION = {names.USER_ID: "alice", names.DEPARTMENT: "support", names.SESSION_ID: "s-42"}


def markers_in(text: str | bytes) -> list[str]:
    """The markers found in `text` (case-insensitively; bytes as UTF-8)."""
    if isinstance(text, bytes):
        lowered = text.lower()
        return [m for m in MARKERS if m.lower().encode() in lowered]
    lowered = text.lower()
    return [m for m in MARKERS if m.lower() in lowered]


@dataclass
class Channels:
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    spans: InMemorySpanExporter
    reader: InMemoryMetricReader
    logs: InMemoryLogRecordExporter
    python_logs: LogRecords
    capture: bool = False
    servers: list[OpenAIServer] = field(default_factory=list)

    def content(self) -> list[dict[str, str]]:
        """The documented content attributes of every span (what the opt-in may add)."""
        return [{k: v for k, v in (s.attributes or {}).items() if k in names.CONTENT_ATTRIBUTES}
                for s in self.spans.get_finished_spans()]

    def assert_clean(self) -> None:
        finished = self.spans.get_finished_spans()
        assert finished, "nothing was recorded: the search below would prove nothing"
        if not self.capture:
            assert not any(self.content()), "content attributes without the opt-in"
        for attributes in self.content():
            assert ERROR_MARKER not in "".join(attributes.values())  # exception messages never, even opted in
        spans = [_without_content(span) for span in finished]
        for span in spans:
            parts = [span.name, span.to_json(), str(span.status.description), str(dict(span.resource.attributes))]
            parts += [f"{k}={v}" for k, v in (span.attributes or {}).items()]
            parts += [f"{e.name} {dict(e.attributes or {})}" for e in span.events]
            parts += [str(dict(link.attributes or {})) for link in span.links]
            assert not markers_in("\n".join(parts)), span.to_json()
            if span.status.description is not None:  # the exception type, never its message
                assert span.status.description == span.attributes[names.ERROR_TYPE]
        assert not markers_in(encode_spans(spans).SerializeToString())

        metrics = self.reader.get_metrics_data()
        assert metrics is not None and metrics.resource_metrics
        points = [p for rm in metrics.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
                  for p in m.data.data_points]
        assert points
        assert not markers_in(" ".join(f"{k}={v}" for p in points for k, v in p.attributes.items()))
        assert not markers_in(metrics.to_json())
        assert not markers_in(encode_metrics(metrics).SerializeToString())

        for record in self.python_logs.records:
            text = logging.Formatter().format(record) + repr(vars(record))
            assert not markers_in(text), (record.name, text)

        exported = self.logs.get_finished_logs()
        for record in exported:
            assert not markers_in(record.to_json()), record.to_json()
        if exported:
            assert not markers_in(encode_logs(exported).SerializeToString())

        assert not markers_in(doctor.report())

        for server in self.servers:
            for request in server.requests:
                assert not markers_in(repr(request.headers)), request.headers
                if "baggage" in request.headers:
                    entries = dict(item.split("=", 1) for item in request.headers["baggage"].split(","))
                    assert set(entries) <= {"user.id", "department", "session.id"}, entries


def _without_content(span: ReadableSpan) -> ReadableSpan:
    """The span as searched: the documented content attributes taken out (checked apart, above)."""
    attributes = {k: v for k, v in (span.attributes or {}).items() if k not in names.CONTENT_ATTRIBUTES}
    return ReadableSpan(name=span.name, context=span.context, parent=span.parent, resource=span.resource,
                        attributes=attributes, events=span.events, links=span.links, kind=span.kind,
                        status=span.status, start_time=span.start_time, end_time=span.end_time,
                        instrumentation_scope=span.instrumentation_scope)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return build_local_tokenizer(tmp_path_factory.mktemp("privacy-tokenizer"))


@pytest.fixture(params=["unset", "false", "true"], ids=lambda v: f"capture-content-{v}")
def channels(request, monkeypatch, tmp_path, tokenizer_dir):
    """Instrumented as the agent does it (settings from OTEL_TOKENS_CONFIG), with every channel captured."""
    if request.param == "unset":
        monkeypatch.delenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", raising=False)
    else:
        monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", request.param)
    config = tmp_path / "otel-tokens.yaml"
    config.write_text(f'tokenizers:\n  "local-*": "{tokenizer_dir}"\nstream_include_usage: true\n')
    monkeypatch.setenv("OTEL_TOKENS_CONFIG", str(config))
    monkeypatch.setattr(safety, "_reported", set())  # every once-per-process log line fires again here

    resource = Resource.create({"service.name": "privacy-test"})
    span_exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
    log_exporter = InMemoryLogRecordExporter()
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(log_exporter))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the SDK's handler, deprecated but working
        otel_handler = LoggingHandler(level=logging.DEBUG, logger_provider=logger_provider)
    python_logs = LogRecords()

    # every logger at DEBUG, and the handlers also on loggers that do not propagate (transformers')
    root = logging.getLogger()
    loggers = [root, *(lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger))]
    levels = {lg: lg.level for lg in loggers}
    attached = [lg for lg in loggers if lg is root or not lg.propagate]
    for lg in loggers:
        if lg.level != logging.NOTSET or lg is root:
            lg.setLevel(logging.DEBUG)
    for lg in attached:
        lg.addHandler(python_logs)
        lg.addHandler(otel_handler)

    instrumentor = TokenUsageInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
    try:
        yield Channels(tracer_provider, meter_provider, span_exporter, reader, log_exporter, python_logs,
                       capture=request.param == "true")
    finally:
        instrumentor.uninstrument()
        for lg in attached:
            lg.removeHandler(python_logs)
            lg.removeHandler(otel_handler)
        for lg, level in levels.items():
            lg.setLevel(level)
        logger_provider.shutdown()


# --- transformers ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def local_lm(tokenizer_dir):
    """The byte-level BPE tokenizer (any text encodes) and a tiny GPT-2 sized to its vocabulary."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    tok.padding_side = "left"
    torch.manual_seed(0)
    config = GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=len(tok), n_positions=256,
                        bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    config.name_or_path = "tiny-local-gpt2"
    model = GPT2LMHeadModel(config).eval()
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return tok, model


def _forced_reply(tok, prompt_len: int):
    """A logits processor that makes the model write REPLY, then EOS; and the number of tokens that is."""
    reply = [*tok.encode(" " + REPLY, add_special_tokens=False), tok.eos_token_id]
    return forcing(prompt_len, reply), len(reply)


def test_transformers_generate_streamer_pipeline_and_errors(channels, local_lm):
    from transformers import LogitsProcessorList, pipeline
    from transformers.generation.streamers import BaseStreamer

    tok, model = local_lm
    batch = tok([PROMPT, f"{PROMPT_MARKER}?"], return_tensors="pt", padding=True)
    prompt_len = batch["input_ids"].shape[1]
    processor, reply_len = _forced_reply(tok, prompt_len)
    with usage_context(**{k.replace(".", "_"): v for k, v in ATTRIBUTION.items()}):
        out = model.generate(**batch, max_new_tokens=reply_len + 2, do_sample=False, logits_processor=processor)
    texts = tok.batch_decode(out, skip_special_tokens=True)
    assert all(PROMPT_MARKER in t and COMPLETION_MARKER in t for t in texts)  # the text was really there
    span = channels.spans.get_finished_spans()[-1]
    assert span.attributes[names.GEN_AI_USAGE_INPUT_TOKENS] == int(batch["attention_mask"].sum())
    assert span.attributes[names.GEN_AI_USAGE_OUTPUT_TOKENS] == 2 * reply_len

    class Collect(BaseStreamer):
        def __init__(self) -> None:
            self.ids: list[int] = []

        def put(self, value):
            self.ids.extend(value.flatten().tolist())

        def end(self):
            pass

    one = tok(PROMPT, return_tensors="pt")
    streamer = Collect()
    processor, reply_len = _forced_reply(tok, one["input_ids"].shape[1])
    model.generate(**one, max_new_tokens=reply_len, do_sample=False, logits_processor=processor, streamer=streamer)
    assert COMPLETION_MARKER in tok.decode(streamer.ids)

    pipe = pipeline("text-generation", model=model, tokenizer=tok, device="cpu")
    processor, reply_len = _forced_reply(tok, one["input_ids"].shape[1])
    result = pipe(PROMPT, max_new_tokens=reply_len, do_sample=False, logits_processor=processor)
    assert COMPLETION_MARKER in result[0]["generated_text"]

    class PromptEchoError(RuntimeError):
        pass

    error = PromptEchoError(f"cannot continue {PROMPT} {ERROR_MARKER}")

    class Raising(ForceTokens):
        def __call__(self, input_ids, scores):
            raise error

    with pytest.raises(PromptEchoError) as caught:
        model.generate(**one, max_new_tokens=3, logits_processor=LogitsProcessorList([Raising(0, [[1]])]))
    assert caught.value is error and ERROR_MARKER in str(caught.value)  # the caller gets it all
    failed = channels.spans.get_finished_spans()[-1]
    assert failed.attributes[names.ERROR_TYPE] == PromptEchoError.__qualname__
    assert failed.status.description == PromptEchoError.__qualname__
    assert not failed.events  # no exception event with the message
    assert len(channels.spans.get_finished_spans()) == 4
    assert not any(channels.content())  # generate sees token ids: no content, opted in or not
    channels.assert_clean()


# --- openai -----------------------------------------------------------------------------------------------------

MESSAGES = [{"role": "system", "content": f"Answer from the knowledge base. {CJK_MARKER}"},
            {"role": "user", "content": PROMPT, "name": "alice"}]


def _chat_calls(c: openai.OpenAI) -> None:
    c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    for _ in c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True):
        pass
    stream = c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True,
                                       stream_options={"include_usage": True})
    with stream:
        for _ in stream:
            pass
    with c.chat.completions.stream(model="gpt-4o-mini", messages=MESSAGES) as managed:
        for _ in managed:
            pass
def test_openai_every_call_shape_streamed_and_not(channels, tokenizer_dir):
    with OpenAIServer(REPLY, tokenizer_dir=tokenizer_dir) as server:
        channels.servers.append(server)
        c = openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0)
        with usage_context(user_id="alice", department="support", session_id="s-42", ticket="T-1"):
            _chat_calls(c)
            completion = c.completions.create(model="gpt-3.5-turbo-instruct", prompt=PROMPT)
            assert completion.choices[0].text == REPLY
            text = "".join(choice.text for chunk in c.completions.create(
                model="gpt-3.5-turbo-instruct", prompt=[PROMPT, PROMPT_MARKER], stream=True)
                for choice in chunk.choices if choice.index == 1)
            assert COMPLETION_MARKER in text
            c.embeddings.create(model="text-embedding-3-small", input=[PROMPT, CJK_MARKER])
            response = c.responses.create(model="gpt-4o-mini", input=PROMPT, instructions=f"Be brief {CJK_MARKER}")
            assert COMPLETION_MARKER in response.output_text
            for _ in c.responses.create(model="gpt-4o-mini", input=MESSAGES, stream=True):
                pass

            # no usage from the server: counted locally from the text (HF tokenizer, tiktoken) or estimated
            server.usage_mode = "never"
            c.chat.completions.create(model="local-qwen", messages=MESSAGES)
            for _ in c.chat.completions.create(model="local-qwen", messages=MESSAGES, stream=True):
                pass
            c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
            c.chat.completions.create(model="my-private-llm", messages=MESSAGES)
            for _ in c.completions.create(model="my-private-llm", prompt=PROMPT, stream=True):
                pass
            c.embeddings.create(model="my-private-embedder", input=PROMPT)

            async def async_calls() -> None:
                ac = openai.AsyncOpenAI(base_url=server.base_url, api_key="test", max_retries=0)
                await ac.chat.completions.create(model="local-qwen", messages=MESSAGES)
                async for _ in await ac.chat.completions.create(model="local-qwen", messages=MESSAGES, stream=True):
                    pass
                await ac.close()

            asyncio.run(async_calls())
    sources = {s.attributes.get(names.LLM_USAGE_SOURCE) for s in channels.spans.get_finished_spans()}
    assert sources == {"reported", "counted", "estimated"}  # every way of counting went through the text
    assert len(server.requests) == len(channels.spans.get_finished_spans()) == 17
    baggage = {r.headers.get("baggage") for r in server.requests}
    assert baggage == {"user.id=alice,department=support,session.id=s-42"}  # never content, nor extra keys
    if channels.capture:  # opted in: every chat and completion span carries its prompt and its reply
        spans = channels.spans.get_finished_spans()
        for span, content in zip(spans, channels.content(), strict=True):
            if span.attributes[names.GEN_AI_OPERATION_NAME] == names.OPERATION_EMBEDDINGS:
                assert not content
                continue
            assert PROMPT_MARKER in content[names.GEN_AI_INPUT_MESSAGES], span.name
            assert COMPLETION_MARKER in content[names.GEN_AI_OUTPUT_MESSAGES], span.name
        assert sum(CJK_MARKER in c.get(names.GEN_AI_SYSTEM_INSTRUCTIONS, "") for c in channels.content()) == 1
    channels.assert_clean()
def test_openai_errors_carry_the_type_only(channels, tokenizer_dir):
    def body(status: int) -> dict[str, Any]:
        return {"error": {"message": f"rejected {PROMPT} {ERROR_MARKER}", "type": "requests",
                          "param": None, "code": str(status)}}

    with OpenAIServer(REPLY, tokenizer_dir=tokenizer_dir) as server:
        channels.servers.append(server)
        c = openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0)
        with usage_context(user_id="bob", department="research"):
            server.fail_next(429, body=body(429))
            with pytest.raises(openai.RateLimitError) as caught:
                c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
            assert ERROR_MARKER in str(caught.value)  # the caller gets the server's message
            server.fail_next(400, body=body(400))
            with pytest.raises(openai.BadRequestError):
                c.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
            server.fail_next(500, body=body(500))
            with pytest.raises(openai.InternalServerError):
                c.responses.create(model="gpt-4o-mini", input=PROMPT)
            server.truncate_next(after_chunks=3)  # the stream breaks after part of the reply
            with pytest.raises(openai.APIError) as broken:  # the SDK's own class for a cut-off body
                for _ in c.chat.completions.create(model="local-qwen", messages=MESSAGES, stream=True):
                    pass
    error_types = ["RateLimitError", "BadRequestError", "InternalServerError", type(broken.value).__qualname__]
    spans = channels.spans.get_finished_spans()
    assert [s.attributes[names.ERROR_TYPE] for s in spans] == error_types
    assert [s.status.description for s in spans] == [s.attributes[names.ERROR_TYPE] for s in spans]
    assert all(not s.events for s in spans)
    (point,) = [p for p in channels.reader.get_metrics_data().resource_metrics[0].scope_metrics[0].metrics
                if p.name == names.METRIC_LLM_REQUESTS]
    assert {dp.attributes[names.ERROR_TYPE] for dp in point.data.data_points} == set(error_types)
    channels.assert_clean()


# --- control: the search is real ---------------------------------------------------------------------------------

def test_the_search_catches_a_marker_in_every_channel(channels):
    """Leak a marker into one channel at a time: each must be caught (so clean results above are meaningful)."""
    tracer = channels.tracer_provider.get_tracer("control")
    counter = channels.meter_provider.get_meter("control").create_counter("control.calls")
    counter.add(1, {"outcome": "ok"})

    def clean_span():
        channels.spans.clear()
        tracer.start_span("control").end()

    def caught() -> bool:
        try:
            channels.assert_clean()
        except AssertionError:
            return True
        return False

    clean_span()
    assert not caught()  # the baseline is clean

    from opentelemetry.trace import Link, Status, StatusCode

    leaks = [
        lambda: tracer.start_span(f"chat {PROMPT_MARKER}").end(),
        lambda: tracer.start_span("control", attributes={"gen_ai.prompt": PROMPT}).end(),
        lambda: tracer.start_span("control", links=[Link(tracer.start_span("x").get_span_context(),
                                                         {"text": REPLY})]).end(),
    ]
    for leak in leaks:
        leak()
        assert caught()
        clean_span()
    span = tracer.start_span("control")
    span.add_event("gen_ai.content.completion", {"gen_ai.completion": REPLY})
    span.end()
    assert caught()
    clean_span()
    span = tracer.start_span("control", attributes={names.ERROR_TYPE: "RuntimeError"})
    span.set_status(Status(StatusCode.ERROR, f"RuntimeError: {ERROR_MARKER}"))
    span.end()
    assert caught()
    clean_span()

    # transformers' loggers do not propagate to the root: captured anyway, in Python and in OTel logs
    logging.getLogger("transformers.generation.utils").debug("prompt was %s", CJK_MARKER)
    assert channels.python_logs.records and caught()
    channels.python_logs.records.clear()
    assert channels.logs.get_finished_logs() and caught()  # the OTel-exported copy alone is caught too
    channels.logs.clear()
    try:
        raise ValueError(ERROR_MARKER)
    except ValueError:
        logging.getLogger("some.library").debug("failed", exc_info=True)  # only in the traceback
    assert caught()
    channels.python_logs.records.clear()
    channels.logs.clear()
    assert not caught()

    counter.add(1, {"outcome": COMPLETION_MARKER})
    assert caught()  # and the metric attribute; last, since metric points cannot be taken back
