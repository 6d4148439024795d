"""A small ChatML tokenizer trained in-process, so tests of self-hosted (`local-`) models count with a real
HuggingFace tokenizer and chat template without downloading anything."""

from __future__ import annotations

import itertools
from pathlib import Path

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
VOCAB_SIZE = 800

# Qwen-style ChatML. Content is expected as a string (callers join multi-part content first).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_ENGLISH = [
    "Hello! This is the reply from the local server.",
    "The quick brown fox jumps over the lazy dog.",
    "Tokens are counted exactly, not estimated.",
    "Every request carries a trace context in its headers.",
    "The department pays for the tokens its users spend.",
    "A streaming response arrives in many small chunks.",
    "Please summarise the quarterly report in three sentences.",
    "What is the weather like in Paris today?",
    "Translate the following sentence into Chinese.",
    "You are a helpful assistant that answers briefly.",
    "The model generated a long answer about prompt caching.",
    "Reasoning tokens are billed as completion tokens.",
    "Cached prompt tokens cost less than fresh ones.",
    "OpenTelemetry exports spans and metrics over OTLP.",
    "The server closed the connection before the stream ended.",
    "Rate limits protect the service from overload.",
    "An embedding is a vector of floating point numbers.",
    "Write a short poem about the sea and the stars.",
    "The invoice lists the price per million tokens.",
    "Our team deploys the model on a single GPU.",
    "Good morning, how can I help you today?",
    "The test suite runs without any network access.",
    "Numbers like 42, 3.14 and 2024 appear in text too.",
    "Alice sent the report to Bob on Monday morning.",
    "Keep the answer under one hundred words, please.",
    "The library wraps the client and records usage.",
    "Errors are reported with a status code and a message.",
    "Chat templates turn messages into one prompt string.",
    "The assistant replied with a friendly greeting.",
    "Each user belongs to exactly one department.",
    "Budgets trigger alerts when spending grows too fast.",
    "The cat sat on the warm windowsill all afternoon.",
    "Python, Rust and Go are popular programming languages.",
    "Explain the difference between latency and throughput.",
    "The conversation continues with a follow-up question.",
    "Thank you! That was exactly what I needed.",
    "Open the file, read every line, then close it.",
    "Small models are fast; large models are accurate.",
    "The meeting moved to Thursday at three o'clock.",
    "Please check the logs for warnings and errors.",
]

_CHINESE = [
    "你好，世界。",
    "这是来自本地服务器的回复。",
    "今天天气很好，我们去公园散步吧。",
    "请用三句话总结这份季度报告。",
    "令牌数量必须精确计算，不能估计。",
    "每个请求的头部都带有追踪上下文。",
    "部门为其用户消耗的令牌付费。",
    "流式响应会分成许多小块到达。",
    "你是一个乐于助人的助手，请简短回答。",
    "模型生成了一个关于提示缓存的长回答。",
    "推理令牌按照补全令牌计费。",
    "缓存的提示令牌比新的令牌便宜。",
    "服务器在流结束之前关闭了连接。",
    "速率限制可以保护服务不被过载。",
    "嵌入是一个由浮点数组成的向量。",
    "写一首关于大海和星星的短诗。",
    "发票列出了每百万令牌的价格。",
    "我们的团队在一块显卡上部署模型。",
    "早上好，今天有什么可以帮你的吗？",
    "测试套件在没有网络的情况下运行。",
    "小明星期一早上把报告发给了老师。",
    "请把回答控制在一百个字以内。",
    "这个库包装了客户端并记录用量。",
    "错误会带有状态码和错误信息。",
    "聊天模板把多条消息变成一个提示。",
    "助手用友好的问候语作了回复。",
    "每个用户只属于一个部门。",
    "预算超支时会触发告警。",
    "猫整个下午都坐在温暖的窗台上。",
    "请解释延迟和吞吐量之间的区别。",
    "谢谢！这正是我需要的。",
    "中文和英文都应该被切分成多个词元。",
    "北京、上海和深圳都是大城市。",
    "我喜欢喝茶，也喜欢喝咖啡。",
    "会议改到星期四下午三点。",
    "请检查日志里的警告和错误。",
    "机器学习模型需要大量的数据。",
    "春天来了，花儿都开了。",
    "他一边听音乐一边写代码。",
    "人工智能正在改变我们的工作方式。",
]


def corpus() -> list[str]:
    """A few hundred English, Chinese and mixed lines: enough merges that common words become single tokens
    while rarer text still splits into several."""
    mixed = [f"{en} {zh}" for en, zh in zip(_ENGLISH, itertools.cycle(_CHINESE))]
    mixed += [f"{zh}{en}" for zh, en in zip(_CHINESE, reversed(_ENGLISH), strict=True)]
    chats = [f"user: {en}\nassistant: {zh}" for en, zh in itertools.product(_ENGLISH[:10], _CHINESE[:10])]
    return _ENGLISH + _CHINESE + mixed + chats


def build_local_tokenizer(directory: Path) -> Path:
    """Train (once per directory) a byte-level BPE tokenizer and save it as a `PreTrainedTokenizerFast` with a
    ChatML template; returns `directory`, loadable by `AutoTokenizer.from_pretrained(directory)` offline.

    Byte-level BPE with the full byte alphabet means no text is ever unknown, Chinese included."""
    directory = Path(directory)
    if (directory / "tokenizer.json").exists():
        return directory

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus(), trainer=trainer)

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=["<|im_start|>", "<|im_end|>"],
        chat_template=CHAT_TEMPLATE,
    )
    directory.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(directory)
    return directory
