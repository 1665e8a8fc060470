"""Tests of augmentations.py: the CutBlur paper's batch augmentations, the mixture, and the training batch.

Each augmentation is checked against a by-hand computation: the random draws are replayed in the order the module
documents (Replay below), and the expected images are built pixel by pixel with plain Python loops from the draws
and the sources they name (which image, which box, which colour). Mixing the wrong regions (an HR box not s times the
LR box, a box at another place) or the wrong sources (another partner for HR than for LR, LR pixels where HR ones
belong) makes them fail. Structural checks that need no replay (the changed HR pixels are exactly the s x s blocks of
the changed LR pixels; LR and HR give the same blend factor and colour) back them up.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import augmentations
import cli
import train_srresnet
import utils
from augmentations import blend, cutblur, cutmix, cutmixup, cutout, mix_batch, mixup, rgb

S = 4  # the scale of the batches below: LR (N, 3, 5, 6), HR (N, 3, 20, 24)


def batch(n=4, h=5, w=6, s=S, seed=0):
    """Unrelated random LR and HR images (no pixel value is in both by chance), (N, 3, h, w) and (N, 3, s h, s w)."""
    generator = torch.Generator().manual_seed(seed)
    lr = torch.rand(n, 3, h, w, generator=generator, dtype=torch.float64) * 0.8 + 0.1
    hr = torch.rand(n, 3, h * s, w * s, generator=generator, dtype=torch.float64) * 0.8 + 0.1
    return lr, hr


class Replay:
    """The draws of augmentations.py, in its order, from a generator of the same seed."""

    def __init__(self, seed):
        self.rng = torch.Generator().manual_seed(seed)

    def uniform(self, low=0.0, high=1.0):
        return low + (high - low) * torch.rand((), generator=self.rng, dtype=torch.float64).item()

    def box(self, height, width, alpha):
        ratio = min(max(alpha + 0.01 * torch.randn((), generator=self.rng, dtype=torch.float64).item(), 0.0), 1.0)
        box_h, box_w = int(height * ratio), int(width * ratio)
        top = int(torch.randint(0, height - box_h + 1, (), generator=self.rng))
        left = int(torch.randint(0, width - box_w + 1, (), generator=self.rng))
        return top, left, box_h, box_w

    def beta(self, alpha):
        return float(np.random.default_rng(int(torch.randint(0, 2 ** 62, (), generator=self.rng))).beta(alpha, alpha))

    def permutation(self, n):
        return torch.randperm(n, generator=self.rng).tolist()


def inside(y, x, top, left, box_h, box_w, s=1):
    """Whether pixel (y, x) lies in the box scaled by s."""
    return top * s <= y < (top + box_h) * s and left * s <= x < (left + box_w) * s


def by_hand(shape, value):
    """A tensor of `shape` (N, C, H, W) whose every pixel vector is value(i, y, x) (a length-C tensor)."""
    n, c, height, width = shape
    out = torch.empty(shape, dtype=torch.float64)
    for i in range(n):
        for y in range(height):
            for x in range(width):
                out[i, :, y, x] = value(i, y, x)
    return out


# ------------------------------------------------------------------------------------------------------
# The augmentations, one by one
# ------------------------------------------------------------------------------------------------------
def test_blend_uses_one_colour_and_factor_for_lr_and_hr():
    lr, hr = batch()
    out_lr, out_hr = blend(lr, hr, torch.Generator().manual_seed(3), alpha=0.6)
    replay = Replay(3)
    assert replay.uniform() < 1.0  # applied
    colour = torch.rand(4, 3, 1, 1, generator=replay.rng).double()
    v = replay.uniform(0.6, 1.0)
    assert 0.6 <= v < 1
    torch.testing.assert_close(out_lr, by_hand(lr.shape, lambda i, y, x: v * lr[i, :, y, x]
                                               + (1 - v) * colour[i, :, 0, 0]))
    torch.testing.assert_close(out_hr, by_hand(hr.shape, lambda i, y, x: v * hr[i, :, y, x]
                                               + (1 - v) * colour[i, :, 0, 0]))
    # Without the replay: the factor and colour read back from LR and from HR are the same.
    for imgs, out in ((lr, out_lr), (hr, out_hr)):
        factor = (out[0, 0, 0, 0] - out[0, 0, 1, 1]) / (imgs[0, 0, 0, 0] - imgs[0, 0, 1, 1])
        assert factor.item() == pytest.approx(v)
        torch.testing.assert_close((out[:, :, 0, 0] - factor * imgs[:, :, 0, 0]) / (1 - factor), colour[:, :, 0, 0])


def test_rgb_permutes_the_channels_of_both_alike():
    lr, hr = batch()
    seen = set()
    for seed in range(12):
        out_lr, out_hr = rgb(lr, hr, torch.Generator().manual_seed(seed))
        replay = Replay(seed)
        replay.uniform()
        order = replay.permutation(3)
        seen.add(tuple(order))
        for c in range(3):
            assert torch.equal(out_lr[:, c], lr[:, order[c]]) and torch.equal(out_hr[:, c], hr[:, order[c]])
    assert len(seen) > 2  # the order changes from draw to draw


def test_mixup_blends_each_pair_with_the_same_partner_in_lr_and_hr():
    lr, hr = batch(n=5)
    out_lr, out_hr = mixup(lr, hr, torch.Generator().manual_seed(4), alpha=1.2)
    replay = Replay(4)
    replay.uniform()
    v = replay.beta(1.2)
    partner = replay.permutation(5)
    assert partner != list(range(5)) and 0 < v < 1  # a draw that does mix (the test would see nothing otherwise)
    torch.testing.assert_close(out_lr, by_hand(lr.shape, lambda i, y, x: v * lr[i, :, y, x]
                                               + (1 - v) * lr[partner[i], :, y, x]))
    torch.testing.assert_close(out_hr, by_hand(hr.shape, lambda i, y, x: v * hr[i, :, y, x]
                                               + (1 - v) * hr[partner[i], :, y, x]))


@pytest.mark.parametrize("s", [1, S])
def test_cutout_drops_input_pixels_and_their_hr_blocks_from_the_loss(s):
    lr, hr = batch(s=s)
    out_lr, out_hr, mask = cutout(lr, hr, torch.Generator().manual_seed(5), alpha=0.3)
    replay = Replay(5)
    replay.uniform()
    dropped = torch.rand(4, 1, 5, 6, generator=replay.rng) < 0.3  # (N, 1, h, w)
    assert 0 < dropped.sum() < dropped.numel()
    assert torch.equal(out_lr, by_hand(lr.shape, lambda i, y, x: 0 * lr[i, :, y, x] if dropped[i, 0, y, x]
                                       else lr[i, :, y, x]))
    assert out_hr is hr  # the target keeps every pixel
    expected_mask = by_hand((4, 1, 5 * s, 6 * s), lambda i, y, x: torch.tensor([0.0 if dropped[i, 0, y // s, x // s]
                                                                                else 1.0]))
    assert torch.equal(mask.double(), expected_mask)
    # Not applied (probability 0): no mask at all.
    assert cutout(lr, hr, torch.Generator().manual_seed(5), prob=0.0)[2] is None


def test_cutmix_pastes_the_same_scene_into_lr_and_hr():
    lr, hr = batch(n=4, h=10, w=12)
    out_lr, out_hr = cutmix(lr, hr, torch.Generator().manual_seed(6), alpha=0.5)
    replay = Replay(6)
    replay.uniform()
    top, left, box_h, box_w = replay.box(10, 12, 0.5)
    partner = replay.permutation(4)
    assert box_h * box_w > 0 and partner != list(range(4))
    assert torch.equal(out_lr, by_hand(lr.shape, lambda i, y, x: lr[partner[i], :, y, x]
                                       if inside(y, x, top, left, box_h, box_w) else lr[i, :, y, x]))
    assert torch.equal(out_hr, by_hand(hr.shape, lambda i, y, x: hr[partner[i], :, y, x]
                                       if inside(y, x, top, left, box_h, box_w, S) else hr[i, :, y, x]))
    # Without the replay: the HR pixels that changed are exactly the s x s blocks of the LR pixels that changed.
    changed_lr = (out_lr != lr).any(dim=1, keepdim=True).double()
    changed_hr = (out_hr != hr).any(dim=1, keepdim=True).double()
    assert changed_lr.sum() > 0 and torch.equal(changed_hr, F.interpolate(changed_lr, scale_factor=S, mode="nearest"))


def test_cutmixup_fills_the_box_or_its_surroundings_with_the_mixup():
    lr, hr = batch(n=4, h=10, w=12)
    directions = set()
    for seed in range(10):
        out_lr, out_hr = cutmixup(lr, hr, torch.Generator().manual_seed(seed), alpha=0.5, aux_prob=1.0, aux_alpha=1.2)
        replay = Replay(seed)
        replay.uniform()
        top, left, box_h, box_w = replay.box(10, 12, 0.5)
        partner = replay.permutation(4)
        v = replay.beta(1.2)
        assert replay.uniform() < 1.0  # the mixup applies (aux_prob 1)
        mix_inside = replay.uniform() < 0.5
        directions.add(mix_inside)

        def expected(imgs, s):
            def value(i, y, x):
                mixed = v * imgs[i, :, y, x] + (1 - v) * imgs[partner[i], :, y, x]
                return mixed if inside(y, x, top, left, box_h, box_w, s) == mix_inside else imgs[i, :, y, x]
            return by_hand(imgs.shape, value)

        torch.testing.assert_close(out_lr, expected(lr, 1))
        torch.testing.assert_close(out_hr, expected(hr, S))
    assert directions == {True, False}
    # With aux_prob 0 the box (or its surroundings) is the partner itself: plain cutmix, in either direction.
    out_lr, _ = cutmixup(lr, hr, torch.Generator().manual_seed(0), alpha=0.5, aux_prob=0.0)
    assert all(any(torch.equal(out_lr[i, :, 0, 0], lr[j, :, 0, 0]) for j in range(4)) for i in range(4))


def test_cutblur_puts_hr_in_the_box_or_around_it():
    lr, hr = batch(n=3, h=10, w=12)
    lr_up = F.interpolate(lr, scale_factor=S, mode="nearest")  # what an x1 model is fed: (N, 3, 40, 48)
    directions = set()
    for seed in range(8):
        mixed, target = cutblur(lr_up, hr, torch.Generator().manual_seed(seed), alpha=0.7)
        assert target is hr
        replay = Replay(seed)
        replay.uniform()
        top, left, box_h, box_w = replay.box(40, 48, 0.7)
        hr_inside = replay.uniform() < 0.5
        directions.add(hr_inside)
        assert torch.equal(mixed, by_hand(hr.shape, lambda i, y, x: hr[i, :, y, x]
                                          if inside(y, x, top, left, box_h, box_w) == hr_inside else lr_up[i, :, y, x]))
        # Without the replay: one rectangle of HR (or of LR), ~0.7 x 0.7 of the image, the same in every image.
        from_hr = (mixed == hr).all(dim=1)
        box = from_hr if hr_inside else ~from_hr
        rows, cols = torch.nonzero(box[0], as_tuple=True)
        assert (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1) == rows.numel()
        assert rows.numel() / (40 * 48) == pytest.approx(0.49, abs=0.06) and torch.equal(box[1], box[0])
    assert directions == {True, False}
    with pytest.raises(ValueError, match="same size|target's size"):
        cutblur(lr, hr, torch.Generator())  # LR at its own size: refused


def test_probability_zero_and_strength_zero_change_nothing():
    lr, hr = batch()
    lr_up = F.interpolate(lr, scale_factor=S, mode="nearest")
    for function in (blend, rgb, mixup, cutmix, cutmixup):
        assert function(lr, hr, torch.Generator(), prob=0.0) == (lr, hr)
    for function in (blend, mixup, cutmix, cutmixup):
        assert function(lr, hr, torch.Generator(), alpha=0.0) == (lr, hr)
    assert cutblur(lr_up, hr, torch.Generator(), prob=0.0) == (lr_up, hr)


def test_the_augmentations_never_change_their_inputs():
    lr, hr = batch()
    lr_up = F.interpolate(lr, scale_factor=S, mode="nearest")
    copies = lr.clone(), hr.clone(), lr_up.clone()
    for function in (blend, rgb, mixup, cutmix, cutmixup):
        function(lr, hr, torch.Generator().manual_seed(1))
    cutout(lr, hr, torch.Generator().manual_seed(1), alpha=0.5)
    cutblur(lr_up, hr, torch.Generator().manual_seed(1))
    assert all(torch.equal(a, b) for a, b in zip((lr, hr, lr_up), copies))


# ------------------------------------------------------------------------------------------------------
# The mixture and the flags
# ------------------------------------------------------------------------------------------------------
def test_mixture_settings_are_the_papers_by_default_and_checked():
    mixture = augmentations.mixture_settings(list(augmentations.PAPER_MIXTURE))
    assert mixture == {"blend": (1.0, 0.6), "rgb": (1.0, 1.0), "mixup": (1.0, 1.2), "cutout": (1.0, 0.001),
                       "cutmix": (1.0, 0.7), "cutmixup": (1.0, 0.7), "cutblur": (1.0, 0.7), "aux": (1.0, 1.2)}
    assert augmentations.mixture_settings(["cutblur"], [0.5], [0.6]) == {"cutblur": (0.5, 0.6), "aux": (1.0, 1.2)}
    assert augmentations.mixture_settings(["rgb", "mixup"], [0.5])["mixup"] == (0.5, 1.2)  # one value for all
    assert augmentations.mixture_settings(["none"]) == {}
    for args, message in ((["cutmix", "cutblurr"], "at most once"), (["rgb", "rgb"], "at most once"),
                          ((["rgb", "mixup", "blend"], [0.5, 0.5]), "--mixprob gives 2 values for 3"),
                          ((["rgb"], [1.5]), "probabilities"), ((["mixup"], [], [-1.0]), "strengths")):
        args = args if isinstance(args, tuple) else (args,)
        with pytest.raises(ValueError, match=message):
            augmentations.mixture_settings(*args)
    with pytest.raises(ValueError, match="needs an x1 generator.*upscales x4.*--unshuffle_scale 4"):
        augmentations.check_generator_scale({"cutblur": (1.0, 0.7)}, 4)
    augmentations.check_generator_scale({"cutmix": (1.0, 0.7)}, 4)  # the others: any scale


def test_mix_batch_draws_one_augmentation_uniformly():
    lr, hr = batch(s=1)
    mixture = augmentations.mixture_settings(list(augmentations.PAPER_MIXTURE))
    names = [mix_batch(lr, hr, mixture, torch.Generator().manual_seed(seed))[3] for seed in range(280)]
    counts = {name: names.count(name) for name in augmentations.PAPER_MIXTURE}
    assert all(25 <= count <= 55 for count in counts.values()), counts  # 40 each expected
    # What the drawn augmentation does is that function's, from the draws that follow the choice.
    rng = torch.Generator().manual_seed(1)
    choice = int(torch.randint(0, 7, (), generator=rng))
    name = augmentations.PAPER_MIXTURE[choice]
    out = mix_batch(lr, hr, mixture, torch.Generator().manual_seed(1))
    function = getattr(augmentations, name)
    expected = function(lr, hr, rng, *mixture[name], *([1.0, 1.2] if name == "cutmixup" else []))
    assert out[3] == name and all(torch.equal(a, b) for a, b in zip(out[:2], expected[:2]))
    assert mix_batch(lr, hr, {}, torch.Generator()) == (lr, hr, None, "none")


def test_mix_training_pairs_changes_the_sharpened_targets_alike_and_is_seeded_per_iteration():
    argv = ["--mixopts", "cutmix", "mixup", "rgb", "blend", "--seed", "3"]
    hp = cli.parse_hyperparameters(train_srresnet.hyperparameters, "", argv=argv)
    lr, hr = batch(n=4)
    hr_usm = hr.flip(-1)  # another image: what happens to it must be what happens to HR
    for iteration in range(6):
        out_lr, out_hr, out_usm, mask = augmentations.mix_training_pairs(lr, hr, hr_usm, hp, iteration, 0)
        rng = utils.make_rng(3, "mixture", iteration, 0)
        expected_lr, expected_hr, _, name = mix_batch(lr, hr, augmentations.mixture_of(hp), rng)
        _, expected_usm, _, same_name = mix_batch(lr, hr_usm, augmentations.mixture_of(hp),
                                                  utils.make_rng(3, "mixture", iteration, 0))
        assert mask is None and name == same_name
        assert torch.equal(out_lr, expected_lr) and torch.equal(out_hr, expected_hr)
        assert torch.equal(out_usm, expected_usm)
    # Another process draws otherwise; without USM the targets stay one tensor; 'none' is a no-op.
    assert not torch.equal(augmentations.mix_training_pairs(lr, hr, hr, hp, 0, 1)[1], out_hr)
    _, out_hr, out_usm, _ = augmentations.mix_training_pairs(lr, hr, hr, hp, 0, 0)
    assert out_usm is out_hr
    hp.mixopts = ["none"]
    assert augmentations.mix_training_pairs(lr, hr, hr_usm, hp, 0, 0) == (lr, hr, hr_usm, None)
