"""Tiny transformers models built from configs (no weight download) and a logits processor
that forces a token schedule, so every expected count is known by hand."""

from __future__ import annotations

import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
)

VOCAB = 64
PAD, BOS, EOS, EOS2 = 0, 1, 2, 3
FILLER = 10  # what forced rows emit after their schedule runs out


def _seeded() -> None:
    torch.manual_seed(0)


def gpt2(pad_token_id: int | None = None) -> GPT2LMHeadModel:
    _seeded()
    config = GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=VOCAB, n_positions=128,
                        bos_token_id=BOS, eos_token_id=EOS, pad_token_id=pad_token_id)
    config.name_or_path = "tiny-gpt2"
    model = GPT2LMHeadModel(config).eval()
    model.generation_config.pad_token_id = pad_token_id
    model.generation_config.eos_token_id = EOS
    return model


def llama() -> LlamaForCausalLM:
    _seeded()
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                         bos_token_id=BOS, eos_token_id=[EOS, EOS2], pad_token_id=PAD)
    config.name_or_path = "/models/tiny-llama-chat/"  # a local path: reported as its last component
    model = LlamaForCausalLM(config).eval()
    model.generation_config.eos_token_id = [EOS, EOS2]
    model.generation_config.pad_token_id = PAD
    return model


def qwen2() -> Qwen2ForCausalLM:
    _seeded()
    config = Qwen2Config(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                         bos_token_id=BOS, eos_token_id=EOS, pad_token_id=EOS)
    config.name_or_path = "Qwen/tiny-qwen2"
    model = Qwen2ForCausalLM(config).eval()
    model.generation_config.eos_token_id = EOS
    model.generation_config.pad_token_id = EOS  # Qwen ships pad == eos
    return model


def t5() -> T5ForConditionalGeneration:
    _seeded()
    config = T5Config(vocab_size=VOCAB, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_decoder_layers=1,
                      num_heads=2, pad_token_id=PAD, eos_token_id=EOS, decoder_start_token_id=PAD)
    config.name_or_path = "tiny-t5"
    model = T5ForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = EOS
    model.generation_config.pad_token_id = PAD
    model.generation_config.decoder_start_token_id = PAD
    return model


def tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer over `w0`..`w63`: one word, one token."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="w4"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="w0", bos_token="w1", eos_token="w2",
                                   unk_token="w4")


class ForceTokens(LogitsProcessor):
    """Row r emits schedules[r % len(schedules)][step], then FILLER: outputs are known in advance."""

    def __init__(self, prompt_len: int, schedules: list[list[int]]) -> None:
        self.prompt_len = prompt_len
        self.schedules = schedules

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_len
        forced = torch.full_like(scores, float("-inf"))
        for row in range(scores.shape[0]):
            schedule = self.schedules[row % len(self.schedules)]
            forced[row, schedule[step] if step < len(schedule) else FILLER] = 0.0
        return forced


def forcing(prompt_len: int, *schedules: list[int]) -> LogitsProcessorList:
    return LogitsProcessorList([ForceTokens(prompt_len, list(schedules))])
