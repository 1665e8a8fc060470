"""Batch augmentations for super-resolution: the CutBlur paper's mixture, on (LR, HR) training batches, on the device.

Yoo, Ahn and Sohn ("Rethinking Data Augmentation for Image Super-resolution: A Comprehensive Analysis and a New
Strategy", CVPR 2020) asked which of the augmentations that help classifiers also help SR networks. The answer: those
that move or mix pixels but keep each pixel's neighbourhood intact (sharp edges stay sharp) help; those that destroy
local structure (cutting holes, pasting blocks with hard seams into the input alone) hurt. They added CutBlur, made
for SR, and found that a random one of all seven per batch, the "mixture of augmentations" (MoA), helps most.

  blend     both images blended with one constant colour:  v x + (1 - v) c, v ~ U(alpha, 1)
  rgb       the colour channels of both in one random order
  mixup     each pair blended with another pair of the batch:  v x + (1 - v) x', v ~ Beta(alpha, alpha)
  cutout    a fraction alpha of the input's pixels set to 0; those pixels count in no loss (a loss mask)
  cutmix    a box (sides ~alpha of the image's) of another pair of the batch pasted into both images
  cutmixup  cutmix whose pasted (or kept) part is a mixup of the two pairs
  cutblur   a box of HR pasted into the LR input, or of LR into HR: the input is part blurry, part sharp, and
            the target stays HR (the model learns where to add detail and to leave sharp parts alone)
  none      nothing (the paper's code lists it among the options)

Each iteration draws ONE of the options given (--mixopts; uniformly, as the paper's code by default), which then
happens to the whole batch with its probability (--mixprob) and strength (--mixalpha); cutmixup's mixup has its own
(--aux_mixprob, --aux_mixalpha). The names and the defaults are the paper's code's (github.com/clovaai/cutblur,
augments.py and option.py) and traiNNer's (mixopts, mixprob, mixalpha, aux_mixprob, aux_mixalpha):

  PAPER_ALPHAS below; every probability 1.0; aux_mixprob 1.0, aux_mixalpha 1.2.

Sizes. In the paper every augmentation saw LR and HR at the same size: its training loop enlarges the LR image to the
HR size with nearest neighbour first, for every model, because CutBlur needs it. Here the functions take the input
at any size s times smaller than the target (s = 1 for an x1 model, which training feeds the LR crops
nearest-upscaled; s = 4 for an x4 model, fed the LR crops as they are):

  blend, rgb, mixup   act on every pixel alike: any s (bicubic shrinking is linear and keeps constants, so the
                      blended LR image is the LR image of the blended HR image)
  cutout              drops input pixels; the loss mask drops the s x s HR block of each: any s
  cutmix, cutmixup    the box is drawn on the input and scaled by s in HR, so both boxes cover the same scene
                      (the paper's code does exactly this when the sizes differ): any s
  cutblur             NEEDS THE SAME SIZE (s = 1): it puts LR and HR pixels side by side in one image, so the
                      generator must not enlarge: an x1 model (train_srresnet.py --use_unshuffle true
                      --unshuffle_scale 4 on x4 data)

Departures from the paper's code, each for a reason: images in [0, 1] (its were in [0, 255], so blend's colour is
drawn in [0, 1]); the box ratio clipped to [0, 1] (a strength near 1 could otherwise ask for a box larger than the
image); cutmixup's mixup gets --aux_mixprob (its training loop passes aux_alpha, 1.2, as the probability, so the
mixup always happens; the defaults give the same result); torch's generator instead of NumPy's global one (seeded
per iteration: exact resume).

Randomness: every draw comes from one CPU torch.Generator per iteration and process (the training scripts make it
with utils.make_rng(seed, 'mixture', iteration, rank)), so a run is reproducible and a resumed run draws what an
uninterrupted one would. One batch, one draw (the same box, colour or partner order for all its images), as in
the paper's code.

A training step (what mix_training_pairs does for both training scripts):

    lr_imgs = inference.match_generator_input(lr_imgs, generator, 4)    # (N, 3, H / g, W / g), g: the generator's
    rng = utils.make_rng(seed, 'mixture', iteration, rank)
    lr_imgs, hr_imgs, loss_mask, name = mix_batch(lr_imgs, hr_imgs, mixture_settings(["cutblur"]), rng)
    sr_imgs = generator(lr_imgs)                                          # (N, 3, H, W)
    loss = F.l1_loss(sr_imgs * loss_mask, hr_imgs * loss_mask) if loss_mask is not None else ...
"""
import numpy as np
import torch
import torch.nn.functional as F

import utils

# The augmentations, in the paper's order, and their strength alpha in the paper's mixture (option.py, --use_moa);
# 'none' takes no alpha. rgb's alpha is not used (a permutation has no strength).
AUGMENTATIONS = ("blend", "rgb", "mixup", "cutout", "cutmix", "cutmixup", "cutblur", "none")
PAPER_ALPHAS = {"blend": 0.6, "rgb": 1.0, "mixup": 1.2, "cutout": 0.001, "cutmix": 0.7, "cutmixup": 0.7,
                "cutblur": 0.7, "none": 0.0}
PAPER_PROB = 1.0  # every augmentation, once drawn, is applied (the paper's mixture for EDSR and RCAN)
PAPER_MIXTURE = AUGMENTATIONS[:-1]  # --mixopts blend rgb mixup cutout cutmix cutmixup cutblur


# ------------------------------------------------------------------------------------------------------
# Random draws (all on the CPU, from one torch.Generator)
# ------------------------------------------------------------------------------------------------------
def _uniform(rng, low=0.0, high=1.0):
    """One float drawn uniformly from [low, high)."""
    return low + (high - low) * torch.rand((), generator=rng, dtype=torch.float64).item()


def _beta(rng, alpha):
    """One draw of Beta(alpha, alpha) (torch's Beta takes no generator: a NumPy generator seeded from rng)."""
    seed = int(torch.randint(0, 2 ** 62, (), generator=rng))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def _applied(rng, prob, alpha):
    """Whether an augmentation happens this time: with probability prob, and never with a strength alpha <= 0 (as in
    the paper's code; the number is drawn either way, so that the draws that follow do not depend on alpha)."""
    return _uniform(rng) < prob and alpha > 0


def _draw_box(rng, height, width, alpha):
    """
    The paper's box: sides int(side x ratio), ratio ~ alpha + 0.01 N(0, 1) (clipped to [0, 1]), at a uniformly
    random position inside a height x width image.

    :return: (top, left, box_height, box_width), ints
    """
    ratio = min(max(alpha + 0.01 * torch.randn((), generator=rng, dtype=torch.float64).item(), 0.0), 1.0)
    box_height, box_width = int(height * ratio), int(width * ratio)
    top = int(torch.randint(0, height - box_height + 1, (), generator=rng))
    left = int(torch.randint(0, width - box_width + 1, (), generator=rng))
    return top, left, box_height, box_width


def _scale_of(lr_imgs, hr_imgs):
    """s, the factor between the input (N, C, h, w) and the target (N, C, s h, s w); a ValueError otherwise."""
    (n, c, h, w), (n_hr, c_hr, height, width) = lr_imgs.shape, hr_imgs.shape
    s = height // h
    if (n, c) != (n_hr, c_hr) or s < 1 or (height, width) != (h * s, w * s):
        raise ValueError(f"the batch augmentations take inputs (N, C, h, w) and targets (N, C, s h, s w); got "
                         f"{tuple(lr_imgs.shape)} and {tuple(hr_imgs.shape)}")
    return s


# ------------------------------------------------------------------------------------------------------
# The augmentations. Each takes lr_imgs (N, C, h, w) (the generator's input) and hr_imgs (N, C, s h, s w) (its
# target), in [0, 1], on any device, and returns new tensors (the inputs are never changed in place: the pair pool
# or another target may share them).
# ------------------------------------------------------------------------------------------------------
@torch.no_grad()
def blend(lr_imgs, hr_imgs, rng, prob=1.0, alpha=0.6):
    """
    Blend both images with one constant colour per image: x -> v x + (1 - v) c, v ~ U(alpha, 1) for the batch,
    c ~ U(0, 1) per image and channel. Teaches nothing about texture; shifts and flattens the colours a little.
    Any scale (the same c and v for LR and HR).
    """
    if not _applied(rng, prob, alpha):
        return lr_imgs, hr_imgs
    colour = torch.rand(lr_imgs.shape[0], lr_imgs.shape[1], 1, 1, generator=rng).to(lr_imgs)  # (N, C, 1, 1)
    v = _uniform(rng, alpha, 1.0)
    return v * lr_imgs + (1 - v) * colour, v * hr_imgs + (1 - v) * colour


@torch.no_grad()
def rgb(lr_imgs, hr_imgs, rng, prob=1.0, alpha=1.0):
    """Put the colour channels of both images in one random order (e.g. R, G, B -> B, R, G). Any scale. alpha: not
    used (kept so that every augmentation is called alike)."""
    if not _applied(rng, prob, 1.0):
        return lr_imgs, hr_imgs
    order = torch.randperm(lr_imgs.shape[1], generator=rng).to(lr_imgs.device)
    return lr_imgs[:, order], hr_imgs[:, order]


@torch.no_grad()
def mixup(lr_imgs, hr_imgs, rng, prob=1.0, alpha=1.2):
    """
    Blend each pair with another pair of the batch (a random permutation, the same for LR and HR):
    x -> v x + (1 - v) x[partner], v ~ Beta(alpha, alpha) for the batch. Any scale (shrinking is linear).
    """
    if not _applied(rng, prob, alpha):
        return lr_imgs, hr_imgs
    v = _beta(rng, alpha)
    partner = torch.randperm(lr_imgs.shape[0], generator=rng).to(lr_imgs.device)
    return v * lr_imgs + (1 - v) * lr_imgs[partner], v * hr_imgs + (1 - v) * hr_imgs[partner]


@torch.no_grad()
def cutout(lr_imgs, hr_imgs, rng, prob=1.0, alpha=0.001):
    """
    Set a fraction alpha of the input's pixels to 0 (each pixel independently, all its channels), and leave them out
    of the loss: the target keeps them, and the loss mask (1: counted, 0: dropped) covers the s x s HR block of each
    dropped input pixel. Any scale. (The paper's cutout drops pixels, not a box; its default drops 0.1%.)

    :return: (lr_imgs, hr_imgs (unchanged), loss_mask (N, 1, s h, s w) of 0. / 1., or None when not applied)
    """
    s = _scale_of(lr_imgs, hr_imgs)
    if not _applied(rng, prob, alpha):
        return lr_imgs, hr_imgs, None
    n, _, h, w = lr_imgs.shape
    keep = (torch.rand(n, 1, h, w, generator=rng) >= alpha).to(lr_imgs)  # (N, 1, h, w): 0 where dropped
    loss_mask = F.interpolate(keep, scale_factor=s, mode="nearest") if s > 1 else keep  # (N, 1, s h, s w)
    return lr_imgs * keep, hr_imgs, loss_mask


@torch.no_grad()
def cutmix(lr_imgs, hr_imgs, rng, prob=1.0, alpha=0.7):
    """
    Paste a box of another pair of the batch into both images, at the same place: the box (sides ~alpha of the
    input's) is drawn on the input and scaled by s on the target, so both show the same part of the same other scene.
    Any scale.
    """
    s = _scale_of(lr_imgs, hr_imgs)
    if not _applied(rng, prob, alpha):
        return lr_imgs, hr_imgs
    top, left, box_h, box_w = _draw_box(rng, lr_imgs.shape[2], lr_imgs.shape[3], alpha)
    partner = torch.randperm(lr_imgs.shape[0], generator=rng).to(lr_imgs.device)
    lr_mixed, hr_mixed = lr_imgs.clone(), hr_imgs.clone()
    lr_box = (..., slice(top, top + box_h), slice(left, left + box_w))
    hr_box = (..., slice(top * s, (top + box_h) * s), slice(left * s, (left + box_w) * s))
    lr_mixed[lr_box] = lr_imgs[partner][lr_box]
    hr_mixed[hr_box] = hr_imgs[partner][hr_box]
    return lr_mixed, hr_mixed


@torch.no_grad()
def cutmixup(lr_imgs, hr_imgs, rng, prob=1.0, alpha=0.7, aux_prob=1.0, aux_alpha=1.2):
    """
    CutMix and MixUp together: the mixup of each pair with a partner, v x + (1 - v) x[partner] (v ~ Beta(aux_alpha,
    aux_alpha); with probability 1 - aux_prob the partner itself), fills either the box (sides ~alpha, as cutmix's)
    or everything but the box, with probability 1/2 each; the rest stays the image's own. Any scale (the box is
    scaled by s on the target, as cutmix's).
    """
    s = _scale_of(lr_imgs, hr_imgs)
    if not _applied(rng, prob, alpha):
        return lr_imgs, hr_imgs
    top, left, box_h, box_w = _draw_box(rng, lr_imgs.shape[2], lr_imgs.shape[3], alpha)
    partner = torch.randperm(lr_imgs.shape[0], generator=rng).to(lr_imgs.device)
    v = _beta(rng, aux_alpha) if aux_alpha > 0 else 0.0
    if _applied(rng, aux_prob, aux_alpha):
        lr_mix, hr_mix = v * lr_imgs + (1 - v) * lr_imgs[partner], v * hr_imgs + (1 - v) * hr_imgs[partner]
    else:
        lr_mix, hr_mix = lr_imgs[partner], hr_imgs[partner]
    mix_inside = _uniform(rng) < 0.5
    # The image that fills the box, and the one around it.
    (lr_in, hr_in), (lr_out, hr_out) = ((lr_mix, hr_mix), (lr_imgs, hr_imgs)) if mix_inside else \
        ((lr_imgs, hr_imgs), (lr_mix, hr_mix))
    lr_mixed, hr_mixed = lr_out.clone(), hr_out.clone()
    lr_box = (..., slice(top, top + box_h), slice(left, left + box_w))
    hr_box = (..., slice(top * s, (top + box_h) * s), slice(left * s, (left + box_w) * s))
    lr_mixed[lr_box] = lr_in[lr_box]
    hr_mixed[hr_box] = hr_in[hr_box]
    return lr_mixed, hr_mixed


@torch.no_grad()
def cutblur(lr_imgs, hr_imgs, rng, prob=1.0, alpha=0.7):
    """
    CutBlur: the input becomes part LR, part HR. A box (sides ~alpha of the image's) of the HR image is pasted into
    the LR input, or (probability 1/2 each) a box of the LR input into the HR image; the target stays HR. The model
    learns *where* to add detail, and to leave parts that are already sharp alone instead of over-sharpening them.

    NEEDS THE SAME SIZE: lr_imgs (N, C, H, W) is the LR image already enlarged to the HR size with nearest neighbour
    (inference.match_generator_input does it for an x1 model), hr_imgs (N, C, H, W).

    :return: (the mixed input (N, C, H, W), hr_imgs unchanged)
    """
    if lr_imgs.shape != hr_imgs.shape:
        raise ValueError(f"cutblur needs the input at the target's size (an x1 model, fed the LR image enlarged with "
                         f"nearest neighbour); got {tuple(lr_imgs.shape)} and {tuple(hr_imgs.shape)}")
    if not _applied(rng, prob, alpha):
        return lr_imgs, hr_imgs
    top, left, box_h, box_w = _draw_box(rng, lr_imgs.shape[2], lr_imgs.shape[3], alpha)
    hr_inside = _uniform(rng) < 0.5
    box = (..., slice(top, top + box_h), slice(left, left + box_w))
    inside, around = (hr_imgs, lr_imgs) if hr_inside else (lr_imgs, hr_imgs)
    mixed_imgs = around.clone()
    mixed_imgs[box] = inside[box]
    return mixed_imgs, hr_imgs


# ------------------------------------------------------------------------------------------------------
# The mixture: one augmentation per batch
# ------------------------------------------------------------------------------------------------------
def mixture_settings(mixopts, mixprob=(), mixalpha=(), aux_mixprob=1.0, aux_mixalpha=1.2):
    """
    The flags --mixopts, --mixprob, --mixalpha, --aux_mixprob, --aux_mixalpha as a checked mixture.

    mixprob and mixalpha give one value per option, one value for all, or none (the paper's: PAPER_PROB and
    PAPER_ALPHAS). A mistake is one ValueError line saying what to give.

    :return: dict name -> (prob, alpha), in the order of mixopts, plus 'aux' -> (aux_mixprob, aux_mixalpha); an
             empty dict when mixopts is ['none'] (nothing to do)
    """
    unknown = [name for name in mixopts if name not in AUGMENTATIONS]
    if unknown or not mixopts or len(set(mixopts)) != len(mixopts):
        raise ValueError(f"--mixopts takes each of {' '.join(AUGMENTATIONS)} at most once, not "
                         f"{' '.join(mixopts) or 'nothing'} (the paper's mixture: --mixopts "
                         f"{' '.join(PAPER_MIXTURE)}).")

    def per_option(values, flag, default):
        if len(values) not in (0, 1, len(mixopts)):
            raise ValueError(f"{flag} gives {len(values)} values for {len(mixopts)} --mixopts: give one per option, "
                             f"one for all, or none (the paper's).")
        return [default(name) for name in mixopts] if not values else list(values) * (len(mixopts) // len(values))

    probs = per_option(list(mixprob), "--mixprob", lambda name: PAPER_PROB)
    alphas = per_option(list(mixalpha), "--mixalpha", lambda name: PAPER_ALPHAS[name])
    if any(not 0 <= p <= 1 for p in [*probs, aux_mixprob]) or any(a < 0 for a in [*alphas, aux_mixalpha]):
        raise ValueError(f"--mixprob and --aux_mixprob are probabilities in [0, 1], --mixalpha and --aux_mixalpha "
                         f"strengths >= 0; got {probs}, {aux_mixprob}, {alphas}, {aux_mixalpha}.")
    if list(mixopts) == ["none"]:
        return {}
    return {**{name: (p, a) for name, p, a in zip(mixopts, probs, alphas)}, "aux": (aux_mixprob, aux_mixalpha)}


def check_generator_scale(mixture, generator_scaling_factor):
    """CutBlur puts LR and HR pixels into one input of the HR size: refuse it, in one line, for a generator that
    enlarges."""
    if "cutblur" in mixture and generator_scaling_factor != 1:
        raise ValueError(f"--mixopts cutblur needs an x1 generator (its input is HR-sized, part LR, part HR), but this "
                         f"one upscales x{generator_scaling_factor}: train one with train_srresnet.py --use_unshuffle "
                         f"true --unshuffle_scale 4 (on x4 data), or leave cutblur out of --mixopts.")


@torch.no_grad()
def mix_batch(lr_imgs, hr_imgs, mixture, rng):
    """
    One augmentation of the mixture, drawn uniformly, applied to the batch (with its probability and strength).

    :param lr_imgs: (N, C, h, w), the generator's input; hr_imgs: (N, C, s h, s w), its target; in [0, 1]
    :param mixture: mixture_settings(...)
    :return: (lr_imgs, hr_imgs, loss_mask (N, 1, s h, s w) or None, the name of the augmentation drawn)
    """
    names = [name for name in mixture if name != "aux"]
    if not names:
        return lr_imgs, hr_imgs, None, "none"
    name = names[int(torch.randint(0, len(names), (), generator=rng))]
    prob, alpha = mixture[name]
    loss_mask = None
    if name == "cutout":
        lr_imgs, hr_imgs, loss_mask = cutout(lr_imgs, hr_imgs, rng, prob, alpha)
    elif name == "cutmixup":
        lr_imgs, hr_imgs = cutmixup(lr_imgs, hr_imgs, rng, prob, alpha, *mixture["aux"])
    elif name != "none":
        function = {"blend": blend, "rgb": rgb, "mixup": mixup, "cutmix": cutmix, "cutblur": cutblur}[name]
        lr_imgs, hr_imgs = function(lr_imgs, hr_imgs, rng, prob, alpha)
    return lr_imgs, hr_imgs, loss_mask, name


def mixture_of(hp):
    """The run's mixture (mixture_settings) from its hyperparameters (mixopts ... aux_mixalpha)."""
    return mixture_settings(hp.mixopts, hp.mixprob, hp.mixalpha, hp.aux_mixprob, hp.aux_mixalpha)


@torch.no_grad()
def mix_training_pairs(lr_imgs, hr_imgs, hr_usm_imgs, hp, iteration, rank):
    """
    The batch augmentations of one training iteration, for both training scripts (after
    degradations.make_training_pairs and inference.match_generator_input).

    The sharpened targets (Real-ESRGAN's USM, hr_usm_imgs) change exactly as the HR ones: the same draws are replayed
    for them (a generator reset to the same state). CutBlur pastes the plain HR image into the input.

    :param lr_imgs: (N, 3, h, w), the generator's input; hr_imgs, hr_usm_imgs: (N, 3, s h, s w) (the same tensor
                    without USM); in [0, 1], on the device
    :return: (lr_imgs, hr_imgs, hr_usm_imgs, loss_mask (N, 1, s h, s w) or None (cutout's: multiply the output and
             the targets by it before every loss))
    """
    mixture = mixture_of(hp)
    if not mixture:
        return lr_imgs, hr_imgs, hr_usm_imgs, None
    rng = utils.make_rng(hp.seed, "mixture", iteration, rank)
    state = rng.get_state()
    mixed_lr_imgs, mixed_hr_imgs, loss_mask, _ = mix_batch(lr_imgs, hr_imgs, mixture, rng)
    if hr_usm_imgs is hr_imgs:
        return mixed_lr_imgs, mixed_hr_imgs, mixed_hr_imgs, loss_mask
    rng.set_state(state)  # the same augmentation, box, colour and partners for the sharpened targets
    _, mixed_usm_imgs, _, _ = mix_batch(lr_imgs, hr_usm_imgs, mixture, rng)
    return mixed_lr_imgs, mixed_hr_imgs, mixed_usm_imgs, loss_mask
