"""Exact token counts of a `generate` call, from the tensors it took and returned.

Works on CPU tensors through zero-copy numpy views (numpy ops cost ~1 us, torch's ~2 us) and on
accelerator tensors with torch ops on the device, so the only host transfer is one tensor of
two integers after generate has returned. The same expressions serve both because numpy arrays
and torch tensors share the operators used here.

Rules (as the model saw the tokens):
- input: prompt tokens without padding: `attention_mask` when given, else ids != pad (unless pad
  is also an EOS id, where HF itself cannot tell padding apart); summed over the batch, counted
  once per prompt whatever `num_return_sequences` is (like `n` on hosted APIs);
- output: per returned sequence, the tokens after the prompt (decoder-only) or after the decoder
  start (encoder-decoder), up to and including the first EOS; tokens after it are padding. Rows
  that stopped without EOS (stop strings) lose their trailing pad tokens when pad is not EOS.
"""

from __future__ import annotations

from typing import Any

from otel_tokens.recording.call import UsageEstimate

_SMALL = 1024  # CPU tensors up to this many ids are counted on Python lists (~1 us) instead of arrays


def _ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    if hasattr(value, "tolist"):
        value = value.tolist()
        if isinstance(value, int):
            return (value,)
    try:
        return tuple(int(v) for v in value)
    except TypeError:
        return ()


def _is_cpu(tensor: Any) -> bool:
    device = getattr(tensor, "device", None)
    return device is not None and getattr(device, "type", None) == "cpu"


def _array(tensor: Any) -> Any:
    """numpy view of a CPU tensor (cheaper ops); device tensors stay torch."""
    if _is_cpu(tensor) and not tensor.requires_grad:
        return tensor.numpy()
    return tensor


def _is_torch(value: Any) -> bool:
    """A torch tensor, tensor subclasses included (offloading and sharding wrappers), without importing torch."""
    cls = type(value)
    return cls.__module__.startswith("torch") or any(c.__module__.startswith("torch") for c in cls.__mro__[1:])


def _is_integer(tensor: Any) -> bool:
    dtype = getattr(tensor, "dtype", None)
    return dtype is not None and not getattr(dtype, "is_floating_point", False) and "float" not in str(dtype)


def special_tokens(instance: Any, kwargs: dict[str, Any]) -> tuple[tuple[int, ...], int | None]:
    """EOS ids and pad id in force for this call: kwargs, then the generation config given, then the model's."""
    config = kwargs.get("generation_config") or getattr(instance, "generation_config", None)
    eos = kwargs["eos_token_id"] if "eos_token_id" in kwargs else getattr(config, "eos_token_id", None)
    pad = kwargs["pad_token_id"] if "pad_token_id" in kwargs else getattr(config, "pad_token_id", None)
    pad_ids = _ids(pad)
    return _ids(eos), (pad_ids[0] if pad_ids else None)


def _sum(tensor: Any) -> Any:
    if _is_cpu(tensor) and tensor.shape[0] * tensor.shape[-1] <= _SMALL:
        return sum(map(sum, tensor.tolist()))
    return _array(tensor).sum()


def _input_count(ids: Any, embeds: Any, mask: Any, eos: tuple[int, ...], pad: int | None) -> Any:
    if ids is not None and _is_integer(ids) and len(ids.shape) == 2:
        if mask is not None and mask.shape == ids.shape:
            return _sum(mask)
        if pad is not None and pad not in eos:
            return (_array(ids) != pad).sum()
        return ids.shape[0] * ids.shape[1]
    if embeds is not None and len(embeds.shape) == 3:
        if mask is not None and tuple(mask.shape) == tuple(embeds.shape[:2]):
            return _array(mask).sum()
        return embeds.shape[0] * embeds.shape[1]
    if mask is not None and len(mask.shape) == 2:
        return _array(mask).sum()
    return None


def _generated_count(generated: Any, eos: tuple[int, ...], pad: int | None, stops_early: bool) -> Any:
    rows, cols = generated.shape[0], generated.shape[1]
    if cols == 0:
        return 0
    excluded = None
    if eos:
        is_eos = generated == eos[0]
        for other in eos[1:]:
            is_eos = is_eos | (generated == other)
        # the shortcut would be a host sync for device tensors: it is taken on numpy only
        if _is_torch(is_eos) or is_eos.any():
            # strictly after the first EOS of the row: an EOS has been seen before this position
            excluded = is_eos.cumsum(1) > is_eos
    if stops_early and pad is not None and pad not in eos:
        # rows stopped by stop strings or custom criteria are padded without an EOS
        is_pad = generated == pad
        real_so_far = (~is_pad).cumsum(1)
        trailing = is_pad & (real_so_far == real_so_far[:, -1:])
        excluded = trailing if excluded is None else (excluded | trailing)
    if excluded is None:
        return rows * cols
    return rows * cols - excluded.sum()


def _generated_count_small(rows: list[list[int]], eos: tuple[int, ...], pad: int | None, stops_early: bool) -> int:
    """Same rule as `_generated_count`, for small CPU outputs where list scans beat array ops."""
    total = 0
    trim_pads = stops_early and pad is not None and pad not in eos
    for row in rows:
        n = len(row)
        for token in eos:
            if token in row:
                n = min(n, row.index(token) + 1)
        if trim_pads and n == len(row):
            while n and row[n - 1] == pad:
                n -= 1
        total += n
    return total


def count_generate(instance: Any, encoder_decoder: bool, args: tuple[Any, ...], kwargs: dict[str, Any],
                   result: Any) -> tuple[int | None, int | None]:
    """(input_tokens, output_tokens) of one generate call; None where it cannot be known exactly."""
    ids = args[0] if args else kwargs.get("inputs")
    if ids is None:
        ids = kwargs.get("input_ids")
    embeds = kwargs.get("inputs_embeds")
    mask = kwargs.get("attention_mask")
    eos, pad = special_tokens(instance, kwargs)

    input_count = _input_count(ids, embeds, mask, eos, pad)
    # no prompt at all (decoder-only): generate starts each row from one BOS, which the model reads
    bos_only = not encoder_decoder and ids is None and embeds is None
    if bos_only and input_count is None:
        input_count = _bos_rows(kwargs)

    sequences = result if hasattr(result, "shape") else getattr(result, "sequences", None)
    output_count = None
    if sequences is not None and len(sequences.shape) == 2:
        if encoder_decoder:
            decoder_ids = kwargs.get("decoder_input_ids")
            prompt_len = decoder_ids.shape[1] if decoder_ids is not None else 1
        elif ids is not None and _is_integer(ids) and len(ids.shape) == 2:
            prompt_len = ids.shape[1]
        elif bos_only:
            prompt_len = 1  # the BOS generate started from comes back as the first column
        else:
            prompt_len = 0  # inputs_embeds only: generate returns just the new tokens
        config = kwargs.get("generation_config") or getattr(instance, "generation_config", None)
        stops_early = bool(kwargs.get("stop_strings") or kwargs.get("stopping_criteria")
                           or getattr(config, "stop_strings", None))
        if _is_cpu(sequences) and sequences.shape[0] * sequences.shape[1] <= _SMALL:
            rows = [row[prompt_len:] for row in sequences.tolist()]
            output_count = _generated_count_small(rows, eos, pad, stops_early)
        else:
            output_count = _generated_count(_array(sequences)[:, prompt_len:], eos, pad, stops_early)
    return _to_ints(input_count, output_count)


def _bos_rows(kwargs: dict[str, Any]) -> int:
    """Rows generate initialises with one BOS each when given no inputs: as transformers decides it,
    the batch size of the first tensor among the model kwargs, else 1."""
    for value in kwargs.values():
        shape = getattr(value, "shape", None)
        if _is_torch(value) and shape is not None and len(shape) >= 1:
            return int(shape[0])
    return 1


def _on_meta(value: Any) -> bool:
    return getattr(getattr(value, "device", None), "type", None) == "meta"


def _to_ints(*values: Any) -> tuple[int | None, ...]:
    """Python ints; torch values still on a device come over in a single transfer. Values on the
    `meta` device have no data: they stay unknown (None)."""
    if all(v is None or type(v) is int for v in values):  # the CPU paths count in Python ints
        return values
    values = tuple(None if _on_meta(v) else v for v in values)
    on_device = [i for i, v in enumerate(values) if _is_torch(v)]
    out = [None if v is None or i in on_device else int(v) for i, v in enumerate(values)]
    if on_device:
        import torch  # only reached with torch tensors, so torch is importable

        host = torch.stack([values[i].reshape(()).long() for i in on_device]).tolist()
        for i, value in zip(on_device, host, strict=True):
            out[i] = value
    return tuple(out)


def estimate_generate(instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> UsageEstimate | None:
    """The worst case of a generate call before it runs, from shapes and the generation config only
    (no device sync): every prompt position, `max_new_tokens` (or what `max_length` leaves) per
    returned sequence."""
    ids = args[0] if args else kwargs.get("inputs")
    if ids is None:
        ids = kwargs.get("input_ids")
    if ids is None:
        ids = kwargs.get("inputs_embeds")
    shape = tuple(getattr(ids, "shape", ()) or ())
    rows, prompt = (int(shape[0]), int(shape[1])) if len(shape) >= 2 else (1, 0)
    config = kwargs.get("generation_config") or getattr(instance, "generation_config", None)
    limit = kwargs.get("max_new_tokens", getattr(config, "max_new_tokens", None))
    if type(limit) is not int:
        max_length = kwargs.get("max_length", getattr(config, "max_length", None))
        limit = max(0, max_length - prompt) if type(max_length) is int else None
    returned = kwargs.get("num_return_sequences", getattr(config, "num_return_sequences", None))
    returned = returned if type(returned) is int and returned > 0 else 1
    return UsageEstimate(rows * prompt, limit, rows * returned)
