"""Any Hugging Face encoder from a local directory (``AutoModel`` + ``AutoTokenizer``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Union

import torch
import torch.nn.functional as F

from .base import Backbone, require
from .fingerprint import directory_fingerprint
from .text import TextCollate, load_minilm_tokenizer, minilm_model_dir

PathLike = Union[str, "os.PathLike[str]"]
POOLINGS = ("mean", "cls")


def check_model_dir(model_dir: PathLike) -> Path:
    """``model_dir`` as a Path, after checking it looks like a saved Hugging Face model."""
    path = Path(model_dir).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"model directory not found: {path} (a folder saved with save_pretrained)")
    if not (path / "config.json").is_file():
        raise ValueError(f"{path} has no config.json: not a Hugging Face model directory (save one with "
                         f"model.save_pretrained(dir) and tokenizer.save_pretrained(dir))")
    return path


class HFEncoder(Backbone):
    """A local Hugging Face encoder: pooled last hidden states.

    Parameters
    ----------
    model_dir
        A directory written by ``save_pretrained`` (model and tokenizer), or ``None`` for the
        bundled all-MiniLM-L6-v2. Loaded with ``local_files_only=True``: nothing is downloaded,
        and no remote code runs.
    pooling
        ``"mean"`` (masked mean over real tokens, sentence-transformers style) or ``"cls"`` (the
        first token's hidden state).
    normalize
        L2-normalise the pooled vectors.

    ``forward`` takes the dict a :class:`TextCollate` makes (``collate(max_length)``) and returns
    float32 ``(B, hidden_size)``. ``backbone_id`` names the directory's files (weights, config,
    tokenizer, by size and hash) and the pooling, so another model never reuses a cache.
    """

    def __init__(self, model_dir: "PathLike | None" = None, pooling: str = "mean", normalize: bool = False) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        transformers = require("transformers", "transformers")
        self.model_dir = check_model_dir(model_dir) if model_dir is not None else minilm_model_dir()
        hf_logging = transformers.utils.logging
        bar = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # the run has its own progress; restored below
        try:
            self.model = transformers.AutoModel.from_pretrained(str(self.model_dir), local_files_only=True)
        except (OSError, ValueError, KeyError) as exc:
            raise ValueError(f"cannot load a Hugging Face model from {self.model_dir}: {exc}") from exc
        finally:
            if bar:
                hf_logging.enable_progress_bar()
        self.pooling = pooling
        self.normalize = bool(normalize)
        self.feature_dim = int(self.model.config.hidden_size)
        self.backbone_id = (f"hf:{directory_fingerprint(self.model_dir)}:{pooling}" + ("-l2norm" if normalize else ""))
        self.eval()  # dropout off: features are extracted, not sampled

    def collate(self, max_length: int = 128) -> TextCollate:
        """A :class:`TextCollate` for this model's tokenizer (loaded lazily, also in DataLoader workers)."""
        return TextCollate(self.model_dir, max_length)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        mask = batch["attention_mask"]
        hidden: torch.Tensor = self.model(input_ids=batch["input_ids"], attention_mask=mask).last_hidden_state
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1e-9)
        if self.normalize:
            pooled = F.normalize(pooled, p=2.0, dim=-1)
        return pooled.float()


def check_tokenizer(model_dir: "PathLike | None") -> None:
    """Load the tokenizer of ``model_dir`` once (a clear error now rather than in a DataLoader worker)."""
    try:
        load_minilm_tokenizer(None if model_dir is None else os.fspath(model_dir))
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"cannot load a tokenizer from {model_dir}: {exc}") from exc
