"""Exact token counts of transformers generate, against hand-computed ground truth.

Each case forces the generated tokens with a logits processor, so where every EOS falls, and so
every expected count, is fixed by the test, not by our counting code.
"""

from __future__ import annotations

import pytest
import torch

from otel_tokens import names
from tests.support import tiny_models as tm
from tests.support.tiny_models import EOS, EOS2, FILLER, PAD, forcing

A = names.GEN_AI_USAGE_INPUT_TOKENS


@pytest.fixture(autouse=True, params=["lists", "numpy", "torch"])
def counting_path(request, monkeypatch):
    """Run every case through each counting path: Python lists (small CPU outputs), numpy arrays
    (large CPU outputs) and torch ops (what accelerator tensors use, ending in one transfer)."""
    from otel_tokens.integrations import generation_counts

    if request.param != "lists":
        monkeypatch.setattr(generation_counts, "_SMALL", 0)
    if request.param == "torch":
        monkeypatch.setattr(generation_counts, "_array", lambda tensor: tensor)
    return request.param
B = names.GEN_AI_USAGE_OUTPUT_TOKENS


def usage(telemetry) -> tuple[int, int]:
    span = telemetry.span()
    return span.attributes[A], span.attributes[B]


def test_single_prompt_span_and_metrics(telemetry):
    model = tm.gpt2()
    ids = torch.tensor([[5, 6, 7, 8]])
    out = model.generate(ids, max_new_tokens=5, do_sample=False, logits_processor=forcing(4, [11, 12]))
    assert out.shape == (1, 9)
    span = telemetry.span()
    assert span.name == "text_completion tiny-gpt2"
    assert span.kind.name == "INTERNAL"
    assert span.attributes[names.GEN_AI_OPERATION_NAME] == "text_completion"
    assert span.attributes[names.GEN_AI_PROVIDER_NAME] == "transformers"
    assert span.attributes[names.GEN_AI_REQUEST_MODEL] == "tiny-gpt2"
    assert span.attributes[names.GEN_AI_RESPONSE_MODEL] == "tiny-gpt2"
    assert span.attributes[names.LLM_USAGE_SOURCE] == "counted"
    assert usage(telemetry) == (4, 5)
    metrics = telemetry.metrics()
    hist = {p.attributes[names.GEN_AI_TOKEN_TYPE]: p for p in metrics[names.METRIC_TOKEN_USAGE]}
    assert (hist["input"].count, hist["input"].sum) == (1, 4)
    assert (hist["output"].count, hist["output"].sum) == (1, 5)
    assert tuple(hist["input"].explicit_bounds) == names.TOKEN_USAGE_BUCKETS
    (duration,) = metrics[names.METRIC_OPERATION_DURATION]
    assert duration.count == 1 and tuple(duration.explicit_bounds) == names.DURATION_BUCKETS
    assert "user.id" not in duration.attributes  # semconv histograms stay low-cardinality
    assert telemetry.token_totals(names.GEN_AI_TOKEN_TYPE, names.LLM_USAGE_SOURCE) == {
        ("input", "counted"): 4, ("output", "counted"): 5}
    (requests,) = metrics[names.METRIC_LLM_REQUESTS]
    assert requests.value == 1 and names.ERROR_TYPE not in requests.attributes
    assert names.METRIC_TIME_TO_FIRST_CHUNK not in metrics  # not a stream


def test_left_padded_batch_stops_at_eos(telemetry):
    model = tm.gpt2(pad_token_id=PAD)
    ids = torch.tensor([[PAD, PAD, 5, 6, 7], [5, 6, 7, 8, 9]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    # row 0: 11, 12, EOS (3 tokens, then padding); row 1: never EOS, 6 tokens
    out = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False,
                         logits_processor=forcing(5, [11, 12, EOS], [13, 14]))
    assert out[0, 5:].tolist() == [11, 12, EOS, PAD, PAD, PAD]
    assert usage(telemetry) == (3 + 5, 3 + 6)


def test_pad_equal_to_eos_counts_first_eos_only(telemetry):
    model = tm.qwen2()  # pad == eos, as Qwen ships
    ids = torch.tensor([[5, 6], [7, 8]])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False,
                         logits_processor=forcing(2, [EOS], [11, 12, 13, 14, EOS]))
    assert out[0, 2:].tolist() == [EOS, EOS, EOS, EOS, EOS]
    assert usage(telemetry) == (4, 1 + 5)
    assert telemetry.span().attributes[names.GEN_AI_REQUEST_MODEL] == "Qwen/tiny-qwen2"


def test_right_padding_uses_attention_mask(telemetry):
    model = tm.gpt2(pad_token_id=PAD)
    ids = torch.tensor([[5, 6, 7, PAD], [5, 6, 7, 8]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    model.generate(ids, attention_mask=mask, max_new_tokens=2, do_sample=False,
                   logits_processor=forcing(4, [11, 12]))
    assert usage(telemetry) == (7, 4)


def test_no_attention_mask_excludes_pad_ids(telemetry):
    model = tm.gpt2(pad_token_id=PAD)
    ids = torch.tensor([[PAD, 5, 6], [7, 8, 9]])
    model.generate(ids, max_new_tokens=3, do_sample=False, logits_processor=forcing(3, [11, EOS], [12]))
    assert usage(telemetry) == (5, 2 + 3)


def test_multiple_eos_ids_and_local_path_name(telemetry):
    model = tm.llama()  # eos = [EOS, EOS2]
    ids = torch.tensor([[5, 6, 7], [8, 9, 10]])
    model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                   logits_processor=forcing(3, [11, EOS2], [12, 13, EOS, 14]))
    assert usage(telemetry) == (6, 2 + 3)
    span = telemetry.span()
    assert span.attributes[names.GEN_AI_REQUEST_MODEL] == "tiny-llama-chat"
    assert span.name == "text_completion tiny-llama-chat"


def test_num_return_sequences_counts_each_sequence_and_the_prompt_once(telemetry):
    model = tm.gpt2(pad_token_id=PAD)
    ids = torch.tensor([[5, 6, 7, 8]])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, num_return_sequences=3,
                         max_new_tokens=4, logits_processor=forcing(4, [11, EOS], [12, 13, 14, 15], [EOS]))
    assert out.shape[0] == 3
    assert usage(telemetry) == (4, 2 + 4 + 1)


def test_beam_search_with_dict_output(telemetry):
    model = tm.gpt2(pad_token_id=PAD)
    ids = torch.tensor([[5, 6, 7], [PAD, 8, 9]])
    mask = torch.tensor([[1, 1, 1], [0, 1, 1]])
    out = model.generate(ids, attention_mask=mask, num_beams=2, num_return_sequences=2, max_new_tokens=4,
                         do_sample=False, return_dict_in_generate=True, output_scores=True,
                         logits_processor=forcing(3, [11, 12, EOS]))
    sequences = out.sequences
    assert sequences.shape[0] == 4
    # ground truth by a plain loop over the returned rows: up to and including the first EOS
    expected_output = 0
    for row in sequences[:, 3:].tolist():
        expected_output += row.index(EOS) + 1 if EOS in row else len([t for t in row if t != PAD])
    assert expected_output == 4 * 3  # every beam was forced to 11, 12, EOS
    assert usage(telemetry) == (5, expected_output)


def test_encoder_decoder_counts_encoder_input_and_decoder_output(telemetry):
    model = tm.t5()
    ids = torch.tensor([[5, 6, 7, 8, EOS], [9, 10, EOS, PAD, PAD]])
    mask = (ids != PAD).long()
    out = model.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False,
                         logits_processor=forcing(1, [11, 12, EOS], [13, 14, 15, 16, 17]))
    assert out[:, 0].tolist() == [PAD, PAD]  # decoder start token, not generated
    assert out[0, 1:].tolist() == [11, 12, EOS, PAD, PAD]
    assert usage(telemetry) == (5 + 3, 3 + 5)
    assert telemetry.span().attributes[names.GEN_AI_REQUEST_MODEL] == "tiny-t5"


def test_inputs_embeds_without_input_ids(telemetry):
    model = tm.gpt2(pad_token_id=PAD)
    embeds = model.get_input_embeddings()(torch.tensor([[5, 6, 7], [8, 9, 10]]))
    out = model.generate(inputs_embeds=embeds, max_new_tokens=4, do_sample=False,
                         logits_processor=forcing(0, [11, EOS], [12, 13, 14, 15]))
    assert out.shape == (2, 4)  # only the new tokens come back
    assert usage(telemetry) == (6, 2 + 4)


def test_generate_with_dict_inputs_as_pipelines_call_it(telemetry):
    model = tm.gpt2(pad_token_id=PAD)
    tok = tm.tokenizer()
    tok.padding_side = "left"
    batch = tok(["w5 w6 w7", "w8 w9"], return_tensors="pt", padding=True)
    model.generate(**batch, max_new_tokens=3, do_sample=False, logits_processor=forcing(3, [11, 12, 13]))
    assert usage(telemetry) == (5, 6)


def test_text_generation_pipeline(telemetry):
    from transformers import pipeline

    model = tm.gpt2(pad_token_id=PAD)
    pipe = pipeline("text-generation", model=model, tokenizer=tm.tokenizer(), device="cpu")
    result = pipe("w5 w6 w7 w8", max_new_tokens=3, do_sample=False, logits_processor=forcing(4, [11, 12, 13]))
    assert result[0]["generated_text"].replace(" ", "") == "w5w6w7w8w11w12w13"
    assert usage(telemetry) == (4, 3)


def test_exception_inside_generate_is_recorded_and_reraised_unchanged(telemetry):
    class BoomError(RuntimeError):
        pass

    error = BoomError("generation failed")

    class Raising(tm.ForceTokens):
        def __call__(self, input_ids, scores):
            raise error

    from transformers import LogitsProcessorList

    model = tm.gpt2()
    with pytest.raises(BoomError) as caught:
        model.generate(torch.tensor([[5, 6]]), max_new_tokens=3,
                       logits_processor=LogitsProcessorList([Raising(2, [[1]])]))
    assert caught.value is error
    span = telemetry.span()
    assert span.attributes[names.ERROR_TYPE] == BoomError.__qualname__
    assert BoomError.__qualname__.endswith("<locals>.BoomError")
    assert span.status.status_code.name == "ERROR"
    assert "generation failed" not in str(span.status.description)
    (requests,) = telemetry.metrics()[names.METRIC_LLM_REQUESTS]
    assert requests.value == 1 and requests.attributes[names.ERROR_TYPE] == span.attributes[names.ERROR_TYPE]
    assert names.METRIC_LLM_TOKEN_USAGE not in telemetry.metrics()


def test_nested_generate_is_recorded_once(telemetry):
    """A subclass whose generate calls super().generate, as many model wrappers do."""
    model = tm.gpt2()

    class Wrapped(type(model)):
        def generate(self, *args, **kwargs):
            return super().generate(*args, **kwargs)

    model.__class__ = Wrapped
    model.generate(torch.tensor([[5, 6]]), max_new_tokens=2, logits_processor=forcing(2, [11, 12]))
    assert len(telemetry.spans()) == 1
    assert usage(telemetry) == (2, 2)


def test_streamers_record_time_to_first_chunk(telemetry):
    from threading import Thread

    from transformers import TextIteratorStreamer, TextStreamer

    from otel_tokens import usage_context

    model = tm.gpt2(pad_token_id=PAD)
    tok = tm.tokenizer()
    ids = torch.tensor([[5, 6, 7]])
    model.generate(ids, max_new_tokens=3, streamer=TextStreamer(tok), logits_processor=forcing(3, [11, 12, 13]))

    streamer = TextIteratorStreamer(tok, skip_prompt=True)
    with usage_context(user_id="streaming-user"):
        thread = Thread(target=model.generate, kwargs=dict(
            inputs=ids, max_new_tokens=4, streamer=streamer, logits_processor=forcing(3, [14, 15, EOS])))
        thread.start()
    text = "".join(streamer)
    thread.join()
    assert text.replace(" ", "") == "w14w15w2"  # w2 is the EOS
    spans = telemetry.spans()
    assert [(s.attributes[A], s.attributes[B]) for s in spans] == [(3, 3), (3, 3)]
    assert spans[1].attributes[names.USER_ID] == "streaming-user"  # thread started inside the context
    (ttfc,) = telemetry.metrics()[names.METRIC_TIME_TO_FIRST_CHUNK]
    assert ttfc.count == 2 and 0 < ttfc.sum
    assert telemetry.token_totals(names.USER_ID) == {(names.UNATTRIBUTED,): 6, ("streaming-user",): 6}


def test_output_without_eos_or_pad_counts_every_new_token(telemetry):
    model = tm.gpt2()
    model.generation_config.eos_token_id = None
    model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=4, logits_processor=forcing(3, [EOS, FILLER]))
    assert usage(telemetry) == (3, 4)


def test_a_streamer_thread_s_generate_span_is_a_child_of_the_request_span():
    """A FastAPI app streaming through TextIteratorStreamer in a Thread: 30 of 30 generate spans were roots.
    The trace follows a thread started inside a span; a thread started outside any span stays a root, and a
    pool task gets its submitter's trace (not the one its reused worker saw first)."""
    from concurrent.futures import ThreadPoolExecutor
    from threading import Thread

    from opentelemetry import trace
    from transformers import TextIteratorStreamer

    from otel_tokens import TokenUsageInstrumentor
    from tests.support.telemetry import make_telemetry

    telemetry, tracer_provider, meter_provider = make_telemetry()
    instrumentor = TokenUsageInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
    model, tok = tm.gpt2(pad_token_id=PAD), tm.tokenizer()
    ids = torch.tensor([[5, 6, 7]])
    tracer = tracer_provider.get_tracer("test")  # the app's own request span, on the same provider

    def stream() -> None:
        streamer = TextIteratorStreamer(tok, skip_prompt=True)
        thread = Thread(target=model.generate, kwargs=dict(
            inputs=ids, max_new_tokens=2, streamer=streamer, logits_processor=forcing(3, [14, 15])))
        thread.start()
        "".join(streamer)
        thread.join()

    try:
        with tracer.start_as_current_span("POST /chat") as request:
            stream()
        stream()  # no request span: a root
        pool = ThreadPoolExecutor(max_workers=1)
        with tracer.start_as_current_span("POST /other") as other:
            pool.submit(model.generate, ids, max_new_tokens=1, logits_processor=forcing(3, [14])).result()
        pool.submit(model.generate, ids, max_new_tokens=1, logits_processor=forcing(3, [14])).result()  # reused
        pool.shutdown()
    finally:
        instrumentor.uninstrument()
    generates = [s for s in telemetry.spans() if s.name.startswith("text_completion")]
    parents = [s.parent.span_id if s.parent else None for s in generates]
    assert parents == [request.get_span_context().span_id, None, other.get_span_context().span_id, None]
    assert generates[0].context.trace_id == request.get_span_context().trace_id
    assert trace.get_current_span() is trace.INVALID_SPAN

