"""transformers generate at its edges: every count is exact (by hand, or by a plain loop over the returned
tensor) or absent, never wrong; nothing of ours reaches the caller; and the caller gets exactly what the
uninstrumented generate returns (compared with the instrumentation suppressed)."""

from __future__ import annotations

import logging
import traceback

import pytest
import torch
from opentelemetry.instrumentation.utils import suppress_instrumentation
from transformers import GPT2LMHeadModel, LogitsProcessorList

from otel_tokens import names
from otel_tokens.integrations import generation_counts
from tests.support import tiny_models as tm
from tests.support.tiny_models import BOS, EOS, PAD, forcing

IN, OUT = names.GEN_AI_USAGE_INPUT_TOKENS, names.GEN_AI_USAGE_OUTPUT_TOKENS


def usage(telemetry) -> tuple[int | None, int | None]:
    attributes = telemetry.span().attributes
    return attributes.get(IN), attributes.get(OUT)


def plain(telemetry, call):
    """The same call with the instrumentation suppressed: what the caller would get without us."""
    before = len(telemetry.spans())
    with suppress_instrumentation():
        result = call()
    assert len(telemetry.spans()) == before  # suppressed means not recorded
    return result


def loop_count(sequences: torch.Tensor, prompt_len: int, eos: tuple[int, ...] = (EOS,)) -> int:
    """Ground truth: per returned row, the tokens after the prompt up to and including the first EOS."""
    total = 0
    for row in sequences[:, prompt_len:].tolist():
        ends = [row.index(e) + 1 for e in eos if e in row]
        total += min(ends) if ends else len(row)
    return total


def requests(telemetry) -> list:
    return telemetry.metrics()[names.METRIC_LLM_REQUESTS]


def assert_error_span(telemetry, error_type: str) -> None:
    span = telemetry.span()
    assert span.attributes[names.ERROR_TYPE] == error_type
    assert span.status.status_code.name == "ERROR"
    assert span.status.description == error_type  # the type only, never the message
    assert IN not in span.attributes and OUT not in span.attributes  # nothing counted, nothing guessed
    (point,) = requests(telemetry)
    assert point.value == 1 and point.attributes[names.ERROR_TYPE] == error_type


def raised_by(call) -> BaseException:
    try:
        call()
    except Exception as exc:
        return exc
    raise AssertionError("expected an exception")


# --- empty prompts ------------------------------------------------------------------------------------------

def test_zero_length_input_ids_error_passes_through_unchanged(telemetry):
    """transformers 5.23 cannot generate from a (1, 0) prompt: its own IndexError reaches the caller, raised
    from transformers' code (not ours), with the same message as uninstrumented; the span records the type."""
    model = tm.gpt2(pad_token_id=PAD)
    ids = torch.zeros((1, 0), dtype=torch.long)

    def call():
        return model.generate(ids, max_new_tokens=3, do_sample=False)

    expected = plain(telemetry, lambda: raised_by(call))
    error = raised_by(call)
    assert (type(error), str(error)) == (type(expected), str(expected))
    innermost = traceback.extract_tb(error.__traceback__)[-1]
    assert "otel_tokens" not in innermost.filename
    assert_error_span(telemetry, type(error).__qualname__)


def test_generate_without_inputs_starts_from_bos_and_counts_it_as_the_prompt(telemetry):
    """No inputs at all: generate starts the row from one BOS, which the model reads. It comes back as the
    first column; it is the prompt (1 input token), not generated output."""
    model = tm.gpt2(pad_token_id=PAD)

    def call():
        return model.generate(max_new_tokens=3, do_sample=False, logits_processor=forcing(1, [11, 12, 13]))

    out = call()
    assert out.tolist() == [[BOS, 11, 12, 13]]
    assert usage(telemetry) == (1, 3)
    assert torch.equal(out, plain(telemetry, call))


def test_generate_without_inputs_with_several_return_sequences_counts_the_bos_once(telemetry):
    model = tm.gpt2(pad_token_id=PAD)

    def call():
        return model.generate(max_new_tokens=3, do_sample=True, num_return_sequences=2,
                              logits_processor=forcing(1, [11, EOS], [12, 13, 14]))

    out = call()
    assert out.tolist() == [[BOS, 11, EOS, PAD], [BOS, 12, 13, 14]]
    assert usage(telemetry) == (1, loop_count(out, 1)) == (1, 2 + 3)
    assert torch.equal(out, plain(telemetry, call))


def test_pipeline_with_an_empty_prompt(telemetry):
    """The text-generation pipeline turns an empty prompt into generate(input_ids=None): BOS-initialised."""
    from transformers import pipeline

    pipe = pipeline("text-generation", model=tm.gpt2(pad_token_id=PAD), tokenizer=tm.tokenizer(), device="cpu")

    def call():
        return pipe("", max_new_tokens=3, do_sample=False, logits_processor=forcing(1, [11, 12, 13]))

    result = call()
    assert result == [{"generated_text": "w11 w12 w13"}]
    assert usage(telemetry) == (1, 3)
    assert plain(telemetry, call) == result


def test_max_new_tokens_zero_is_rejected_by_transformers_and_recorded_as_an_error(telemetry):
    model = tm.gpt2(pad_token_id=PAD)

    def call():
        return model.generate(torch.tensor([[5, 6]]), max_new_tokens=0, do_sample=False)

    expected = plain(telemetry, lambda: raised_by(call))
    error = raised_by(call)
    assert isinstance(error, ValueError) and "max_new_tokens" in str(error)
    assert (type(error), str(error)) == (type(expected), str(expected))
    assert "otel_tokens" not in traceback.extract_tb(error.__traceback__)[-1].filename
    assert_error_span(telemetry, "ValueError")


# --- speculative decoding -----------------------------------------------------------------------------------

def test_assisted_generation_records_only_the_main_call(telemetry):
    model = tm.gpt2(pad_token_id=PAD)
    assistant = tm.gpt2(pad_token_id=PAD)  # same vocab
    assistant.config.name_or_path = "tiny-assistant"
    inner_calls = []
    bound = assistant.generate  # the instrumented generate, bound to the assistant

    def counting_generate(*args, **kwargs):
        inner_calls.append(1)
        return bound(*args, **kwargs)

    assistant.generate = counting_generate  # candidate generators call assistant_model.generate(...)
    ids = torch.tensor([[5, 6, 7], [8, 9, 10]])
    mask = torch.ones_like(ids)

    def call():
        return model.generate(ids[:1], attention_mask=mask[:1], assistant_model=assistant, max_new_tokens=6,
                              do_sample=False, logits_processor=forcing(3, [11, 12, 13, EOS]))

    out = call()
    assert inner_calls, "the assistant's own generate ran inside the main call"
    assert out.tolist() == [[5, 6, 7, 11, 12, 13, EOS]]
    span = telemetry.span()  # exactly one: the assistant's inner generate is part of the main call
    assert span.attributes[names.GEN_AI_REQUEST_MODEL] == "tiny-gpt2"
    assert usage(telemetry) == (3, loop_count(out, 3)) == (3, 4)
    (point,) = requests(telemetry)
    assert point.value == 1
    assert telemetry.token_totals(names.GEN_AI_TOKEN_TYPE) == {("input",): 3, ("output",): 4}
    assert torch.equal(out, plain(telemetry, call))

    # the nesting flag does not leak: the assistant called on its own afterwards is a call of its own
    telemetry.spans_exporter.clear()
    assistant.generate(ids, attention_mask=mask, max_new_tokens=2, do_sample=False,
                       logits_processor=forcing(3, [11, 12]))
    assert telemetry.span().attributes[names.GEN_AI_REQUEST_MODEL] == "tiny-assistant"
    assert usage(telemetry) == (6, 4)


def test_prompt_lookup_decoding(telemetry):
    model = tm.gpt2(pad_token_id=PAD)
    ids = torch.tensor([[5, 6, 7, 5, 6]])

    def call():
        return model.generate(ids, attention_mask=torch.ones_like(ids), prompt_lookup_num_tokens=2,
                              max_new_tokens=6, do_sample=False, logits_processor=forcing(5, [7, 5, 6, EOS]))

    out = call()
    assert out.tolist() == [[5, 6, 7, 5, 6, 7, 5, 6, EOS]]
    assert usage(telemetry) == (5, loop_count(out, 5)) == (5, 4)
    assert torch.equal(out, plain(telemetry, call))


# --- outputs the counter cannot or must not read directly ---------------------------------------------------

def test_meta_device_output_leaves_the_output_count_absent(telemetry, caplog):
    """A `meta` tensor has no data: the output count is absent (never a guess), the input count (from the
    caller's CPU ids) stays exact, nothing is logged as an internal error, the caller gets the same object."""
    model = tm.gpt2(pad_token_id=PAD)
    returned = []

    def on_meta(model, input_ids, **kwargs):  # generate's decoding step, as a device-less model would end
        out = torch.empty((input_ids.shape[0], input_ids.shape[1] + 3), dtype=torch.long, device="meta")
        returned.append(out)
        return out

    caplog.set_level(logging.DEBUG, logger="otel_tokens")
    ids = torch.tensor([[5, 6, 7], [8, 9, 10]])
    out = model.generate(ids, max_new_tokens=3, custom_generate=on_meta)
    assert out is returned[-1] and out.device.type == "meta"
    assert usage(telemetry) == (6, None)
    assert telemetry.span().attributes[names.LLM_USAGE_SOURCE] == "counted"
    assert not [r for r in caplog.records if "internal error" in r.getMessage()]
    (point,) = requests(telemetry)
    assert names.ERROR_TYPE not in point.attributes


class _FakeCuda:
    type = "cuda"

    def __str__(self) -> str:
        return "cuda:0"


class _Offloaded(torch.Tensor):
    """A CPU tensor that says it lives on an accelerator: what `_is_cpu` sees of an offloaded output."""

    @property
    def device(self):  # type: ignore[override]
        return _FakeCuda()
def test_offloaded_output_is_counted_on_device_with_one_transfer(telemetry, monkeypatch):
    model = tm.gpt2(pad_token_id=PAD)
    rows = [[5, 6, 7, 11, EOS, PAD, PAD], [8, 9, 10, 12, 13, 14, EOS], [5, 5, 5, 15, 16, 17, 18]]
    returned = []

    def offloaded(model, input_ids, **kwargs):
        out = torch.tensor(rows).as_subclass(_Offloaded)
        returned.append(out)
        return out

    stacks = []
    real_stack = torch.stack

    def counting_stack(tensors, *args, **kwargs):
        stacks.append(len(tensors))
        return real_stack(tensors, *args, **kwargs)

    monkeypatch.setattr(torch, "stack", counting_stack)
    ids = torch.tensor([[5, 6, 7], [8, 9, 10], [5, 5, 5]])
    out = model.generate(ids, max_new_tokens=4, custom_generate=offloaded)
    assert out is returned[-1] and out.device.type == "cuda"
    assert usage(telemetry) == (9, loop_count(torch.tensor(rows), 3)) == (9, 2 + 4 + 4)
    assert stacks == [1]  # the device count came over in one stacked transfer (the CPU input count needs none)


def test_foreign_tensor_like_output_is_never_counted_wrong(telemetry):
    """An object that is not a torch tensor but claims an accelerator device: counted exactly, or absent."""
    model = tm.gpt2(pad_token_id=PAD)

    class Foreign:
        device = _FakeCuda()

        def __init__(self, data: torch.Tensor) -> None:
            self.data = data
            self.shape = data.shape

        def __getitem__(self, key):
            return self.data[key]

    foreign = Foreign(torch.tensor([[5, 6, 7, 11, EOS, PAD]]))
    out = model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=3, custom_generate=lambda *a, **k: foreign)
    assert out is foreign
    assert usage(telemetry) == (3, 2)  # its slices are torch tensors: counted with torch ops, exactly


# --- user subclasses ------------------------------------------------------------------------------------------

def test_subclass_overriding_generate_without_super_is_not_recorded(telemetry):
    """Documented limit: a generate that never reaches GenerationMixin.generate runs no model generation we
    can see, so it is not recorded (no span, no metrics); its result is untouched."""

    class Canned(GPT2LMHeadModel):
        def generate(self, input_ids, **kwargs):
            return torch.cat([input_ids, torch.tensor([[11, EOS]])], dim=1)

    model = Canned(tm.gpt2(pad_token_id=PAD).config).eval()
    out = model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=2)
    assert out.tolist() == [[5, 6, 7, 11, EOS]]
    assert telemetry.spans() == []
    assert names.METRIC_LLM_REQUESTS not in telemetry.metrics()


def test_subclass_calling_super_with_modified_args_is_recorded_once_as_the_base_saw_it(telemetry):
    """The override itself is not wrapped; its super().generate is, once: counts are of the prompt and the
    limits the base generate was given (here a BOS prepended and max_new_tokens capped at 2)."""

    class WithBos(GPT2LMHeadModel):
        def generate(self, input_ids, **kwargs):
            kwargs["max_new_tokens"] = 2
            kwargs.pop("attention_mask", None)
            bos = torch.full((input_ids.shape[0], 1), BOS, dtype=input_ids.dtype)
            return super().generate(torch.cat([bos, input_ids], dim=1), **kwargs)

    base = tm.gpt2(pad_token_id=PAD)
    model = WithBos(base.config)
    model.load_state_dict(base.state_dict())
    model.generation_config = base.generation_config
    model.eval()
    ids = torch.tensor([[5, 6, 7]])

    def call():
        return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=9, do_sample=False,
                              logits_processor=forcing(4, [11, 12, 13]))

    out = call()
    assert out.tolist() == [[BOS, 5, 6, 7, 11, 12]]
    assert usage(telemetry) == (4, 2)  # one span, with the base's view: 4 prompt tokens, 2 generated
    (point,) = requests(telemetry)
    assert point.value == 1
    assert torch.equal(out, plain(telemetry, call))


# --- output shapes and dtypes ---------------------------------------------------------------------------------

@pytest.fixture(params=["lists", "numpy", "torch"])
def counting_path(request, monkeypatch):
    """Python lists (small CPU outputs), numpy arrays (large CPU outputs), torch ops (accelerator outputs)."""
    if request.param != "lists":
        monkeypatch.setattr(generation_counts, "_SMALL", 0)
    if request.param == "torch":
        monkeypatch.setattr(generation_counts, "_array", lambda tensor: tensor)
    return request.param


def test_return_dict_with_scores_and_logits(telemetry, counting_path):
    model = tm.gpt2(pad_token_id=PAD)
    ids = torch.tensor([[PAD, 5, 6], [7, 8, 9]])
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])

    def call():
        return model.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False,
                              return_dict_in_generate=True, output_scores=True, output_logits=True,
                              logits_processor=forcing(3, [11, EOS], [12, 13, 14, 15]))

    out = call()
    assert out.sequences[:, 3:].tolist() == [[11, EOS, PAD, PAD], [12, 13, 14, 15]]
    assert usage(telemetry) == (5, loop_count(out.sequences, 3)) == (5, 2 + 4)
    expected = plain(telemetry, call)
    assert type(out) is type(expected)
    assert torch.equal(out.sequences, expected.sequences)
    assert len(out.scores) == len(expected.scores) == 4
    assert all(torch.equal(a, b) for a, b in zip(out.scores, expected.scores, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(out.logits, expected.logits, strict=True))


def test_batch_where_every_row_finishes_before_max_new_tokens(telemetry, counting_path):
    model = tm.gpt2(pad_token_id=PAD)
    ids = torch.tensor([[5, 6, 7], [PAD, 8, 9], [PAD, PAD, 10]])
    mask = (ids != PAD).long()

    def call():
        return model.generate(ids, attention_mask=mask, max_new_tokens=20, do_sample=False,
                              logits_processor=forcing(3, [EOS], [11, EOS], [12, 13, EOS]))

    out = call()
    assert out.shape == (3, 3 + 3)  # generation stopped when the last row ended, far before 20
    assert out[:, 3:].tolist() == [[EOS, PAD, PAD], [11, EOS, PAD], [12, 13, EOS]]
    assert usage(telemetry) == (3 + 2 + 1, loop_count(out, 3)) == (6, 1 + 2 + 3)
    assert torch.equal(out, plain(telemetry, call))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_half_precision_models(telemetry, dtype):
    model = tm.gpt2(pad_token_id=PAD).to(dtype)
    ids = torch.tensor([[5, 6, 7], [PAD, 8, 9]])
    mask = (ids != PAD).long()

    def call():
        return model.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False,
                              logits_processor=LogitsProcessorList(forcing(3, [11, EOS], [12, 13, 14])))

    out = call()
    assert out[:, 3:].tolist() == [[11, EOS, PAD, PAD], [12, 13, 14, 10]]
    assert usage(telemetry) == (5, loop_count(out, 3)) == (5, 2 + 4)
    assert torch.equal(out, plain(telemetry, call))

    embeds = model.get_input_embeddings()(ids)  # half-precision embeddings as the prompt
    telemetry.spans_exporter.clear()
    new = model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=3, do_sample=False,
                         logits_processor=forcing(0, [11, 12, EOS]))
    assert embeds.dtype == dtype
    assert usage(telemetry) == (5, loop_count(new, 0)) == (5, 6)
