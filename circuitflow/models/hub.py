"""The local Hugging Face cache: where it is, what a model name resolves to, and switching the hub
offline (the README).  ``pretrained.py`` loads models from it and
``canonical.py`` checks circuits against the names it resolves.

The cache is ``cache_dir`` where given, else ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
``~/.cache/huggingface/hub``, read at call time.  A repository the cache lacks is ``NotInCache``: one
sentence naming what to download and where, instead of Hugging Face's ~46 s of retries.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from transformer_lens import loading_from_pretrained as loading


class NotInCache(FileNotFoundError):
    """A repository the model needs is not in the local Hugging Face cache."""


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache this process would use, read from the environment now (not at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or "~/.cache/huggingface"
    return Path(home).expanduser() / "hub"


def official_name(name: str) -> str:
    """TransformerLens's Hugging Face repository for a model name or alias ("gpt2" -> "gpt2",
    "attn-only-4l" -> "NeelNanda/Attn_Only_4L512W_C4_Code")."""
    try:
        return loading.get_official_model_name(name)
    except ValueError:
        raise ValueError(
            f"Unknown pretrained model {name!r}: TransformerLens 3.9 has no such name or alias; "
            "use one of its official names, e.g. gpt2, attn-only-4l or redwood_attn_2l."
        ) from None


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """Switch the Hugging Face hub offline for the block, and back as it was afterwards.

    ``huggingface_hub`` reads ``HF_HUB_OFFLINE`` once, at import, so setting the environment variable
    alone would not reach an already imported hub; its constant is set too (and restored).
    """
    from huggingface_hub import constants

    saved_env, saved_constant = os.environ.get("HF_HUB_OFFLINE"), constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved_constant
        if saved_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved_env


def missing_from_cache(name: str, repo: str, cache: Path, what: str = "") -> NotInCache:
    return NotInCache(
        f"{name}{what} is not in the Hugging Face cache at {cache} (repository {repo}); on a machine with "
        f"network run `hf download {repo}` (or python -c \"from huggingface_hub import snapshot_download; "
        f"snapshot_download('{repo}')\") and copy its cache here, or set HF_HOME to a cache that has it."
    )


def cached_snapshot(repo: str, cache: Path) -> Path | None:
    """The cached snapshot folder of ``repo``'s main revision, or None when the cache lacks it."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    with offline():
        try:
            return Path(snapshot_download(repo, cache_dir=str(cache), local_files_only=True))
        except (LocalEntryNotFoundError, FileNotFoundError, OSError):
            return None


def cached_revision(name: str, cache_dir: str | Path | None = None) -> str:
    """The commit hash of the cached snapshot of ``name``'s repository (provenance for the models stage)."""
    repo = official_name(name)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else hf_cache_dir()
    snapshot = cached_snapshot(repo, cache)
    if snapshot is None:
        raise missing_from_cache(name, repo, cache)
    return snapshot.name
