"""Tests for models.py: shapes, value ranges, exact parameter counts (the published architectures), frozen VGG,
official weight layouts, pixel-shuffle orders and network interpolation. Tiny networks keep the file fast."""
import math
import urllib.error

import numpy as np
import pytest
import scipy.ndimage
import torch
import torch.nn.functional as F
from skimage import data as skimage_data
from torch import nn

import cli
import inference
import metrics
import models
import porting
import train_srgan


def count_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ======================================================================================================
# Part A -- SRResNet / SRGAN blocks
# ======================================================================================================

def test_convolutional_block_shapes_and_activations():
    x = torch.randn(2, 3, 10, 12)
    assert models.ConvolutionalBlock(3, 8, 3)(x).shape == (2, 8, 10, 12)
    assert models.ConvolutionalBlock(3, 8, 3, stride=2)(x).shape == (2, 8, 5, 6)
    assert models.ConvolutionalBlock(3, 8, 9)(x).shape == (2, 8, 10, 12)
    out = models.ConvolutionalBlock(3, 8, 3, activation="tanh")(x * 100)
    assert out.abs().max() <= 1 and out.abs().max() > 0.9
    # PReLU / LeakyReLU let negatives through (scaled); BN block has the expected layers.
    block = models.ConvolutionalBlock(3, 8, 3, batch_norm=True, activation="LeakyReLU")
    assert [type(m) for m in block.conv_block] == [nn.Conv2d, nn.BatchNorm2d, nn.LeakyReLU]
    assert block.conv_block[2].negative_slope == 0.2
    with pytest.raises(ValueError, match="activation"):
        models.ConvolutionalBlock(3, 8, 3, activation="relu6")


def test_subpixel_block_matches_conv_then_pixel_shuffle():
    block = models.SubPixelConvolutionalBlock(kernel_size=3, n_channels=4, scaling_factor=3)
    x = torch.randn(1, 4, 5, 6)
    out = block(x)
    assert out.shape == (1, 4, 15, 18)
    # The block is conv -> PixelShuffle -> PReLU, checked against the explicit sub-pixel index formula.
    conv_out = block.conv(x)  # (1, 36, 5, 6)
    expected = torch.empty(1, 4, 15, 18)
    for c in range(4):
        for i in range(3):
            for j in range(3):
                expected[0, c, i::3, j::3] = conv_out[0, c * 9 + i * 3 + j]
    assert torch.allclose(out, block.prelu(expected))


@pytest.mark.parametrize("scaling_factor", [2, 3])
def test_icnr_block_starts_as_conv_then_nearest_upsampling(scaling_factor):
    """ICNR: after models.icnr_ every s x s phase of the block's output is the same map, a smaller convolution (one
    kernel per output channel, the first of its s*s) upsampled by nearest neighbour."""
    s = scaling_factor
    block = models.SubPixelConvolutionalBlock(kernel_size=3, n_channels=5, scaling_factor=s)
    assert models.icnr_(block.conv, s) is block.conv
    x = torch.randn(2, 5, 7, 6)
    shuffled = block.pixel_shuffle(block.conv(x))  # (2, 5, 7 s, 6 s), before the PReLU
    for i in range(s):
        for j in range(s):
            assert torch.equal(shuffled[..., i::s, j::s], shuffled[..., ::s, ::s]), (i, j)
    # PixelShuffle reads output channel c from the convolution's channels c*s*s .. c*s*s + s*s - 1.
    base_weight, base_bias = block.conv.weight[::s * s], block.conv.bias[::s * s]  # (5, 5, 3, 3), (5,)
    nearest = F.interpolate(F.conv2d(x, base_weight, base_bias, padding=1), scale_factor=s, mode="nearest")
    assert torch.allclose(shuffled, nearest, atol=1e-6)
    assert torch.allclose(block(x), block.prelu(nearest), atol=1e-6)
    # The channels still differ from one another: one kernel each, not one for all.
    assert base_weight.flatten(1).std(dim=0).min() > 0


def test_icnr_draws_the_base_kernel_at_pytorchs_default_scale():
    """The repeated kernel has the scale of PyTorch's default Conv2d init for n_channels outputs (uniform in
    +-1/sqrt(fan in), the same fan in as the full convolution), and the biases are repeated too."""
    block = models.SubPixelConvolutionalBlock(kernel_size=3, n_channels=64, scaling_factor=2)
    models.icnr_(block.conv, 2)
    weight, bias = block.conv.weight, block.conv.bias  # (256, 64, 3, 3), (256,)
    reference = nn.Conv2d(64, 64, 3)  # drawn independently, the default way
    base = weight[::4]
    assert abs(base.std() / reference.weight.std() - 1) < 0.03
    assert abs(base.abs().max() / reference.weight.abs().max() - 1) < 0.01
    bound = 1 / math.sqrt(64 * 3 * 3)
    assert bias.abs().max() <= bound and bias[::4].std() > 0.3 * bound
    assert torch.equal(weight, base.repeat_interleave(4, dim=0))
    assert torch.equal(bias, bias[::4].repeat_interleave(4))
    with pytest.raises(ValueError, match="divisible"):
        models.icnr_(nn.Conv2d(4, 6, 3), 2)


def test_icnr_removes_the_lattice_of_an_untrained_srresnet():
    """An untrained x4 SRResNet prints the period-4 pattern of its sub-pixel lattice with PyTorch's default init
    (independent sub-kernels), and not with ICNR, by eval.py's measure (metrics.lattice_contrast, here of the SR
    image's own spectrum) on a smooth photo."""
    lr_imgs = torch.tensor(np.asarray(skimage_data.camera(), dtype=np.float32) / 255)[None, None]  # (1, 1, 512, 512)
    lr_imgs = F.avg_pool2d(lr_imgs, 8).expand(1, 3, 64, 64)  # in [0, 1]
    contrasts = {}
    for init in ("default", "icnr"):
        torch.manual_seed(0)
        generator = models.SRResNet(n_channels=16, n_blocks=2).eval()
        if init == "icnr":
            models.icnr_srresnet_(generator)
        with torch.no_grad():
            sr_y = generator(lr_imgs)[0, 0].numpy()  # (256, 256), in [-1, 1]
        contrasts[init] = metrics.lattice_contrast(10 * np.log10(metrics.welch_power_spectrum(sr_y, 32) + 1e-20))[0]
    assert contrasts["default"] > 10 and abs(contrasts["icnr"]) < 2, contrasts


def test_residual_block_is_identity_plus_correction():
    block = models.ResidualBlock(kernel_size=3, n_channels=8).eval()
    x = torch.randn(2, 8, 7, 7)
    assert block(x).shape == x.shape
    # Silence the second BN (scale and shift 0): the block must then return its input exactly (the skip).
    with torch.no_grad():
        block.conv_block2.conv_block[1].weight.zero_()
        block.conv_block2.conv_block[1].bias.zero_()
    assert torch.equal(block(x), x)


def test_classic_parameter_counts():
    assert count_params(models.SRResNet()) == 1_549_462
    assert count_params(models.Discriminator()) == 23_565_505


def tiny_srresnet(**kwargs):
    return models.SRResNet(n_channels=8, n_blocks=2, **kwargs)


def test_srresnet_shapes_range_and_formats():
    model = tiny_srresnet().eval()
    assert model.scaling_factor == 4
    assert (models.SRResNet.input_format, models.SRResNet.output_format) == ("[0, 1]", "[-1, 1]")
    with torch.no_grad():
        out = model(torch.rand(2, 3, 9, 7) * 50)  # large inputs push the tanh to its limits
    assert out.shape == (2, 3, 36, 28)
    assert out.min() >= -1 and out.max() <= 1
    assert tiny_srresnet(scaling_factor=2).eval()(torch.rand(1, 3, 5, 5)).shape == (1, 3, 10, 10)
    with pytest.raises(ValueError, match="scaling_factor"):
        models.SRResNet(scaling_factor=3)


def test_generator_is_srresnet_with_same_keys():
    srresnet = tiny_srresnet().eval()
    generator = models.Generator(n_channels=8, n_blocks=2).eval()
    generator.load_state_dict(srresnet.state_dict(), strict=True)
    x = torch.rand(1, 3, 6, 6)
    with torch.no_grad():
        assert torch.equal(generator(x), srresnet(x))
    assert isinstance(generator, models.SRResNet)
    assert models.Generator.output_format == "[-1, 1]"


@pytest.mark.parametrize("unshuffle_scale, overall", [(2, 2), (4, 1)])
def test_srresnet_pixel_unshuffle_scales_and_odd_sizes(unshuffle_scale, overall):
    model = models.SRResNet(n_channels=8, n_blocks=2, scaling_factor=overall, unshuffle_scale=unshuffle_scale).eval()
    plain = tiny_srresnet().eval()
    assert isinstance(model, models.SRResNet) and model.scaling_factor == overall
    assert model.unshuffle_scale == unshuffle_scale
    assert model.conv_block1.conv_block[0].in_channels == 3 * unshuffle_scale ** 2
    # Same state-dict layout as the plain model except the first conv's input channels.
    shapes, plain_shapes = ({k: v.shape for k, v in m.state_dict().items()} for m in (model, plain))
    assert shapes.keys() == plain_shapes.keys()
    assert [k for k in shapes if shapes[k] != plain_shapes[k]] == ["conv_block1.conv_block.0.weight"]

    x = torch.rand(1, 3, 13, 10)  # 13 is divisible by neither 2 nor 4
    with torch.no_grad():
        out = model(x)
        assert out.shape == (1, 3, 13 * overall, 10 * overall)
        # Reference: reflect-pad by hand, fold with F.pixel_unshuffle, run the x4 body, crop.
        pad_h, pad_w = (-13) % unshuffle_scale, (-10) % unshuffle_scale
        padded = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")
        feat = model.conv_block1(F.pixel_unshuffle(padded, unshuffle_scale))
        feat = model.conv_block2(model.residual_blocks(feat)) + feat
        ref = model.conv_block3(model.subpixel_convolutional_blocks(feat))[..., :13 * overall, :10 * overall]
    # (The forward runs the last convolution folded, fast_paths.fold_convolution_weight: the same sums in another order.)
    assert torch.allclose(out, ref, atol=1e-6)
    # A 1-pixel side cannot be reflected; it still works (edge replication).
    assert model(torch.rand(1, 3, 1, 5)).shape == (1, 3, overall, 5 * overall)


def test_srresnet_unshuffle_scale_must_divide():
    with pytest.raises(ValueError, match="unshuffle_scale"):
        models.SRResNet(scaling_factor=2, unshuffle_scale=3)
    with pytest.raises(ValueError, match="unshuffle_scale"):
        models.SRResNet(scaling_factor=4, unshuffle_scale=0)
    with pytest.raises(ValueError, match="scaling_factor must be 2, 4 or 8"):
        models.SRResNet(scaling_factor=1)  # an x1 SRResNet is an x4 one behind unshuffle_scale 4


def test_plain_forwards_read_like_the_papers():
    """Without pixel-unshuffle (unshuffle_scale 1), SRResNet and RRDBNet run no padding or folding of the input:
    their forward is the paper's network. (SRResNet runs its last convolution on the folded grid,
    fast_paths.fold_convolution_weight: the same sums in another order, so equal up to float rounding.)"""
    srresnet = tiny_srresnet().eval()
    x = torch.rand(1, 3, 5, 6)
    with torch.no_grad():
        feat = srresnet.conv_block1(x)
        feat = srresnet.conv_block2(srresnet.residual_blocks(feat)) + feat
        paper = srresnet.conv_block3(srresnet.subpixel_convolutional_blocks(feat))
        assert torch.allclose(srresnet(x), paper, atol=1e-6)
    assert srresnet.unshuffle_scale == 1 and models.RRDBNet(num_block=1, num_feat=8, num_grow_ch=4).unshuffle_scale == 1
    rrdb = models.RRDBNet(num_block=1, num_feat=8, num_grow_ch=4).eval()
    with torch.no_grad():
        feat = rrdb.conv_first(x)
        feat = feat + rrdb.conv_body(rrdb.body(feat))
        feat = rrdb.lrelu(rrdb.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")))
        feat = rrdb.lrelu(rrdb.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")))
        assert torch.equal(rrdb(x), rrdb.conv_last(rrdb.lrelu(rrdb.conv_hr(feat))))


@pytest.mark.parametrize("size", [96, 128])
def test_discriminator_any_input_size(size):
    disc = models.Discriminator(n_channels=8, fc_size=16)
    out = disc(torch.rand(3, 3, size, size) * 2 - 1)
    assert out.shape == (3,)
    out.sum().backward()  # trainable end to end
    assert disc.conv_blocks[0].conv_block[0].weight.grad is not None


def test_discriminator_layout():
    disc = models.Discriminator()
    strides = [b.conv_block[0].stride[0] for b in disc.conv_blocks]
    channels = [b.conv_block[0].out_channels for b in disc.conv_blocks]
    assert strides == [1, 2] * 4
    assert channels == [64, 64, 128, 128, 256, 256, 512, 512]
    assert not isinstance(disc.conv_blocks[0].conv_block[1], nn.BatchNorm2d)
    assert all(isinstance(b.conv_block[1], nn.BatchNorm2d) for b in disc.conv_blocks[1:])


def test_discriminator_antialias_blurs_before_each_stride_2_block():
    """antialias=True: the same weights and names; each stride-2 block gets its input low-passed (BinomialBlur)."""
    torch.manual_seed(0)
    plain = models.Discriminator(n_channels=8, n_blocks=4, fc_size=16).eval()
    antialiased = models.Discriminator(n_channels=8, n_blocks=4, fc_size=16, antialias=True).eval()
    antialiased.load_state_dict(plain.state_dict(), strict=True)
    assert set(antialiased.state_dict()) == set(plain.state_dict())
    x = torch.rand(2, 3, 24, 24)
    blur = models.BinomialBlur()
    by_hand = plain.conv_blocks[3](blur(plain.conv_blocks[2](plain.conv_blocks[1](blur(plain.conv_blocks[0](x))))))
    by_hand = plain.fc2(plain.leaky_relu(plain.fc1(plain.adaptive_pool(by_hand).flatten(1)))).squeeze(1)
    with torch.no_grad():
        assert torch.allclose(antialiased(x), by_hand, atol=1e-6)
        assert not torch.allclose(antialiased(x), plain(x))


def test_discriminator_first_kernel_size():
    """The paper's (and the classic tutorial's code's) 3 x 3 everywhere by default; the tutorial's text's 9 x 9 first
    convolution on request (train_srgan.py --first_kernel_size_d 9), the other convolutions unchanged."""
    kernels = lambda disc: [b.conv_block[0].kernel_size for b in disc.conv_blocks]  # noqa: E731
    assert kernels(models.Discriminator(n_channels=8, fc_size=16)) == [(3, 3)] * 8
    disc = models.Discriminator(n_channels=8, fc_size=16, first_kernel_size=9)
    assert kernels(disc) == [(9, 9)] + [(3, 3)] * 7 and disc.conv_blocks[0].conv_block[0].padding == (4, 4)
    assert disc(torch.rand(2, 3, 40, 40)).shape == (2,)
    hp = cli.parse_hyperparameters(train_srgan.hyperparameters, "", argv=["--first_kernel_size_d", "9"])
    discriminator, kwargs = train_srgan.build_discriminator(hp)
    assert kwargs["first_kernel_size"] == 9 and kernels(discriminator)[:2] == [(9, 9), (3, 3)]
    assert "first_kernel_size" not in train_srgan.build_discriminator(  # stored as before when it is the paper's
        cli.parse_hyperparameters(train_srgan.hyperparameters, "", argv=[]))[1]


def test_build_generator():
    assert type(models.build_generator("srresnet", n_blocks=1, n_channels=4)) is models.SRResNet
    rrdb = models.build_generator("rrdb", num_block=1, num_feat=8, num_grow_ch=4, scale=2)
    assert isinstance(rrdb, models.RRDBNet) and rrdb.scaling_factor == 2 and rrdb.unshuffle_scale == 2
    unshuffle = models.build_generator("srresnet", n_blocks=1, n_channels=4, scaling_factor=1, unshuffle_scale=4)
    assert type(unshuffle) is models.SRResNet and unshuffle.scaling_factor == 1 and unshuffle.unshuffle_scale == 4
    with pytest.raises(ValueError, match="srresnet"):
        models.build_generator("edsr")


@pytest.mark.parametrize("use_unshuffle, unshuffle_scale, body_scale, overall", [
    (False, 2, 4, 4), (False, 2, 2, 2), (True, 2, 4, 2), (True, 4, 4, 1)])
def test_build_generator_accepts_the_arguments_older_checkpoints_stored(use_unshuffle, unshuffle_scale, body_scale,
                                                                         overall):
    """Older checkpoints stored the BODY's scale, use_unshuffle and unshuffle_scale."""
    old = dict(large_kernel_size=3, small_kernel_size=3, n_channels=4, n_blocks=1, scaling_factor=body_scale,
               use_unshuffle=use_unshuffle, unshuffle_scale=unshuffle_scale)
    model = models.build_generator("srresnet", **old)
    assert model.scaling_factor == overall and (model.unshuffle_scale > 1) == use_unshuffle
    new = models.upgrade_generator_kwargs("srresnet", old)
    assert "use_unshuffle" not in new and new["scaling_factor"] == overall
    assert new.get("unshuffle_scale") == (unshuffle_scale if use_unshuffle else None)
    assert models.upgrade_generator_kwargs("srresnet", new) == new  # today's arguments are left as they are
    # The generator keeps today's arguments, and they build it again (what export.py saves).
    assert model.generator_arch == "srresnet" and model.generator_kwargs == new
    rebuilt = models.build_generator(model.generator_arch, **model.generator_kwargs)
    assert type(rebuilt) is type(model) and rebuilt.state_dict().keys() == model.state_dict().keys()


def test_generators_of_official_files_keep_how_to_build_them():
    for arch, kwargs in (("rrdb", dict(num_feat=8, num_block=2, num_grow_ch=4, scale=2)),
                         ("compact", dict(num_feat=8, num_conv=3, upscale=2))):
        original = models.build_generator(arch, **kwargs)
        model, _ = porting.generator_from_official_state_dict({"params_ema": original.state_dict()})
        assert model.generator_arch == arch
        rebuilt = models.build_generator(model.generator_arch, **model.generator_kwargs)
        rebuilt.load_state_dict(original.state_dict())  # the same shapes, strictly
        assert type(rebuilt) is type(original) and rebuilt.scaling_factor == original.scaling_factor


# ======================================================================================================
# Part A -- the frozen VGG19
# ======================================================================================================

# Building a VGG19 costs seconds (143 M parameters, mostly the classifier we never use), so the tests build ONE
# random VGG19 through the real load_vgg19('random') and hand that same model to every module under test.
_RANDOM_VGG19 = []
_LOAD_VGG19 = models.load_vgg19  # the real one, whatever a test has patched in its place


def random_vgg19(weights="random"):
    assert weights == "random"
    if not _RANDOM_VGG19:
        _RANDOM_VGG19.append(_LOAD_VGG19("random"))
    return _RANDOM_VGG19[0]


@pytest.fixture
def shared_random_vgg(monkeypatch):
    monkeypatch.setattr(models, "load_vgg19", random_vgg19)


def independent_vgg_index(i, j, before_activation):
    """Walk torchvision's vgg19().features counting convs and pools: index (inclusive) of phi_{i,j}."""
    pools = convs = 0
    for index, layer in enumerate(random_vgg19().features):
        if isinstance(layer, nn.MaxPool2d):
            pools, convs = pools + 1, 0
        elif isinstance(layer, nn.Conv2d):
            convs += 1
            if pools == i - 1 and convs == j:
                return index if before_activation else index + 1  # the ReLU right after the conv
    raise AssertionError("layer not found")


@pytest.fixture(scope="module")
def vgg54():
    """SRGAN's VGG54: relu5_4, the 4th convolution before the 5th max-pool, after its ReLU."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(models, "load_vgg19", random_vgg19)
        return models.VGGFeatureExtractor(["relu5_4"], weights="random")


def test_vgg19_layer_names_match_torchvision():
    features = random_vgg19().features
    assert isinstance(features, nn.Sequential) and type(random_vgg19()).__name__ == "VGG"
    names = models.vgg19_layer_names()
    assert len(names) == len(features) == 37
    prefixes = {nn.Conv2d: "conv", nn.ReLU: "relu", nn.MaxPool2d: "pool"}
    assert [prefixes[type(layer)] for layer in features] == [name[:4] for name in names]


@pytest.mark.parametrize("i, j, before", [(5, 4, False), (2, 2, False), (5, 4, True), (2, 2, True)])
def test_vgg_layer_names_are_literal(i, j, before, vgg54, shared_random_vgg):
    name = f"{'conv' if before else 'relu'}{i}_{j}"  # convX_Y: before its ReLU; reluX_Y: after it
    expected_len = independent_vgg_index(i, j, before) + 1
    model = vgg54 if name == "relu5_4" else models.VGGFeatureExtractor([name], weights="random")
    assert len(model.features) == expected_len
    assert isinstance(model.features[-1], nn.Conv2d if before else nn.ReLU)
    out = model(torch.randn(1, 3, 32, 32))[name]
    channels = {2: 128, 5: 512}[i]
    assert out.shape == (1, channels, 32 // 2 ** (i - 1), 32 // 2 ** (i - 1))
    assert (out.min() < 0) == before  # before the ReLU there are negatives, after it none


def test_vgg_is_frozen_and_stays_eval(vgg54, shared_random_vgg):
    assert all(not p.requires_grad for p in vgg54.parameters())
    parent = nn.Sequential(nn.Conv2d(3, 3, 1), vgg54)
    parent.train()
    assert parent[0].training and not vgg54.training
    assert not any(m.training for m in vgg54.modules())
    # Gradients flow through it to its input (the generator), but not into it.
    x = torch.randn(1, 3, 16, 16, requires_grad=True)
    vgg54(x)["relu5_4"].sum().backward()
    assert x.grad is not None and all(p.grad is None for p in vgg54.parameters())


def test_vgg_feature_extractor_layers(vgg54, shared_random_vgg):
    extractor = models.VGGFeatureExtractor(
        {"conv1_2": 0.1, "conv2_2": 0.1, "conv3_4": 1, "conv4_4": 1, "conv5_4": 1}, weights="random")
    assert len(extractor.features) == independent_vgg_index(5, 4, True) + 1
    assert not extractor.training and all(not p.requires_grad for p in extractor.parameters())
    x = torch.randn(1, 3, 32, 32)
    feats = extractor(x)
    assert list(feats) == ["conv1_2", "conv2_2", "conv3_4", "conv4_4", "conv5_4"]
    assert [f.shape[1:] for f in feats.values()] == [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4),
                                                    (512, 2, 2)]
    # Independent reference: run the frozen layers by hand up to conv1_2 (index 2) -- before its ReLU.
    assert torch.equal(feats["conv1_2"], extractor.features[:3](x)) and feats["conv1_2"].min() < 0
    assert torch.allclose(feats["conv5_4"], vgg54.features[:35](x))
    # A list of names gives weight 1 each; after-activation features are non-negative.
    after = models.VGGFeatureExtractor(["relu2_2"], weights="random")
    assert after.layer_weights == {"relu2_2": 1.0}
    assert after(x)["relu2_2"].min() >= 0
    with pytest.raises(ValueError, match="unknown VGG19 layer"):
        models.VGGFeatureExtractor(["conv6_1"], weights="random")


def test_vgg_average_pooling(shared_random_vgg):
    """pooling='avg': the same convolutions (the same weights), 2x2 average pooling where VGG19 max-pools."""
    torch.manual_seed(0)
    max_pooled = models.VGGFeatureExtractor(["conv3_1"], weights="random")
    avg_pooled = models.VGGFeatureExtractor(["conv3_1"], weights="random", pooling="avg")
    avg_pooled.load_state_dict(max_pooled.state_dict())
    assert [type(layer) for layer in avg_pooled.features] == [
        nn.AvgPool2d if isinstance(layer, nn.MaxPool2d) else type(layer) for layer in max_pooled.features]
    x = torch.rand(1, 3, 16, 16)
    by_hand = x
    for layer in max_pooled.features:
        by_hand = torch.nn.functional.avg_pool2d(by_hand, 2) if isinstance(layer, nn.MaxPool2d) else layer(by_hand)
    assert torch.allclose(avg_pooled(x)["conv3_1"], by_hand)
    with pytest.raises(ValueError, match="pooling must be"):
        models.VGGFeatureExtractor(["conv3_1"], weights="random", pooling="min")


def test_vgg_weights_unavailable_gives_actionable_error(monkeypatch):
    import torchvision

    def offline_vgg19(weights=None, **kwargs):
        if weights is not None:  # what torchvision does without internet, minus the ~5 s wait
            raise urllib.error.URLError("[Errno -2] Name or service not known")
        raise AssertionError("only the ImageNet weights should be requested")

    monkeypatch.setattr(torchvision.models, "vgg19", offline_vgg19)
    with pytest.raises(RuntimeError) as info:
        models.VGGFeatureExtractor(["relu5_4"], weights="imagenet")
    message = str(info.value)
    url = torchvision.models.VGG19_Weights.IMAGENET1K_V1.url
    assert "vgg19-dcbb9e9d.pth" in message and url in message
    assert str(torch.hub.get_dir()) in message and "checkpoints" in message
    assert "path" in message and "'random'" in message
    with pytest.raises(FileNotFoundError, match="vgg19-dcbb9e9d.pth"):
        models.load_vgg19("/nonexistent/vgg19.pth")


def test_vgg_weights_from_file(monkeypatch, tmp_path):
    # The real file is 548 MB; stand in a tiny model with a `features` Sequential to test the loading path.
    import torchvision

    def small_vgg19(weights=None, **kwargs):
        model = nn.Module()
        model.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True))
        return model

    monkeypatch.setattr(torchvision.models, "vgg19", small_vgg19)
    saved = small_vgg19()
    torch.save(saved.state_dict(), tmp_path / "vgg19-dcbb9e9d.pth")
    loaded = models.load_vgg19(tmp_path / "vgg19-dcbb9e9d.pth")
    assert torch.equal(loaded.features[0].weight, saved.features[0].weight)
    assert not loaded.training
    (tmp_path / "not_vgg.pth").write_bytes(b"these are not weights")
    with pytest.raises(ValueError, match="not torchvision's VGG19 state dict"):
        models.load_vgg19(tmp_path / "not_vgg.pth")


# ======================================================================================================
# Part B -- ESRGAN: RRDBNet
# ======================================================================================================

def tiny_rrdb(**kwargs):
    return models.RRDBNet(num_block=2, num_feat=16, num_grow_ch=8, **kwargs).eval()


def test_rrdbnet_parameter_counts():
    assert count_params(models.RRDBNet()) == 16_697_987
    assert count_params(models.RRDBNet(scale=2)) == 16_703_171
    assert count_params(models.RRDBNet(num_block=6)) == 4_467_779


def test_rrdbnet_state_dict_names():
    keys = set(tiny_rrdb().state_dict())
    expected = {f"{name}.{p}" for name in ("conv_first", "conv_body", "conv_up1", "conv_up2", "conv_hr", "conv_last")
                for p in ("weight", "bias")}
    expected |= {f"body.{i}.rdb{k}.conv{n}.{p}" for i in range(2) for k in (1, 2, 3) for n in range(1, 6)
                 for p in ("weight", "bias")}
    assert keys == expected
    assert (models.RRDBNet.input_format, models.RRDBNet.output_format) == ("[0, 1]", "[0, 1]")


@pytest.mark.parametrize("scale, in_channels", [(4, 3), (2, 12), (1, 48)])
def test_rrdbnet_scales_and_odd_sizes(scale, in_channels):
    model = tiny_rrdb(scale=scale)
    assert model.scaling_factor == scale and model.conv_first.in_channels == in_channels
    x = torch.rand(1, 3, 11, 6)  # 11 divisible by neither 2 nor 4
    with torch.no_grad():
        out = model(x)
        assert out.shape == (1, 3, 11 * scale, 6 * scale)
        # Reference for the front end: reflect-pad by hand, F.pixel_unshuffle, then the x4 trunk by hand.
        r = 4 // scale
        padded = F.pad(x, (0, (-6) % r, 0, (-11) % r), mode="reflect") if r > 1 else x
        feat = model.conv_first(F.pixel_unshuffle(padded, r))
        feat = feat + model.conv_body(model.body(feat))
        for conv in (model.conv_up1, model.conv_up2):
            feat = F.leaky_relu(conv(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
        ref = model.conv_last(F.leaky_relu(model.conv_hr(feat), 0.2))[..., :11 * scale, :6 * scale]
    assert torch.allclose(out, ref, atol=1e-6)


def test_residual_dense_block_and_rrdb_residual_scaling():
    rdb = models.ResidualDenseBlock(num_feat=8, num_grow_ch=4)
    assert [rdb.conv5.in_channels, rdb.conv5.out_channels] == [8 + 4 * 4, 8]
    x = torch.randn(1, 8, 5, 5)
    with torch.no_grad():
        x1 = F.leaky_relu(rdb.conv1(x), 0.2)
        x2 = F.leaky_relu(rdb.conv2(torch.cat([x, x1], 1)), 0.2)
        x3 = F.leaky_relu(rdb.conv3(torch.cat([x, x1, x2], 1)), 0.2)
        x4 = F.leaky_relu(rdb.conv4(torch.cat([x, x1, x2, x3], 1)), 0.2)
        x5 = rdb.conv5(torch.cat([x, x1, x2, x3, x4], 1))
        assert torch.allclose(rdb(x), x + 0.2 * x5, atol=1e-6)
        rrdb = models.RRDB(num_feat=8, num_grow_ch=4)
        assert torch.allclose(rrdb(x), x + 0.2 * rrdb.rdb3(rrdb.rdb2(rrdb.rdb1(x))), atol=1e-6)


# ======================================================================================================
# Part B -- pixel shuffle across frameworks, checked against the explicit index formulas
# ======================================================================================================

R, C, H, W = 3, 2, 2, 3


def test_pixel_shuffle_pytorch_matches_formula_and_torch():
    x = torch.randn(2, C * R * R, H, W)
    out = porting.pixel_shuffle_pytorch(x, R)
    expected = torch.empty(2, C, H * R, W * R)
    for c in range(C):
        for h in range(H):
            for w in range(W):
                for i in range(R):
                    for j in range(R):
                        expected[:, c, h * R + i, w * R + j] = x[:, c * R * R + i * R + j, h, w]
    assert torch.equal(out, expected)
    assert torch.equal(out, F.pixel_shuffle(x, R))
    assert torch.equal(porting.pixel_unshuffle_pytorch(out, R), x)
    y = torch.randn(1, C, H * R, W * R)
    assert torch.equal(porting.pixel_unshuffle_pytorch(y, R), F.pixel_unshuffle(y, R))


def test_depth_to_space_tf_matches_formula_and_round_trips():
    x = torch.randn(2, H, W, C * R * R)  # NHWC
    out = porting.depth_to_space_tf(x, R)
    expected = torch.empty(2, H * R, W * R, C)
    for c in range(C):
        for h in range(H):
            for w in range(W):
                for i in range(R):
                    for j in range(R):
                        expected[:, h * R + i, w * R + j, c] = x[:, h, w, (i * R + j) * C + c]
    assert torch.equal(out, expected)
    assert torch.equal(porting.space_to_depth_tf(out, R), x)
    y = torch.randn(1, H * R, W * R, C)
    assert torch.equal(porting.depth_to_space_tf(porting.space_to_depth_tf(y, R), R), y)
    # With one channel the two orders coincide (only the sub-pixel position is left to order).
    z = torch.randn(1, R * R, H, W)
    assert torch.equal(porting.depth_to_space_tf(z.permute(0, 2, 3, 1), R).permute(0, 3, 1, 2),
                       F.pixel_shuffle(z, R))


def test_caffe_dtow_order():
    # The index arithmetic of RealSR's Caffe "Dtow" layer (MDTOW), over flat NCHW offsets, re-typed here.
    x = torch.randn(1, C * R * R, H, W)
    flat_in = x.flatten()
    flat_out = torch.empty_like(flat_in)
    h_out, w_out, p2 = H * R, W * R, R * R
    for index in range(flat_in.numel()):
        tw, th, tc = index % W, (index // W) % H, (index // W // H) % (C * p2)
        pc, rc = tc // p2, tc % p2
        ph, pw = th * R + rc // R, tw * R + rc % R
        flat_out[(pc * h_out + ph) * w_out + pw] = flat_in[index]
    out = porting.pixel_shuffle_caffe(x, R)
    assert torch.equal(out.flatten(), flat_out)
    assert torch.equal(porting.pixel_unshuffle_caffe(out, R), x)


def test_shuffle_channel_permutation_ports_a_tf_upsampler():
    assert torch.equal(porting.shuffle_channel_permutation(C, R, "caffe"), torch.arange(C * R * R))
    assert torch.equal(porting.shuffle_channel_permutation(C, R, "pytorch"), torch.arange(C * R * R))
    perm = porting.shuffle_channel_permutation(C, R, "tensorflow")
    assert sorted(perm.tolist()) == list(range(C * R * R))  # a true permutation

    tf_conv = nn.Conv2d(4, C * R * R, 3, padding=1)  # the "TensorFlow" convolution, its channels in DCR order
    x = torch.randn(2, 4, H, W)
    with torch.no_grad():
        tf_out = porting.depth_to_space_tf(tf_conv(x).permute(0, 2, 3, 1), R).permute(0, 3, 1, 2)  # back to NCHW
        ported = nn.Conv2d(4, C * R * R, 3, padding=1)
        ported.weight.copy_(tf_conv.weight[perm])
        ported.bias.copy_(tf_conv.bias[perm])
        torch_out = nn.PixelShuffle(R)(ported(x))
        assert torch.allclose(torch_out, tf_out, atol=1e-6)
        assert not torch.allclose(nn.PixelShuffle(R)(tf_conv(x)), tf_out)  # without the permutation: wrong
    with pytest.raises(ValueError, match="order"):
        porting.shuffle_channel_permutation(C, R, "mxnet")


# ======================================================================================================
# Part B -- official ESRGAN / Real-ESRGAN files
# ======================================================================================================

def to_esrgan_layout(state_dict):
    """Our names -> xinntao/ESRGAN RRDBNet_arch.py names (written out independently of models.py)."""
    renamed = {}
    heads = {"conv_body": "trunk_conv", "conv_up1": "upconv1", "conv_up2": "upconv2", "conv_hr": "HRconv"}
    for key, value in state_dict.items():
        parts = key.split(".")
        if parts[0] == "body":  # body.i.rdbk.convn.p -> RRDB_trunk.i.RDBk.convn.p
            key = f"RRDB_trunk.{parts[1]}.RDB{parts[2][3:]}.{parts[3]}.{parts[4]}"
        elif parts[0] in heads:
            key = f"{heads[parts[0]]}.{parts[1]}"
        renamed[key] = value
    return renamed


def to_old_esrgan_layout(state_dict, num_block):
    """Our names -> the sequential 'model.N' layout of RRDB_ESRGAN_x4_old_arch.pth."""
    heads = {"conv_first": "model.0", "conv_body": f"model.1.sub.{num_block}", "conv_up1": "model.3",
             "conv_up2": "model.6", "conv_hr": "model.8", "conv_last": "model.10"}
    renamed = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        if parts[0] == "body":
            key = f"model.1.sub.{parts[1]}.RDB{parts[2][3:]}.{parts[3]}.0.{parts[4]}"
        else:
            key = f"{heads[parts[0]]}.{parts[1]}"
        renamed[key] = value
    return renamed


@pytest.mark.parametrize("layout", ["basicsr", "basicsr-params", "esrgan", "esrgan-old"])
@pytest.mark.parametrize("scale", [4, 2, 1])
def test_official_layouts_load_strictly_with_identical_outputs(layout, scale):
    reference = tiny_rrdb(scale=scale)
    with torch.no_grad():  # make biases non-zero so that a mixed-up bias would show
        for param in reference.parameters():
            param.add_(torch.randn_like(param) * 0.01)
    ours = reference.state_dict()
    files = {"basicsr": {"params_ema": ours}, "basicsr-params": {"params": ours},
             "esrgan": to_esrgan_layout(ours), "esrgan-old": to_old_esrgan_layout(ours, num_block=2)}
    checkpoint = files[layout]
    assert porting.is_official_generator_state_dict(checkpoint)
    model, description = porting.generator_from_official_state_dict(checkpoint)
    assert isinstance(model, models.RRDBNet) and not model.training
    assert model.scaling_factor == scale and len(model.body) == 2 and model.conv_first.out_channels == 16
    assert model.body[0].rdb1.conv1.out_channels == 8
    assert f"x{scale}" in description and "2 blocks" in description
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


def test_official_params_ema_preferred():
    ema, raw = tiny_rrdb().state_dict(), tiny_rrdb().state_dict()
    model, description = porting.generator_from_official_state_dict({"params": raw, "params_ema": ema})
    assert torch.equal(model.conv_first.weight, ema["conv_first.weight"])
    assert not torch.equal(model.conv_first.weight, raw["conv_first.weight"])
    assert "params_ema" in description


def test_official_wrong_keys_error_lists_them():
    state = tiny_rrdb().state_dict()
    state["conv_up3.weight"] = state["conv_up2.weight"].clone()  # an x8 model's extra layer
    del state["conv_hr.bias"]
    with pytest.raises(ValueError) as info:
        porting.generator_from_official_state_dict(state)
    message = str(info.value)
    assert "missing keys: conv_hr.bias" in message and "unexpected keys: conv_up3.weight" in message
    assert "RealESRGAN_x4plus.pth" in message  # says what files are supported
    # Not an RRDBNet at all: recognised as such, with the same guidance.
    assert not porting.is_official_generator_state_dict(tiny_srresnet().state_dict())
    assert not porting.is_official_generator_state_dict({"kind": "srgan", "generator": {}})
    with pytest.raises(ValueError, match="supported files"):
        porting.generator_from_official_state_dict(tiny_srresnet().state_dict())
    # Same names, wrong shape: still a ValueError, not PyTorch's RuntimeError.
    state = tiny_rrdb().state_dict()
    state["conv_up1.weight"] = state["conv_up1.weight"][:, :, :1, :1].clone()
    with pytest.raises(ValueError, match="conv_up1.weight"):
        porting.generator_from_official_state_dict(state)


# ======================================================================================================
# Part B -- network interpolation
# ======================================================================================================

def test_interpolation_exact_at_0_half_1():
    psnr, gan = tiny_rrdb().state_dict(), tiny_rrdb().state_dict()
    blended0, skipped = inference.interpolate_state_dicts(psnr, gan, 0.0)
    blended1, _ = inference.interpolate_state_dicts(psnr, gan, 1.0)
    half, _ = inference.interpolate_state_dicts(psnr, gan, 0.5)
    assert skipped == [] and list(blended0) == list(psnr)
    for key in psnr:
        assert torch.equal(blended0[key], psnr[key]) and torch.equal(blended1[key], gan[key])
        assert torch.equal(half[key], (psnr[key] + gan[key]) / 2)
    # The blended dict is a working model.
    model = tiny_rrdb()
    model.load_state_dict(half)
    with pytest.raises(ValueError, match="alpha"):
        inference.interpolate_state_dicts(psnr, gan, 1.5)


def test_interpolation_mismatches():
    psnr = tiny_srresnet().state_dict()
    gan = models.SRResNet(n_channels=8, n_blocks=2, scaling_factor=2, unshuffle_scale=2).state_dict()
    gan["extra.weight"] = torch.zeros(1)
    del gan["conv_block3.conv_block.0.bias"]
    with pytest.raises(ValueError) as info:
        inference.interpolate_state_dicts(psnr, gan, 0.5)
    for key in ("conv_block1.conv_block.0.weight", "extra.weight", "conv_block3.conv_block.0.bias"):
        assert key in str(info.value)
    blended, skipped = inference.interpolate_state_dicts(psnr, gan, 0.25, skip_mismatched=True)
    assert sorted(skipped) == sorted(["conv_block1.conv_block.0.weight", "extra.weight",
                                      "conv_block3.conv_block.0.bias"])
    assert list(blended) == list(psnr)
    assert torch.equal(blended["conv_block1.conv_block.0.weight"], psnr["conv_block1.conv_block.0.weight"])
    key = "conv_block2.conv_block.0.weight"
    assert torch.allclose(blended[key], 0.75 * psnr[key] + 0.25 * gan[key])
    # Integer buffers (BatchNorm's num_batches_tracked) are copied, not blended.
    int_key = "conv_block2.conv_block.1.num_batches_tracked"
    assert blended[int_key].dtype == torch.long and torch.equal(blended[int_key], psnr[int_key])


# ======================================================================================================
# Part C -- Real-ESRGAN's U-Net discriminator
# ======================================================================================================

def test_unet_discriminator_parameter_count():
    # Count as Real-ESRGAN would: trainable parameters only (spectral norm's weight_u / weight_v are buffers).
    model = models.UNetDiscriminatorSN()
    assert sum(p.numel() for p in model.parameters()) == 4_376_897


@pytest.mark.parametrize("size", [64, 96])
def test_unet_discriminator_per_pixel_logits(size):
    model = models.UNetDiscriminatorSN(num_feat=8)
    out = model(torch.rand(2, 3, size, size))
    assert out.shape == (2, 1, size, size)
    out.mean().backward()
    assert model.conv1.weight_orig.grad is not None
    # Sizes that are not multiples of 8 still give one logit per input pixel.
    assert model(torch.rand(1, 3, 30, 21)).shape == (1, 1, 30, 21)


def test_binomial_blur_is_the_121_filter_with_repeated_borders():
    """Against scipy's convolution with the same kernel and mode 'nearest' (borders repeated), channel by channel."""
    x = torch.rand(2, 3, 9, 7, dtype=torch.float64)
    kernel = np.outer([1, 2, 1], [1, 2, 1]) / 16
    expected = np.stack([[scipy.ndimage.convolve(channel, kernel, mode="nearest") for channel in img]
                         for img in x.numpy()])
    assert np.allclose(models.BinomialBlur()(x).numpy(), expected, atol=1e-12)
    assert models.BinomialBlur().state_dict() == {}                         # a constant, nothing to save


def gradient_lattice_contrast(discriminator):
    """dB by which the x4 lattice frequencies stand out in the power spectrum of the discriminator's gradient with
    respect to its input (metrics.lattice_contrast), on smooth random 64x64 images."""
    torch.manual_seed(0)
    imgs = torch.nn.functional.interpolate(torch.rand(4, 3, 16, 16), scale_factor=4, mode="bicubic")
    imgs.requires_grad_(True)
    discriminator(imgs).mean().backward()
    grey = imgs.grad.sum(dim=1).double().numpy()                                  # (4, 64, 64)
    power = np.mean([metrics.welch_power_spectrum(g, 32) for g in grey], axis=0)
    return metrics.lattice_contrast(10 * np.log10(power))[0]


def test_unet_discriminator_antialias_keeps_the_weights_and_removes_the_checkerboard_of_its_gradient():
    """antialias=True: the same state dict (Real-ESRGAN's discriminator weights load into it), the blur before each
    strided convolution, and a gradient without the strong x4 lattice that the strided convolutions print into it."""
    torch.manual_seed(0)
    plain = models.UNetDiscriminatorSN(num_feat=16)
    antialiased = models.UNetDiscriminatorSN(num_feat=16, antialias=True)
    antialiased.load_state_dict(plain.state_dict(), strict=True)
    assert set(antialiased.state_dict()) == set(plain.state_dict())
    x = torch.rand(1, 3, 32, 32)
    assert antialiased(x).shape == plain(x).shape == (1, 1, 32, 32)
    assert isinstance(antialiased.blur, models.BinomialBlur) and isinstance(plain.blur, nn.Identity)
    assert gradient_lattice_contrast(plain) > 8
    assert gradient_lattice_contrast(antialiased) < 2


def test_unet_discriminator_realesrgan_state_dict_names():
    model = models.UNetDiscriminatorSN(num_feat=8)
    state = model.state_dict()
    expected = {"conv0.weight", "conv0.bias", "conv9.weight", "conv9.bias"}
    expected |= {f"conv{i}.{p}" for i in range(1, 9) for p in ("weight_orig", "weight_u", "weight_v")}
    assert set(state) == expected
    # A state dict written out from Real-ESRGAN's architecture (names AND shapes, independently of models.py; conv1 to
    # conv8 are spectral-normalised and have no bias) loads strictly, and its values are the ones used.
    f = 8
    shapes = {"conv0.weight": (f, 3, 3, 3), "conv0.bias": (f,), "conv9.weight": (1, f, 3, 3), "conv9.bias": (1,)}
    normalised = {1: (2 * f, f, 4, 4), 2: (4 * f, 2 * f, 4, 4), 3: (8 * f, 4 * f, 4, 4), 4: (4 * f, 8 * f, 3, 3),
                  5: (2 * f, 4 * f, 3, 3), 6: (f, 2 * f, 3, 3), 7: (f, f, 3, 3), 8: (f, f, 3, 3)}
    for i, shape in normalised.items():
        shapes[f"conv{i}.weight_orig"] = shape
        shapes[f"conv{i}.weight_u"] = (shape[0],)  # power-iteration vectors: output size, and input size x kernel
        shapes[f"conv{i}.weight_v"] = (shape[1] * shape[2] * shape[3],)
    realesrgan = {name: torch.randn(shape) for name, shape in shapes.items()}
    other = models.UNetDiscriminatorSN(num_feat=f)
    other.load_state_dict(realesrgan, strict=True)
    assert torch.equal(other.conv9.bias, realesrgan["conv9.bias"])
    assert torch.equal(other.conv3.weight_orig, realesrgan["conv3.weight_orig"])
    # Skip connections change the output (they are wired in).
    no_skip = models.UNetDiscriminatorSN(num_feat=8, skip_connection=False)
    no_skip.load_state_dict(model.state_dict())
    x = torch.rand(1, 3, 16, 16)
    model.eval(), no_skip.eval()
    with torch.no_grad():
        assert not torch.allclose(model(x), no_skip(x))


# ======================================================================================================
# Part D -- Real-ESRGAN's compact network (SRVGGNetCompact)
# ======================================================================================================

def compact_shapes(num_feat, num_conv, scale, channels=3):
    """The official state dict's keys and shapes, written out from the architecture's description (not from models.py):
    body.0 conv 3x3 (channels -> F), body.1 PReLU(F), then num_conv x (conv 3x3 F -> F, PReLU(F)), then the last conv
    3x3 F -> channels * s^2."""
    shapes = {"body.0.weight": (num_feat, channels, 3, 3), "body.0.bias": (num_feat,), "body.1.weight": (num_feat,)}
    for k in range(1, num_conv + 1):
        shapes[f"body.{2 * k}.weight"] = (num_feat, num_feat, 3, 3)
        shapes[f"body.{2 * k}.bias"] = (num_feat,)
        shapes[f"body.{2 * k + 1}.weight"] = (num_feat,)
    last = 2 * (num_conv + 1)
    shapes[f"body.{last}.weight"] = (channels * scale ** 2, num_feat, 3, 3)
    shapes[f"body.{last}.bias"] = (channels * scale ** 2,)
    return shapes


def compact_reference(state, x, scale):
    """SRVGGNetCompact's forward from plain functional calls: conv, prelu, ..., conv, pixel shuffle, + nearest input."""
    out, index = x, 0
    while f"body.{index + 1}.weight" in state:  # a convolution followed by its PReLU
        out = F.prelu(F.conv2d(out, state[f"body.{index}.weight"], state[f"body.{index}.bias"], padding=1),
                      state[f"body.{index + 1}.weight"])
        index += 2
    out = F.conv2d(out, state[f"body.{index}.weight"], state[f"body.{index}.bias"], padding=1)
    return F.pixel_shuffle(out, scale) + F.interpolate(x, scale_factor=scale, mode="nearest")


@pytest.mark.parametrize("num_conv, expected", [(16, 621_424), (32, 1_213_296)])
def test_compact_parameter_counts_of_the_released_models(num_conv, expected):
    # Independent count: first conv 3*64*9 + 64, 17 or 33 PReLUs of 64 slopes, num_conv convs 64*64*9 + 64, last conv
    # 64*48*9 + 48 -- the sum of the official shapes.
    by_hand = 3 * 64 * 9 + 64 + (num_conv + 1) * 64 + num_conv * (64 * 64 * 9 + 64) + 64 * 48 * 9 + 48
    by_shapes = sum(math.prod(shape) for shape in compact_shapes(64, num_conv, 4).values())
    assert by_hand == by_shapes == expected
    assert count_params(models.SRVGGNetCompact(num_feat=64, num_conv=num_conv, upscale=4)) == expected


def test_compact_state_dict_names_are_realesrgans():
    model = models.SRVGGNetCompact(num_feat=8, num_conv=3, upscale=2)
    assert {name: tuple(value.shape) for name, value in model.state_dict().items()} == compact_shapes(8, 3, 2)
    assert model.scaling_factor == 2 and model.input_format == model.output_format == "[0, 1]"
    assert isinstance(models.build_generator("compact", num_feat=8, num_conv=1, upscale=3), models.SRVGGNetCompact)


@pytest.mark.parametrize("wrapper", ["params", "params_ema"])
@pytest.mark.parametrize("num_conv, scale", [(3, 4), (2, 2), (1, 3)])
def test_compact_official_files_load_with_the_reference_output(tmp_path, wrapper, num_conv, scale):
    state = {name: torch.randn(shape) * 0.1 for name, shape in compact_shapes(8, num_conv, scale).items()}
    torch.save({wrapper: state}, tmp_path / "realesr-tiny.pth")
    model, description, reference = inference.load_generator(tmp_path / "realesr-tiny.pth")
    assert isinstance(model, models.SRVGGNetCompact) and not model.training and reference is None
    assert model.scaling_factor == scale and len(model.body) == 2 * num_conv + 3
    assert f"x{scale}" in description and f"{num_conv} convolutions" in description and "8 features" in description
    x = torch.rand(2, 3, 7, 5)
    with torch.no_grad():
        assert torch.allclose(model(x), compact_reference(state, x, scale), atol=1e-6)


def test_compact_file_with_missing_layers_is_a_clear_error():
    state = {name: torch.randn(shape) for name, shape in compact_shapes(8, 2, 4).items()}
    del state["body.3.weight"]  # a PReLU
    with pytest.raises(ValueError, match="missing keys: body.3.weight"):
        porting.generator_from_official_state_dict({"params": state})
    state = {name: torch.randn(shape) for name, shape in compact_shapes(8, 2, 4).items()}
    state["body.6.weight"] = torch.randn(40, 8, 3, 3)  # 40 = 3 * s^2 for no integer s
    with pytest.raises(ValueError, match="square"):
        porting.generator_from_official_state_dict({"params": state})


def test_compact_starts_as_nearest_upsampling_and_its_first_layer_learns():
    """The init of Part D: the untrained network is close to nearest upsampling, and the gradient reaching its first
    convolution is of the same order as the last one's (PyTorch's default init leaves it ~1e6 times smaller)."""
    model = models.SRVGGNetCompact(num_feat=64, num_conv=16, upscale=4)
    lr_imgs = torch.rand(2, 3, 12, 12)
    sr_imgs = model(lr_imgs)
    nearest = F.interpolate(lr_imgs, scale_factor=4, mode="nearest")
    assert (sr_imgs - nearest).abs().mean() < 0.05
    F.l1_loss(sr_imgs, torch.rand_like(sr_imgs)).backward()
    first, last = model.body[0].weight.grad.abs().mean(), model.body[-1].weight.grad.abs().mean()
    assert first > 1e-2 * last, (first, last)
    assert all(layer.bias.abs().max() == 0 for layer in model.body if isinstance(layer, nn.Conv2d))
