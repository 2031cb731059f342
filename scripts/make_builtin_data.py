#!/usr/bin/env python
"""Make the built-in data files shipped in ``asvp_fast/data/`` from Debian-packaged sources.

Run with no arguments to reproduce the shipped files exactly (fixed seed, deterministic
compression: gzip ``mtime=0`` and fixed zip entry dates)::

    python scripts/make_builtin_data.py

Sources (Debian packages):

* ``wordnet-base``: ``/usr/share/wordnet/data.noun`` (WordNet 3.0 noun synsets).
* ``dataset-fashion-mnist``: ``/usr/share/datasets/fashion-mnist/*-ubyte.gz`` (IDX files).

Outputs:

* ``wordnet_nouns.tsv.gz``: a header line, then one noun synset a line with the columns
  ``offset, class_id, lemma, gloss``. ``class_id`` is the lexicographer file number minus 3
  (0 = noun.Tops ... 25 = noun.time), ``lemma`` the synset's first word with underscores as
  spaces, ``gloss`` the definition only: the text after ``" | "`` up to the first ``'; "'``,
  which is where WordNet's quoted usage examples begin (examples often contain the lemma
  itself, which would make the text classification task about spotting words, not meaning).
* ``fashion_mnist.npz``: ``x_train`` (N, 28, 28) uint8, ``y_train`` (N,) uint8,
  ``x_test``, ``y_test``, and ``train_index`` / ``test_index`` (int32 rows in the original
  IDX files), a class-balanced seeded subset, rows in the original file order.

The script depends on numpy only (it must run without the compiled package).
"""

from __future__ import annotations

import argparse
import gzip
import io
import struct
import sys
import zipfile
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

WORDNET_DATA_NOUN = Path("/usr/share/wordnet/data.noun")
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "asvp_fast" / "data"

WORDNET_FILE = "wordnet_nouns.tsv.gz"
FASHION_FILE = "fashion_mnist.npz"
NUM_NOUN_CLASSES = 26  # noun lexicographer files 03 (noun.Tops) .. 28 (noun.time)
FIRST_NOUN_LEXFILE = 3
TSV_HEADER = "offset\tclass_id\tlemma\tgloss"
# A fixed date for the zip entries (the zip format cannot store dates before 1980).
ZIP_DATE = (1980, 1, 1, 0, 0, 0)

# IDX magic: two zero bytes, a type code (0x08 = unsigned byte), the number of dimensions.
IDX_UBYTE = 0x08


# --------------------------------------------------------------------------------------------
# WordNet
# --------------------------------------------------------------------------------------------


def parse_noun_line(line: str) -> Tuple[str, int, str, str]:
    """Parse one synset line of ``data.noun`` into ``(offset, class_id, lemma, gloss)``.

    The line format is ``offset lex_filenum ss_type w_cnt word lex_id ... | gloss`` with
    ``w_cnt`` in hexadecimal (see WordNet's ``wndb(5)``).
    """
    head, sep, gloss = line.partition(" | ")
    if not sep:
        raise ValueError(f"no gloss separator in synset line: {line[:60]!r}")
    fields = head.split()
    offset, lex_filenum, ss_type = fields[0], int(fields[1]), fields[2]
    if ss_type != "n":
        raise ValueError(f"synset {offset} is not a noun (ss_type {ss_type!r})")
    class_id = lex_filenum - FIRST_NOUN_LEXFILE
    if not 0 <= class_id < NUM_NOUN_CLASSES:
        raise ValueError(f"synset {offset} has lexicographer file {lex_filenum}, not a noun file")
    lemma = fields[4].replace("_", " ")
    return offset, class_id, lemma, clean_gloss(gloss)


def clean_gloss(gloss: str) -> str:
    """Keep the definition: drop the quoted usage examples that follow ``'; "'``."""
    definition = gloss.split('; "', 1)[0].strip()
    # Glosses never contain tabs or newlines in WordNet 3.0; guard the TSV format anyway.
    return " ".join(definition.split())


def read_noun_synsets(path: Path) -> List[Tuple[str, int, str, str]]:
    """All noun synsets of ``data.noun``, in file order (the licence header is skipped)."""
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("  "):  # the licence header lines start with two spaces
                continue
            rows.append(parse_noun_line(line.rstrip("\n")))
    return rows


def wordnet_subset(rows: Sequence[Tuple[str, int, str, str]], count: int, seed: int) -> List[Tuple[str, int, str, str]]:
    """A seeded random subset of ``count`` synsets, kept in file (offset) order."""
    if count > len(rows):
        raise ValueError(f"asked for {count} synsets, data.noun has {len(rows)}")
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(rows), size=count, replace=False))
    subset = [rows[i] for i in chosen]
    present = {class_id for _, class_id, _, _ in subset}
    if len(present) != NUM_NOUN_CLASSES:
        missing = sorted(set(range(NUM_NOUN_CLASSES)) - present)
        raise ValueError(f"the subset lacks noun classes {missing}; choose another seed or a larger count")
    return subset


def write_tsv_gz(path: Path, rows: Sequence[Tuple[str, int, str, str]]) -> None:
    """Write the rows as gzip-compressed TSV with ``mtime=0`` and no file name (reproducible)."""
    text = "\n".join([TSV_HEADER] + [f"{o}\t{c}\t{lemma}\t{gloss}" for o, c, lemma, gloss in rows]) + "\n"
    with open(path, "wb") as raw:
        # filename="" keeps the output path out of the gzip header; mtime=0 keeps the date out.
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as gz:
            gz.write(text.encode("utf-8"))


# --------------------------------------------------------------------------------------------
# Fashion-MNIST
# --------------------------------------------------------------------------------------------


def read_idx(path: Path, expected_ndim: int) -> np.ndarray:
    """Read a (gzip-compressed) IDX file of unsigned bytes, checking its magic number and size."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4:
        raise ValueError(f"{path}: too short for an IDX file")
    zero1, zero2, type_code, ndim = struct.unpack(">BBBB", data[:4])
    if zero1 != 0 or zero2 != 0 or type_code != IDX_UBYTE:
        raise ValueError(f"{path}: bad IDX magic {data[:4].hex()} (expected 0000 08 0{expected_ndim})")
    if ndim != expected_ndim:
        raise ValueError(f"{path}: IDX file has {ndim} dimensions, expected {expected_ndim}")
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected_bytes = int(np.prod(shape))
    if len(data) - header != expected_bytes:
        raise ValueError(f"{path}: {len(data) - header} data bytes, the header promises {expected_bytes}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def balanced_subset(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """``per_class`` seeded random rows of every class, returned sorted (original order)."""
    picks = []
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        if per_class > rows.size:
            raise ValueError(f"class {label} has {rows.size} rows, asked for {per_class}")
        picks.append(rng.choice(rows, size=per_class, replace=False))
    return np.sort(np.concatenate(picks))


def fashion_subset(fashion_dir: Path, train_per_class: int, test_per_class: int, seed: int) -> Dict[str, np.ndarray]:
    """The shipped arrays: balanced train and test subsets with their original row numbers."""
    parts = {}
    rng = np.random.default_rng(seed)
    for split, prefix, per_class in (("train", "train", train_per_class), ("test", "t10k", test_per_class)):
        images = read_idx(fashion_dir / f"{prefix}-images-idx3-ubyte.gz", 3)
        labels = read_idx(fashion_dir / f"{prefix}-labels-idx1-ubyte.gz", 1)
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"{split}: {images.shape[0]} images but {labels.shape[0]} labels")
        index = balanced_subset(labels, per_class, rng)
        parts[f"x_{split}"] = np.ascontiguousarray(images[index])
        parts[f"y_{split}"] = np.ascontiguousarray(labels[index])
        parts[f"{split}_index"] = index.astype(np.int32)
    return parts


def write_npz(path: Path, arrays: Dict[str, np.ndarray]) -> None:
    """Write a compressed ``.npz`` readable by ``np.load`` whose bytes do not depend on the date.

    ``np.savez_compressed`` stamps every zip entry with the current time; writing the entries
    with a fixed date makes reruns byte-identical (with the same zlib).
    """
    with zipfile.ZipFile(path, "w") as archive:
        for name in sorted(arrays):
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, buffer.getvalue(), compresslevel=9)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT, help="where to write (default: asvp_fast/data)")
    parser.add_argument("--wordnet", type=Path, default=WORDNET_DATA_NOUN, help="WordNet data.noun")
    parser.add_argument("--fashion-dir", type=Path, default=FASHION_DIR, help="folder of the Fashion-MNIST IDX files")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--synsets", type=int, default=12_000, help="noun synsets to keep")
    parser.add_argument("--train-per-class", type=int, default=600, help="Fashion-MNIST training images per class")
    parser.add_argument("--test-per-class", type=int, default=100, help="Fashion-MNIST test images per class")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)

    rows = wordnet_subset(read_noun_synsets(args.wordnet), args.synsets, args.seed)
    write_tsv_gz(args.out_dir / WORDNET_FILE, rows)

    arrays = fashion_subset(args.fashion_dir, args.train_per_class, args.test_per_class, args.seed)
    write_npz(args.out_dir / FASHION_FILE, arrays)

    for name in (WORDNET_FILE, FASHION_FILE):
        print(f"{args.out_dir / name}: {(args.out_dir / name).stat().st_size:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
