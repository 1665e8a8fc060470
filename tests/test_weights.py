"""Tests of the trained models that ship in weights/ (weights/README.md is their model card).

Each shipped file must load by its name through inference.load_generator (as super_resolve.py, eval.py and
train_srresnet.py --pretrained load it), have the architecture the card describes, upscale an image sensibly, and
score on Set5 what the card says eval.py printed for it (when the benchmark images are present).
"""
import hashlib
import json
import re
import signal
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skimage_data

import create_data_lists
import eval as eval_script
import checkpoints
import inference
import metrics
import super_resolve
import train_srresnet

# The architecture each shipped model must have (the model card's "Architecture" lines say the same).
EXPECTED = {
    "srresnet": ("srresnet", dict(large_kernel_size=9, small_kernel_size=3, n_channels=64, n_blocks=16,
                                  scaling_factor=4), 1_549_462),
    "compact": ("compact", dict(num_feat=64, num_conv=16, upscale=4), 621_424),
}
MODEL_CARD = inference.WEIGHTS_FOLDER / "README.md"


def model_card_scores(name):
    """{test set: (PSNR, SSIM)} of `name`'s row in the model card's eval.py table (the table eval.py prints)."""
    text = MODEL_CARD.read_text()
    header = re.search(r"^\| Model \(x4\) +\|(.*)\|$", text, re.MULTILINE)
    row = re.search(rf"^\| {name} +\|(.*)\|$", text, re.MULTILINE)
    assert header and row, f"no eval.py table with a '{name}' row in {MODEL_CARD}"
    test_sets = [cell.split()[0] for cell in header.group(1).split("|")]
    scores = [tuple(float(x) for x in cell.split(" / ")) for cell in row.group(1).split("|")]
    return dict(zip(test_sets, scores))


@pytest.mark.parametrize("name", sorted(inference.SHIPPED_MODELS))
def test_shipped_file_is_small_and_loads_by_name_with_its_architecture(name):
    path = inference.shipped_model_path(name)
    assert path.parent == inference.WEIGHTS_FOLDER and path.is_file()
    assert path.stat().st_size < 5e6  # fp16: a few MB at most
    checkpoint = checkpoints.load_checkpoint(path)
    weights = [checkpoint[name] for name in ("params", "params_ema") if name in checkpoint]
    assert len(weights) == 1  # one set of weights: the one the model card reports
    assert all(t.dtype == torch.float16 for t in weights[0].values() if t.is_floating_point())
    model, description, reference = inference.load_generator(name)
    arch, kwargs, n_parameters = EXPECTED[name]
    assert (model.generator_arch, model.generator_kwargs) == (arch, kwargs)
    assert sum(p.numel() for p in model.parameters()) == n_parameters
    assert f"shipped '{name}' model" in description and reference == inference.SHIPPED_MODELS[name].reference
    assert all(p.dtype == torch.float32 for p in model.parameters())  # fp16 file, float32 network


def test_a_shipped_file_whose_bytes_changed_is_refused(tmp_path, monkeypatch):
    """Each shipped file's SHA-256 is in the code (inference.SHIPPED_MODELS) and in the model card. A file whose bytes
    changed in place (here one weight, the file still a sound checkpoint: it would load, and upscale badly) is refused
    on load, by its name or its path, with the way to restore it."""
    card = MODEL_CARD.read_text()
    for name, shipped in inference.SHIPPED_MODELS.items():
        digest = hashlib.sha256(inference.shipped_model_path(name).read_bytes()).hexdigest()
        assert shipped.sha256 == digest and f"`{digest}`" in card, name
    checkpoint = checkpoints.load_checkpoint(inference.shipped_model_path("compact"))
    weights = next(checkpoint[key] for key in ("params_ema", "params") if key in checkpoint)
    weights["body.0.weight"][0, 0, 0, 0] += 0.5
    monkeypatch.setattr(inference, "WEIGHTS_FOLDER", tmp_path)
    torch.save(checkpoint, tmp_path / "compact_x4.pth")
    for model in ("compact", tmp_path / "compact_x4.pth"):
        with pytest.raises(ValueError, match=r"SHA-256.*git checkout -- weights/") as error:
            inference.load_generator(model)
        assert "compact_x4.pth" in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("name", sorted(inference.SHIPPED_MODELS))
def test_shipped_model_beats_bicubic_on_a_photo(name):
    """A short forward pass on a real photo crop (not in the training data): x4 size, and closer to the HR crop than
    bicubic upscaling is, by the benchmark protocol (metrics.evaluate_set)."""
    model, _, _ = inference.load_generator(name)
    hr = skimage_data.astronaut()[100:196, 150:246]  # (96, 96, 3) uint8
    lr = metrics.imresize(hr, 1 / 4)  # (24, 24, 3), as the benchmarks make LR images
    sr = metrics.upscale_array(model, lr, 4)
    assert sr.shape == (96, 96, 3) and np.isfinite(sr).all()
    pairs = [("astronaut", hr, lr)]
    assert metrics.evaluate_set(model, pairs, 4)[0] > metrics.evaluate_set(None, pairs, 4)[0] + 0.5


def test_model_card_scores_are_reproduced_on_set5(shared_data):
    """The numbers in the model card are what eval.py measures for the shipped files (Set5, x4, standard protocol)."""
    pairs = metrics.load_test_pairs(sorted((shared_data / "Set5" / "HR").glob("*.png")), 4)
    for name in ("bicubic", *sorted(inference.SHIPPED_MODELS)):
        model = None if name == "bicubic" else inference.load_generator(name)[0]
        psnr, ssim = metrics.evaluate_set(model, pairs, 4)
        card_psnr, card_ssim = model_card_scores(name)["Set5"]
        assert psnr == pytest.approx(card_psnr, abs=0.006) and ssim == pytest.approx(card_ssim, abs=6e-5), name


# ------------------------------------------------------------------------------------------------------
# The scripts' defaults and names that use them
# ------------------------------------------------------------------------------------------------------
def test_super_resolve_with_no_model_upscales_with_the_compact_model_into_upscaled(tmp_path, monkeypatch, capsys):
    photo = tmp_path / "photo.jpg"
    Image.fromarray(skimage_data.chelsea()[:40, :50]).save(photo)
    monkeypatch.chdir(tmp_path)
    assert super_resolve.main([str(photo), "--no_progress"]) == 0
    assert "model: compact x4, the shipped 'compact' model" in capsys.readouterr().out
    with Image.open(tmp_path / "upscaled" / "photo_x4.png") as sr_img:
        assert sr_img.size == (200, 160)


def test_eval_takes_the_shipped_names(tmp_path, capsys):
    Image.fromarray(skimage_data.coffee()[:96, :120]).save(tmp_path / "coffee.png")
    (tmp_path / "Photo_test_images.json").write_text(json.dumps([str(tmp_path / "coffee.png")]))
    results = eval_script.main(["--model", "bicubic", "srresnet", "compact", "--data_folder", str(tmp_path),
                                "--test_sets", "Photo"])
    assert [r["model"] for r in results] == ["bicubic", "srresnet", "compact"]
    assert "| srresnet " in capsys.readouterr().out  # its row is named as the user named it


def test_train_srresnet_pretrained_starts_from_the_shipped_weights(tmp_path, monkeypatch):
    """--pretrained compact: the compact architecture and its weights, whatever the generator flags say (and the
    checkpoint records that architecture); with a learning rate of 1e-12 the weights stay the shipped ones."""
    for name in ("astronaut", "rocket"):
        (tmp_path / "images").mkdir(exist_ok=True)
        Image.fromarray(getattr(skimage_data, name)()[:64, :64]).save(tmp_path / "images" / f"{name}.png")
    create_data_lists.create_data_lists([str(tmp_path / "images")], [], min_size=24,
                                        output_folder=str(tmp_path / "lists"))
    handlers = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    monkeypatch.setattr(sys, "argv", ["train_srresnet.py", "--pretrained", "compact", "--n_blocks", "2",
                                      "--data_folder", str(tmp_path / "lists"), "--output_folder", str(tmp_path),
                                      "--crop_size", "32", "--batch_size", "2", "--iterations", "1", "--workers", "0",
                                      "--learning_rate", "1e-12", "--val_every", "0"])
    try:
        train_srresnet.main()
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)
    checkpoint = checkpoints.load_checkpoint(tmp_path / "checkpoint_srresnet.pth")
    assert (checkpoint["generator_arch"], checkpoint["generator_kwargs"]) == EXPECTED["compact"][:2]
    recorded = checkpoint["hyperparameters"]
    assert (recorded["generator_arch"], recorded["num_conv"], recorded["num_feat"]) == ("compact", 16, 64)
    shipped = inference.load_generator("compact")[0].state_dict()
    for name, value in shipped.items():
        torch.testing.assert_close(checkpoint["generator"][name], value, atol=1e-8, rtol=0, msg=name)
