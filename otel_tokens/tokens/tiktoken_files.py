"""tiktoken encodings without a download.

tiktoken downloads an encoding's file the first time it is asked for it, unless its cache already
holds it (under the SHA-1 of the file's URL). Here the same constructors tiktoken uses (its pattern
and special tokens, nothing copied) are fed a local copy found under that name in, in order:
`TIKTOKEN_CACHE_DIR`, `DATA_GYM_CACHE_DIR`, tiktoken's default cache, and the copies litellm's wheel
ships (cl100k_base and o200k_base, found without importing litellm). A copy is used only when its
SHA-256 is the one tiktoken expects; nothing is written anywhere.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import tempfile
import threading
import types
from typing import Any

MAX_FILE_BYTES = 64 << 20  # o200k_base is 3.6 MB; anything this large is not an encoding file

_lock = threading.Lock()


class NotOfflineError(LookupError):
    """The encoding's file is nowhere here with the expected hash; the message says where we looked."""


def search_dirs() -> list[str]:
    dirs = [os.environ.get("TIKTOKEN_CACHE_DIR"), os.environ.get("DATA_GYM_CACHE_DIR"),
            os.path.join(tempfile.gettempdir(), "data-gym-cache"), litellm_dir()]
    return list(dict.fromkeys(d for d in dirs if d))


def litellm_dir() -> str | None:
    """litellm's bundled tiktoken files (litellm/litellm_core_utils/tokenizers), when installed."""
    try:
        spec = importlib.util.find_spec("litellm")  # finds the package; does not import it
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        path = os.path.join(location, "litellm_core_utils", "tokenizers")
        if os.path.isdir(path):
            return path
    return None


def cache_name(url: str) -> str:
    return hashlib.sha1(url.encode()).hexdigest()


def read_verified(url: str, expected_hash: str | None, dirs: list[str]) -> bytes:
    """The first copy of `url`'s file in `dirs` whose SHA-256 is `expected_hash`."""
    if not expected_hash:
        raise NotOfflineError(f"{url}: tiktoken gives no hash to check a local copy against")
    name, seen = cache_name(url), []
    for directory in dirs:
        path = os.path.join(directory, name)
        try:
            if not os.path.lexists(path):
                continue
            if not os.path.isfile(path) or os.path.getsize(path) > MAX_FILE_BYTES:
                seen.append(f"{path} is not a regular file of at most {MAX_FILE_BYTES >> 20} MiB (not used)")
                continue
            with open(path, "rb") as file:
                data = file.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            seen.append(f"{path} unreadable ({exc.strerror or exc})")
            continue
        if hashlib.sha256(data).hexdigest() == expected_hash:
            return data
        seen.append(f"{path} has another SHA-256 than tiktoken expects (not used)")
    detail = "; ".join(seen) if seen else f"no file named {name} in " + ", ".join(dirs)
    raise NotOfflineError(f"{url}: {detail}")


_LOADERS = ("load_tiktoken_bpe", "data_gym_to_mergeable_bpe_ranks")


def _check_reads_through(function: Any, readers: set[str]) -> None:
    """Only code that reaches its file through the names we rebind is run: a function that could
    reach tiktoken's downloader some other way (`tiktoken.load.read_file`) is refused."""
    used = set(function.__code__.co_names)
    if not used & readers or used & {"tiktoken", "load", "read_file", "blobfile", "requests"}:
        raise NotOfflineError(f"tiktoken's {function.__name__} does not read its file the way this version expects "
                              "(not run: it could download)")


def _rebound(function: Any, namespace: dict[str, Any]) -> Any:
    """`function` resolving its globals in `namespace`: tiktoken's code, our file reader."""
    rebound = types.FunctionType(function.__code__, namespace, function.__name__, function.__defaults__,
                                 function.__closure__)
    rebound.__kwdefaults__ = function.__kwdefaults__
    return rebound


@functools.lru_cache(maxsize=8)
def _load(name: str, dirs: tuple[str, ...]) -> Any:
    import tiktoken
    import tiktoken.load
    from tiktoken_ext import openai_public

    constructors = getattr(openai_public, "ENCODING_CONSTRUCTORS", {})
    if name not in constructors:
        raise NotOfflineError(f"{name}: not one of tiktoken's OpenAI encodings")

    def read_file_cached(blobpath: str, expected_hash: str | None = None) -> bytes:
        return read_verified(blobpath, expected_hash, list(dirs))

    loaders: dict[str, Any] = {**vars(tiktoken.load), "read_file_cached": read_file_cached}
    for loader in _LOADERS:
        if loader in loaders:
            _check_reads_through(loaders[loader], {"read_file_cached"})
            loaders[loader] = _rebound(loaders[loader], loaders)
    built: Any = None
    namespace: dict[str, Any] = dict(vars(openai_public))
    namespace.update({k: loaders[k] for k in ("load_tiktoken_bpe", "data_gym_to_mergeable_bpe_ranks")
                      if k in loaders})
    for constructor_name, constructor in constructors.items():
        if isinstance(constructor, types.FunctionType):
            namespace[constructor.__name__] = _rebound(constructor, namespace)
            if constructor_name == name:
                _check_reads_through(constructor, set(_LOADERS))
                built = namespace[constructor.__name__]
    if built is None:
        raise NotOfflineError(f"{name}: tiktoken's constructor is not a plain function here")
    try:
        return tiktoken.Encoding(**built())
    except NotOfflineError:
        raise
    except Exception as exc:  # another tiktoken than this code knows: never fall back to a download
        raise NotOfflineError(f"{name}: tiktoken's constructor failed offline ({type(exc).__name__}: {exc})") from exc


def load_offline(name: str) -> Any:
    """tiktoken's encoding `name` from a verified local copy; raises NotOfflineError saying where it looked."""
    with _lock:  # one parse of a 3.6 MB file at a time, and once per process
        return _load(name, tuple(search_dirs()))
