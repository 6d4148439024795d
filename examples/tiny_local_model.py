"""A tiny local chat model, saved like a real one so apps load it with `from_pretrained(path)`.

Real deployments load e.g. Qwen2.5-7B-Instruct from a local folder; this builds a 2-layer GPT-2 with
random weights and a byte-level BPE tokenizer (trained here, in a second, on a few lines of English
and Chinese) with a ChatML template, and saves both. Nothing is downloaded. Its replies are noise;
its token counts are real.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_PATH = Path(__file__).resolve().parents[1] / ".demo" / "tiny-chat-model"
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
_CORPUS = [
    "How do I reset my password?", "Where is the refund policy?", "Summarise this support ticket.",
    "The knowledge base answers questions about our products.", "Please translate the manual.",
    "怎么重置密码？", "退款政策在哪里？", "请总结这个工单。", "知识库回答关于产品的问题。", "请翻译这份手册。",
]


def ensure(path: Path = DEFAULT_PATH) -> Path:
    """Build and save the model and tokenizer at `path` once; return the path."""
    if (path / "config.json").exists() and (path / "tokenizer.json").exists():
        return path
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe.train_from_iterator(_CORPUS * 4, trainer=trainers.BpeTrainer(
        vocab_size=600, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        chat_template=CHAT_TEMPLATE)
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=512, vocab_size=len(tokenizer),
                        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    model = GPT2LMHeadModel(config)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


if __name__ == "__main__":
    print(ensure())
