"""Data cases for the active-learning loop: built-in real data, image folders, synthetic blobs.

Every builder returns a :class:`~asvp_fast.loop.cases.case.Case`. Datasets return inputs only;
labels live on the case (``pool_labels`` for the simulated oracle, ``test_labels``).

* :func:`wordnet_nouns_case`: WordNet 3.0 noun definitions, 26 lexicographer classes
  (``noun.animal``, ``noun.artifact``, ...), embedded with all-MiniLM-L6-v2.
* :func:`fashion_mnist_case`: Fashion-MNIST images, 10 classes, EfficientNet-Lite0.
* :func:`imagefolder_case`: your own ``class/image`` folders with a ResNet-50 checkpoint.
* :func:`synthetic_case`: Gaussian blobs and a tiny MLP, for fast tests of the loop.

The built-in data ship with the package (``asvp_fast/data``, see its ``NOTICE.md``) and are
read through :mod:`importlib.resources`, so they work from an installed wheel and offline.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import io
from importlib import resources
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Sequence, Tuple, Union

import numpy as np

from ..models.backbones import EfficientNetLite0, MiniLM, TextCollate, TinyMLPBackbone
from .case import Case
from .datasets import ArrayDataset, TextDataset, stack_collate
from .imagefolder import imagefolder_case
from .registry import register_case
from .splits import check_sizes, disjoint_split, random_subset

PathLike = Union[str, "os.PathLike[str]"]
DATA_PACKAGE = "asvp_fast.data"
WORDNET_FILE = "wordnet_nouns.tsv.gz"
FASHION_FILE = "fashion_mnist.npz"
NOTICE = "asvp_fast/data/NOTICE.md"

# WordNet's noun lexicographer files 03..28 (lexnames(5WN)); class id = file number - 3.
WORDNET_CLASS_NAMES: List[str] = [
    "noun.Tops", "noun.act", "noun.animal", "noun.artifact", "noun.attribute", "noun.body",
    "noun.cognition", "noun.communication", "noun.event", "noun.feeling", "noun.food",
    "noun.group", "noun.location", "noun.motive", "noun.object", "noun.person",
    "noun.phenomenon", "noun.plant", "noun.possession", "noun.process", "noun.quantity",
    "noun.relation", "noun.shape", "noun.state", "noun.substance", "noun.time",
]  # fmt: skip
FASHION_CLASS_NAMES: List[str] = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip


# --------------------------------------------------------------------------------------------
# Shipped files
# --------------------------------------------------------------------------------------------


def _read_resource(name: str) -> bytes:
    """Bytes of a shipped data file (works from a source tree, a wheel or a zip)."""
    try:
        return resources.files(DATA_PACKAGE).joinpath(name).read_bytes()
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"the built-in data file {name} is missing from the installed package {DATA_PACKAGE}; "
            "reinstall asvp-fast, or regenerate it with scripts/make_builtin_data.py"
        ) from exc


@dataclass(frozen=True)
class WordNetNouns:
    """The shipped WordNet table, one entry per synset (file order)."""

    offsets: Tuple[str, ...]
    labels: np.ndarray
    lemmas: Tuple[str, ...]
    glosses: Tuple[str, ...]

    def __len__(self) -> int:
        return len(self.offsets)

    def text(self, index: int) -> str:
        return f"{self.lemmas[index]}: {self.glosses[index]}"


@functools.lru_cache(maxsize=1)
def load_wordnet_nouns() -> WordNetNouns:
    """Parse ``wordnet_nouns.tsv.gz`` (cached: the table is read once per process)."""
    lines = gzip.decompress(_read_resource(WORDNET_FILE)).decode("utf-8").splitlines()
    header, rows = lines[0].split("\t"), [line.split("\t") for line in lines[1:]]
    if header != ["offset", "class_id", "lemma", "gloss"] or any(len(r) != 4 for r in rows):
        raise ValueError(f"{WORDNET_FILE} is not in the expected 4-column format")
    offsets, labels, lemmas, glosses = zip(*rows)
    return WordNetNouns(offsets, np.array(labels, dtype=np.int64), lemmas, glosses)


@functools.lru_cache(maxsize=1)
def load_fashion_mnist() -> Dict[str, np.ndarray]:
    """The shipped Fashion-MNIST subset: ``x_train``, ``y_train``, ``x_test``, ``y_test``, ..."""
    with np.load(io.BytesIO(_read_resource(FASHION_FILE)), allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------


def wordnet_nouns_case(pool_size: int = 4000, test_size: int = 800, seed: int = 0, max_length: int = 32) -> Case:
    """WordNet noun definitions, classified into their 26 lexicographer files.

    Parameters
    ----------
    pool_size, test_size
        Rows drawn (disjoint, seeded, not stratified: a plain random split, so rare classes
        such as ``noun.motive`` may be absent from a small test set) from the 12,000 shipped.
    seed
        Seed of the split.
    max_length
        Token limit of the MiniLM collate (texts are ``"lemma: definition"``, mostly < 32 tokens).

    ``pool_lengths`` / ``test_lengths`` are token counts when the MiniLM tokenizer is
    installed, otherwise character counts (both only order texts for length bucketing).
    """
    table = load_wordnet_nouns()
    check_sizes(pool_size, test_size, len(table), f"the shipped WordNet subset ({WORDNET_FILE})")
    pool_rows, test_rows = disjoint_split(len(table), pool_size, test_size, seed)
    pool_texts = [table.text(i) for i in pool_rows]
    test_texts = [table.text(i) for i in test_rows]
    collate = TextCollate(None, max_length)
    pool = TextDataset(pool_texts)
    return Case(
        name="wordnet-nouns",
        dataset_id=f"wordnet-nouns-{len(table)}:pool{pool_size}:test{test_size}:seed{seed}:maxlen{max_length}",
        pool=pool,
        test=TextDataset(test_texts),
        test_labels=table.labels[test_rows],
        num_classes=len(WORDNET_CLASS_NAMES),
        class_names=list(WORDNET_CLASS_NAMES),
        make_backbone=MiniLM,
        collate=collate,
        pool_labels=table.labels[pool_rows],
        pool_lengths=_text_lengths(collate, pool_texts),
        test_lengths=_text_lengths(collate, test_texts),
        describe=pool.describe,
        licence=f"WordNet 3.0 (Princeton University licence); see {NOTICE}",
    )


def _text_lengths(collate: TextCollate, texts: Sequence[str]) -> np.ndarray:
    """Token counts, or character counts if the tokenizer is not installed."""
    try:
        return np.asarray(collate.token_lengths(texts), dtype=np.int64)
    except ImportError:
        return np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))


def fashion_mnist_case(pool_size: int = 6000, test_size: int = 1000, seed: int = 0, image_size: int = 96) -> Case:
    """Fashion-MNIST: the pool from the shipped training images, the test set from the test images.

    Parameters
    ----------
    pool_size, test_size
        Seeded random subsets of the 6,000 shipped training and 1,000 test images (all by default).
    seed
        Seed of the subsets.
    image_size
        Side the EfficientNet-Lite0 backbone resizes the 28x28 images to.

    Items are uint8 tensors ``(1, 28, 28)``; ``describe(i)`` names the image's row in the
    original Fashion-MNIST training file.
    """
    data = load_fashion_mnist()
    n_train, n_test = len(data["y_train"]), len(data["y_test"])
    if pool_size > n_train or test_size > n_test:
        raise ValueError(
            f"the shipped Fashion-MNIST subset has {n_train} training and {n_test} test images; "
            f"asked for pool_size={pool_size}, test_size={test_size}"
        )
    rng = np.random.default_rng(seed)
    pool_rows, test_rows = random_subset(n_train, pool_size, rng, "pool_size"), random_subset(n_test, test_size, rng, "test_size")
    names = [f"Fashion-MNIST training image #{int(i)}" for i in data["train_index"][pool_rows]]
    pool = ArrayDataset(data["x_train"][pool_rows, None], names)
    test = ArrayDataset(data["x_test"][test_rows, None])
    return Case(
        name="fashion-mnist",
        dataset_id=f"fashion-mnist-{n_train}+{n_test}:pool{pool_size}:test{test_size}:seed{seed}",
        pool=pool,
        test=test,
        test_labels=data["y_test"][test_rows].astype(np.int64),
        num_classes=len(FASHION_CLASS_NAMES),
        class_names=list(FASHION_CLASS_NAMES),
        make_backbone=functools.partial(EfficientNetLite0, image_size=image_size),
        collate=stack_collate,
        pool_labels=data["y_train"][pool_rows].astype(np.int64),
        describe=pool.describe,
        licence=f"Fashion-MNIST (MIT, Zalando SE); see {NOTICE}",
    )


def synthetic_case(
    pool_size: int = 600,
    test_size: int = 200,
    num_classes: int = 4,
    in_dim: int = 16,
    feature_dim: int = 8,
    seed: int = 0,
    separation: float = 1.0,
) -> Case:
    """Gaussian class blobs (float32 ``(in_dim,)`` inputs) with a seeded :class:`TinyMLPBackbone`.

    Class means are drawn from ``N(0, separation**2 I)`` and points add unit Gaussian noise;
    with the defaults the means are ~5.7 noise standard deviations apart, so a linear head on
    the MLP's features learns the classes while leaving some ambiguous points to select.
    Classes are balanced (round robin, shuffled).
    """
    if num_classes < 2 or in_dim < 1 or feature_dim < 1:
        raise ValueError("need num_classes >= 2, in_dim >= 1 and feature_dim >= 1")
    check_sizes(pool_size, test_size, pool_size + test_size, "the synthetic data")
    rng = np.random.default_rng(seed)
    means = rng.normal(0.0, separation, size=(num_classes, in_dim))
    n = pool_size + test_size
    labels = rng.permutation(np.arange(n) % num_classes)
    inputs = (means[labels] + rng.normal(size=(n, in_dim))).astype(np.float32)
    pool = ArrayDataset(inputs[:pool_size])
    return Case(
        name="synthetic",
        dataset_id=(
            f"synthetic-blobs:c{num_classes}:d{in_dim}:sep{separation:g}:"
            f"pool{pool_size}:test{test_size}:seed{seed}"
        ),
        pool=pool,
        test=ArrayDataset(inputs[pool_size:]),
        test_labels=labels[pool_size:].astype(np.int64),
        num_classes=num_classes,
        class_names=[f"class{i}" for i in range(num_classes)],
        make_backbone=functools.partial(TinyMLPBackbone, in_dim, feature_dim, seed=seed),
        collate=stack_collate,
        pool_labels=labels[:pool_size].astype(np.int64),
        describe=pool.describe,
        licence="synthetic data (no licence needed)",
    )


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

BUILTIN_CASES: Dict[str, Callable[..., Case]] = {
    "wordnet-nouns": wordnet_nouns_case,
    "fashion-mnist": fashion_mnist_case,
    "synthetic": synthetic_case,
}


def builtin_case(name: str, **kwargs: Any) -> Case:
    """Build a built-in case by name (``wordnet-nouns``, ``fashion-mnist``, ``synthetic``)."""
    try:
        builder = BUILTIN_CASES[name]
    except KeyError:
        raise ValueError(f"unknown case {name!r}; built-in cases: {', '.join(BUILTIN_CASES)}") from None
    return builder(**kwargs)


__all__ = ["BUILTIN_CASES", "builtin_case", "fashion_mnist_case", "imagefolder_case", "synthetic_case", "wordnet_nouns_case"]


# -- the built-in cases as config case types ([data] fields and builders) ----------------------
@dataclass(frozen=True)
class WordNetFields:
    pool_size: int = 4000
    test_size: int = 800
    seed: int = 0
    max_length: int = 32


@dataclass(frozen=True)
class FashionFields:
    pool_size: int = 6000
    test_size: int = 1000
    seed: int = 0
    image_size: int = 96


@dataclass(frozen=True)
class SyntheticFields:
    pool_size: int = 600
    test_size: int = 200
    seed: int = 0
    # the blobs' shape (larger synthetic runs, e.g. bench/distributed_loop.py); left out of the
    # resume digest at their defaults, so runs started before these existed still resume
    num_classes: int = field(default=4, metadata={"omit_default": True})
    in_dim: int = field(default=16, metadata={"omit_default": True})
    feature_dim: int = field(default=8, metadata={"omit_default": True})


register_case("wordnet-nouns", WordNetFields, lambda f, base_dir: wordnet_nouns_case(**dataclasses.asdict(f)))
register_case("fashion-mnist", FashionFields, lambda f, base_dir: fashion_mnist_case(**dataclasses.asdict(f)))
register_case("synthetic", SyntheticFields, lambda f, base_dir: synthetic_case(**dataclasses.asdict(f)))
