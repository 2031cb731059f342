"""torchvision/timm architectures by name with local checkpoints (asvp_fast.loop.models.backbones.vision).

Neither library is installed here (torchvision's wheels pin a torch build; CI must not pull one), so
the tests put small stand-in modules under those names: what is tested is our code — building by
name without pretrained weights, removing the classifier, loading the checkpoint tensors-only with
the classifier's keys dropped, the feature width, preprocessing, ids and errors."""

import sys
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from asvp_fast.loop.models.backbones import VisionBackbone, vision_backbone  # noqa: E402
from asvp_fast.loop.models.backbones.vision import parse_architecture  # noqa: E402


class TinyNet(nn.Module):
    """Shaped like torchvision's classifiers: features, global pooling, then ``fc``."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, classes)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3))
        return self.fc(h)


class TimmNet(TinyNet):
    """Shaped like timm's models: num_classes=0 gives the pooled features, the head is ``head``."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        del self.fc
        self.head = nn.Linear(6, num_classes) if num_classes else nn.Identity()

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


@pytest.fixture
def libraries(monkeypatch):
    built = []

    def tinynet(weights=None):
        assert weights is None  # never a download
        built.append("tinynet")
        return TinyNet()

    tv = types.ModuleType("torchvision")
    models = types.ModuleType("torchvision.models")
    models.tinynet = tinynet
    tv.models = models
    timm = types.ModuleType("timm")

    def create_model(name, pretrained=False, num_classes=1000):
        assert pretrained is False
        if name != "timmnet":
            raise RuntimeError(f"Unknown model ({name})")
        return TimmNet(num_classes)

    timm.create_model = create_model
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.models", models)
    monkeypatch.setitem(sys.modules, "timm", timm)
    return built


def _trained(tmp_path, cls=TinyNet, name="w.pth", **kwargs):
    torch.manual_seed(7)
    net = cls(**kwargs)
    with torch.no_grad():
        for p in net.parameters():
            p.uniform_(-1, 1)
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 2.0)
    path = tmp_path / name
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)
    return net.eval(), path


def test_architecture_names():
    assert parse_architecture("torchvision:resnet18") == ("torchvision", "resnet18")
    assert parse_architecture("resnet18") == ("torchvision", "resnet18")
    assert parse_architecture("timm:vit_small_patch16_224") == ("timm", "vit_small_patch16_224")
    for bad in ("", "keras:resnet", "timm:", 3):
        with pytest.raises(ValueError, match="architecture must be"):
            parse_architecture(bad)


def test_torchvision_checkpoint_gives_the_penultimate_features(libraries, tmp_path):
    net, path = _trained(tmp_path)
    backbone = vision_backbone("torchvision:tinynet", path, image_size=32)
    assert isinstance(backbone, VisionBackbone) and backbone.feature_dim == 6
    images = torch.randint(0, 256, (4, 3, 40, 40), dtype=torch.uint8)
    with torch.no_grad():
        got = backbone(images)
        x = (images.float() - backbone.mean) / backbone.std
        x = nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
        want = torch.relu(net.bn(net.conv(x))).mean(dim=(2, 3))
    torch.testing.assert_close(got, want)
    assert backbone.backbone_id.startswith("torchvision-tinynet-w.pth:") and backbone.backbone_id.endswith("-32px")


def test_timm_checkpoint_drops_the_head(libraries, tmp_path):
    net, path = _trained(tmp_path, cls=TimmNet, num_classes=3)
    backbone = vision_backbone("timm:timmnet", path, image_size=16)
    assert backbone.feature_dim == 6
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), torch.relu(net.bn(net.conv(x))).mean(dim=(2, 3)))


def test_errors_name_the_problem(libraries, tmp_path):
    with pytest.raises(ValueError, match="torchvision.models has no architecture 'nonet'"):
        vision_backbone("torchvision:nonet")
    with pytest.raises(ValueError, match="timm has no architecture 'x'"):
        vision_backbone("timm:x")
    torch.save({"conv.weight": torch.zeros(2, 2)}, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="is not a torchvision:tinynet checkpoint"):
        vision_backbone("torchvision:tinynet", tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="image_size"):
        vision_backbone("torchvision:tinynet", image_size=True)


def test_missing_library_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.models", None)
    with pytest.raises(ImportError, match="torchvision"):
        vision_backbone("torchvision:resnet18")


def test_random_init_leaves_the_callers_rng_alone(libraries):
    torch.manual_seed(3)
    before = torch.random.get_rng_state()
    a, b = vision_backbone("torchvision:tinynet", seed=1), vision_backbone("torchvision:tinynet", seed=1)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert a.backbone_id == "torchvision-tinynet-random-seed1-224px"


def test_image_folder_case_takes_an_architecture(libraries, tmp_path):
    from PIL import Image

    from asvp_fast.loop.cases import imagefolder_case

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    _, path = _trained(tmp_path)
    case = imagefolder_case(tmp_path / "train", tmp_path / "test", checkpoint=path, image_size=16,
                            architecture="torchvision:tinynet")
    backbone = case.make_backbone()
    assert isinstance(backbone, VisionBackbone)
    feats = backbone(case.collate([case.pool[i] for i in range(len(case.pool))]))
    assert feats.shape == (6, 6) and torch.isfinite(feats).all()
