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
    "realistic": ("compact", dict(num_feat=64, num_conv=32, upscale=4), 1_213_296),
    "realistic_gan": ("compact", dict(num_feat=64, num_conv=32, upscale=4), 1_213_296),
    "srgan": ("srresnet", dict(large_kernel_size=9, small_kernel_size=3, n_channels=64, n_blocks=16,
                               scaling_factor=4), 1_549_462),
}
# The GAN-trained models and the model each started from: they trade fidelity for invented texture.
GAN_MODELS = {"realistic_gan": "realistic", "srgan": "srresnet"}
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


@pytest.mark.parametrize("name", sorted(set(inference.SHIPPED_MODELS) - set(GAN_MODELS)))
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


@pytest.mark.parametrize("name", sorted(GAN_MODELS))
def test_shipped_gan_is_sharper_than_its_start_without_a_grid(name):
    """A GAN-trained model against the model it started from, on a real photo crop (not in the training data): more
    high-frequency power (metrics.calculate_spectral's hf_gain), no grid by the measure (lattice <= 0.5 dB or
    lattice_hr <= -10 dB), and a PSNR that does not collapse: within 4 dB of the starting model's on this one crop
    (the model card's sets: 1 to 3 dB; the SRGAN paper's own cost is 2.6 dB on Set5)."""
    hr = skimage_data.astronaut()[40:232, 120:312]  # (192, 192, 3) uint8: hair, face, flag
    lr = metrics.imresize(hr, 1 / 4)
    pairs = [("astronaut", hr, lr)]
    measures = ("psnr", "spectral")
    gan = metrics.measure_set(inference.load_generator(name)[0], pairs, 4, measures)
    start = metrics.measure_set(inference.load_generator(GAN_MODELS[name])[0], pairs, 4, measures)
    assert gan["hf_gain"] > start["hf_gain"] + 3, (gan, start)
    assert gan["lattice"] <= 0.5 or gan["lattice_hr"] <= -10, gan
    assert gan["psnr"] > start["psnr"] - 4, (gan, start)


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
def test_super_resolve_with_no_model_picks_the_shipped_model_by_the_file_kind(tmp_path, monkeypatch, capsys):
    """No --model: a JPEG file (by its bytes, whatever its name) is upscaled with 'realistic', any other file with
    'compact', into upscaled/; the run says which model each file got and why. The outputs are those of the two
    models named explicitly."""
    crop = skimage_data.chelsea()[:40, :50]
    Image.fromarray(crop).save(tmp_path / "photo.jpg", quality=75)
    Image.fromarray(crop).save(tmp_path / "scan.png")
    Image.fromarray(crop).save(tmp_path / "renamed.png", format="JPEG", quality=75)  # a JPEG named .png
    monkeypatch.chdir(tmp_path)
    assert super_resolve.main(["photo.jpg", "scan.png", "renamed.png", "--no_progress"]) == 0
    out = capsys.readouterr().out
    assert "'realistic' for a JPEG file, 'compact' for any other" in out
    for name, model in (("photo", "realistic"), ("scan", "compact"), ("renamed", "realistic")):
        kind = "a JPEG file" if model == "realistic" else "not a JPEG file"
        assert f"upscaled/{name}_x4.png (RGB 200x160), model {model} ({kind})" in out, name
        # (The output folders are named after the models: a folder does not shadow a shipped model's name.)
        assert super_resolve.main([f"{name}.{'jpg' if name == 'photo' else 'png'}", "--model", model,
                                   "--output_folder", model, "--no_progress"]) == 0
        with Image.open(tmp_path / "upscaled" / f"{name}_x4.png") as default, \
                Image.open(tmp_path / model / f"{name}_x4.png") as named:
            assert np.array_equal(np.asarray(default), np.asarray(named)), name
    # The two models differ on a JPEG (otherwise the rule would not matter).
    with Image.open(tmp_path / "upscaled" / "photo_x4.png") as realistic_img:
        assert super_resolve.main(["photo.jpg", "--model", "compact", "--output_folder", "compact",
                                   "--no_progress"]) == 0
        with Image.open(tmp_path / "compact" / "photo_x4.png") as compact_img:
            assert not np.array_equal(np.asarray(realistic_img), np.asarray(compact_img))


def test_default_model_for_reads_the_file_not_its_name(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.jpeg.png")  # a PNG named like a JPEG
    Image.new("RGB", (8, 8)).save(tmp_path / "b.png", format="JPEG")
    assert inference.default_model_for(tmp_path / "a.jpeg.png") == "compact"
    assert inference.default_model_for(tmp_path / "b.png") == "realistic"
    assert inference.default_model_for(tmp_path / "missing.jpg") == "compact"  # reading it will say what is wrong


def test_eval_takes_the_shipped_names(tmp_path, capsys):
    Image.fromarray(skimage_data.coffee()[:96, :120]).save(tmp_path / "coffee.png")
    (tmp_path / "Photo_test_images.json").write_text(json.dumps([str(tmp_path / "coffee.png")]))
    results = eval_script.main(["--model", "bicubic", "srresnet", "compact", "--data_folder", str(tmp_path),
                                "--test_sets", "Photo"])
    assert [r["model"] for r in results] == ["bicubic", "srresnet", "compact"]
    assert "| srresnet " in capsys.readouterr().out  # its row is named as the user named it


@pytest.mark.parametrize("num_conv", [None, 18])
def test_train_srresnet_pretrained_starts_from_the_shipped_weights(tmp_path, monkeypatch, num_conv):
    """--pretrained compact: the compact architecture and its weights, whatever the generator flags say (and the
    checkpoint records that architecture); with a learning rate of 1e-12 the weights stay the shipped ones. With
    --num_conv 18, the network is deepened (training.deepened_compact) and still computes what the shipped one does."""
    for name in ("astronaut", "rocket"):
        (tmp_path / "images").mkdir(exist_ok=True)
        Image.fromarray(getattr(skimage_data, name)()[:64, :64]).save(tmp_path / "images" / f"{name}.png")
    create_data_lists.create_data_lists([str(tmp_path / "images")], [], min_size=24,
                                        output_folder=str(tmp_path / "lists"))
    handlers = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    monkeypatch.setattr(sys, "argv", ["train_srresnet.py", "--pretrained", "compact", "--n_blocks", "2",
                                      "--data_folder", str(tmp_path / "lists"), "--output_folder", str(tmp_path),
                                      "--crop_size", "32", "--batch_size", "2", "--iterations", "1", "--workers", "0",
                                      "--learning_rate", "1e-12", "--val_every", "0",
                                      *(["--num_conv", str(num_conv)] if num_conv else [])])
    try:
        train_srresnet.main()
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)
    checkpoint = checkpoints.load_checkpoint(tmp_path / "checkpoint_srresnet.pth")
    expected_kwargs = dict(EXPECTED["compact"][1], num_conv=num_conv or 16)
    assert (checkpoint["generator_arch"], checkpoint["generator_kwargs"]) == ("compact", expected_kwargs)
    recorded = checkpoint["hyperparameters"]
    assert (recorded["generator_arch"], recorded["num_conv"], recorded["num_feat"]) == ("compact", num_conv or 16, 64)
    shipped = inference.load_generator("compact")[0]
    if num_conv is None:
        for name, value in shipped.state_dict().items():
            torch.testing.assert_close(checkpoint["generator"][name], value, atol=1e-8, rtol=0, msg=name)
    else:
        trained = inference.load_generator(tmp_path / "checkpoint_srresnet.pth")[0]
        lr_imgs = torch.from_numpy(skimage_data.coffee()[:24, :32]).permute(2, 0, 1)[None] / 255  # (1, 3, 24, 32)
        with torch.no_grad():
            torch.testing.assert_close(trained(lr_imgs), shipped(lr_imgs), atol=1e-5, rtol=0)
