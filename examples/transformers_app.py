"""A small transformers app with no telemetry code but `usage_context`.

Run it under the OpenTelemetry agent to see its token usage:

    opentelemetry-instrument --traces_exporter console --metrics_exporter console \
        python examples/transformers_app.py

It builds a tiny GPT-2 from a config (random weights, nothing downloaded); a real app would use
`AutoModelForCausalLM.from_pretrained("Qwen/Qwen2.5-0.5B-Instruct")` the same way.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast, pipeline

from otel_tokens import usage_context


def tiny_model_and_tokenizer() -> tuple[GPT2LMHeadModel, PreTrainedTokenizerFast]:
    torch.manual_seed(0)
    words = ["<pad>", "<eos>", *(f"w{i}" for i in range(62))]
    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece()  # joins words with spaces
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")
    config = GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=len(words), n_positions=256,
                        eos_token_id=1, bos_token_id=1, pad_token_id=0)
    config.name_or_path = "tiny-gpt2-demo"
    return GPT2LMHeadModel(config).eval(), tokenizer


def main() -> None:
    model, tokenizer = tiny_model_and_tokenizer()
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer, device="cpu")
    requests = [("alice", "support", "w1 w2 w3 w4 w5", 8), ("bob", "research", "w7 w8", 16),
                ("alice", "support", "w9 w10 w11", 4)]
    for user, department, prompt, new_tokens in requests:
        with usage_context(user_id=user, department=department, session_id=f"{user}-session"):
            out = generator(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                            return_full_text=False)
        print(f"{user:6s} {department:9s} asked {len(prompt.split())} tokens, generated {out[0]['generated_text']!r}")


if __name__ == "__main__":
    main()
