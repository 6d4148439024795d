"""Counting tokens locally when a server reports none: the model's own tokenizer, or tiktoken offline."""
