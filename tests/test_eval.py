"""Tests of eval.py: the benchmark protocol end to end, its CLI, its table and JSON, and its errors.

The acceptance test: bicubic with generated LR reproduces the published bicubic baselines (EDSR / RCAN tables)
within 0.025 dB PSNR and 0.001 SSIM. Set5 and Set14 at x4 run in the default suite; all 9 set/scale pairs
(BSD100 and x2 take minutes on 2 cores) are marked slow.
"""
import importlib
import json

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skimage_data

import checkpoints
import cli
import inference
import metrics
import models

eval_script = importlib.import_module("eval")  # eval.py (the module name shadows no import, only the builtin name)

# The published bicubic baselines (the acceptance criterion; also in eval.PUBLISHED, checked here independently).
BICUBIC_BASELINES = {
    ("Set5", 4): (28.42, 0.8104), ("Set14", 4): (26.00, 0.7027), ("BSD100", 4): (25.96, 0.6675),
    ("Set5", 3): (30.39, 0.8682), ("Set14", 3): (27.55, 0.7742), ("BSD100", 3): (27.21, 0.7385),
    ("Set5", 2): (33.66, 0.9299), ("Set14", 2): (30.24, 0.8688), ("BSD100", 2): (29.56, 0.8431),
}


def write_list(folder, test_set, paths):
    """Write `<folder>/<test_set>_test_images.json` as create_data_lists.py does: a JSON list of HR image paths."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{test_set}_test_images.json", "w") as f:
        json.dump([str(p) for p in paths], f)


@pytest.fixture(scope="module")
def benchmark_lists(shared_data, tmp_path_factory):
    """Data lists for the real Set5, Set14 and BSD100 HR images (the images stay in ../shared/data)."""
    folder = tmp_path_factory.mktemp("lists")
    for test_set in ("Set5", "Set14", "BSD100"):
        write_list(folder, test_set, sorted((shared_data / test_set / "HR").glob("*.png")))
    return folder


@pytest.fixture(scope="module")
def photo_lists(tmp_path_factory):
    """A tiny test set of real photos (scikit-image's, saved as PNG), with no shared data needed."""
    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for name in ("astronaut", "coffee"):
        path = folder / f"{name}.png"
        Image.fromarray(getattr(skimage_data, name)()[:150, :130]).save(path)
        paths.append(path)
    write_list(folder / "lists", "Photos", paths)
    return folder / "lists"


def run_main(argv):
    """Run eval.py's main as the command line does: errors become one line on stderr and exit code 1."""
    return cli.run_cli(lambda: eval_script.main(argv))


# ------------------------------------------------------------------------------------------------------
# Acceptance: the published bicubic baselines
# ------------------------------------------------------------------------------------------------------
def check_bicubic_baselines(benchmark_lists, scale, test_sets, tmp_path):
    json_path = tmp_path / f"bicubic_x{scale}.json"
    eval_script.main(["--model", "bicubic", "--data_folder", str(benchmark_lists), "--scaling_factor", str(scale),
                      "--test_sets", *test_sets, "--json", str(json_path)])
    results = json.loads(json_path.read_text())["results"]
    assert [r["test_set"] for r in results] == list(test_sets)
    for r in results:
        published_psnr, published_ssim = BICUBIC_BASELINES[(r["test_set"], scale)]
        assert r["model"] == "bicubic" and r["scale"] == scale
        assert r["n_images"] == {"Set5": 5, "Set14": 14, "BSD100": 100}[r["test_set"]]
        assert abs(r["psnr"] - published_psnr) <= 0.025, r
        assert abs(r["ssim"] - published_ssim) <= 0.001, r


def test_bicubic_reproduces_published_baselines_set5_set14_x4(benchmark_lists, tmp_path):
    check_bicubic_baselines(benchmark_lists, 4, ("Set5", "Set14"), tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bicubic_reproduces_published_baselines_all_sets(benchmark_lists, tmp_path, scale):
    check_bicubic_baselines(benchmark_lists, scale, ("Set5", "Set14", "BSD100"), tmp_path)


# BasicSR 1.4.2's calculate_niqe(sr, crop_border=4, convert_to='y') averaged over Set5's bicubic x4 outputs (LR made
# with MATLAB's imresize, upscaled with it), computed once outside this project (see tests/test_metrics.py).
BASICSR_SET5_BICUBIC_X4_NIQE = 8.455715232177074


def test_set5_niqe_and_a_degraded_setting_from_the_command_line(benchmark_lists, tmp_path, capsys):
    """Acceptance: `--metrics psnr ssim niqe` on clean Set5 x4 gives BasicSR's bicubic NIQE within 0.1, and the same
    run with `--lr_degradation jpeg` names its setting in the table and the JSON."""
    argv = ["--data_folder", str(benchmark_lists), "--test_sets", "Set5", "--model", "bicubic",
            "--metrics", "psnr", "ssim", "niqe"]
    cli.run_cli(lambda: eval_script.main(argv + ["--json", str(tmp_path / "r.json")]))
    clean = json.loads((tmp_path / "r.json").read_text())["results"][0]
    assert clean["niqe"] == pytest.approx(BASICSR_SET5_BICUBIC_X4_NIQE, abs=0.1)   # (measured: 8.441, 0.015 off)
    assert clean["psnr"] == pytest.approx(28.42, abs=0.025) and clean["lr_degradation"] == "bicubic"
    cli.run_cli(lambda: eval_script.main(argv + ["--lr_degradation", "jpeg", "--json", str(tmp_path / "j.json")]))
    jpeg = json.loads((tmp_path / "j.json").read_text())["results"][0]
    assert jpeg["lr_degradation"] == "jpeg" and jpeg["psnr"] < clean["psnr"] - 0.5
    out = capsys.readouterr().out
    assert "| bicubic (jpeg LR) " in out and "NIQE: lower is better" in out


def test_provided_lr_gives_the_same_numbers_as_generated_on_set14(benchmark_lists, tmp_path):
    """Set14's LR images were made by MATLAB; ours are pixel-identical, so both LR sources give the same numbers."""
    results = {}
    for lr_source in ("generated", "provided"):
        results[lr_source] = eval_script.main(["--data_folder", str(benchmark_lists), "--test_sets", "Set14",
                                               "--scaling_factor", "3", "--lr_source", lr_source])[0]
    assert results["provided"]["psnr"] == pytest.approx(results["generated"]["psnr"], abs=1e-9)
    assert results["provided"]["ssim"] == pytest.approx(results["generated"]["ssim"], abs=1e-9)


def test_provided_lr_of_bsd100_x3_with_one_extra_row(shared_data, tmp_path):
    """BSD100's x3 LR images are 160x107 (made from a 480x321 crop) while HR is 480x320: the 321-row output is
    cropped top-left to the HR image cut to a multiple of 3 (318 rows), and measures like our generated LR."""
    hr_paths = sorted((shared_data / "BSD100" / "HR").glob("*.png"))[:4]
    write_list(tmp_path, "BSD100", hr_paths)
    lr = np.asarray(Image.open(metrics.provided_lr_path(hr_paths[0], 3)))
    assert 107 in lr.shape[:2]  # the extra row really is there
    provided = eval_script.main(["--data_folder", str(tmp_path), "--test_sets", "BSD100", "--scaling_factor", "3",
                                 "--lr_source", "provided"])[0]
    generated = eval_script.main(["--data_folder", str(tmp_path), "--test_sets", "BSD100", "--scaling_factor", "3"])[0]
    assert provided["n_images"] == 4
    assert provided["psnr"] == pytest.approx(generated["psnr"], abs=0.05)
    assert provided["ssim"] == pytest.approx(generated["ssim"], abs=0.002)


def test_greyscale_image_is_measured_on_its_own_values(shared_data, tmp_path):
    """Set14's bridge.png is single-channel: LR and SR stay single-channel, measured on grey values."""
    bridge = shared_data / "Set14" / "HR" / "bridge.png"
    write_list(tmp_path, "Bridge", [bridge])
    result = eval_script.main(["--data_folder", str(tmp_path), "--test_sets", "Bridge"])[0]
    hr = np.asarray(Image.open(bridge))
    assert hr.ndim == 2
    sr = metrics.imresize(metrics.imresize(metrics.modcrop_array(hr, 4), scale=1 / 4), scale=4)
    assert result["psnr"] == pytest.approx(metrics.calculate_psnr(sr, metrics.modcrop_array(hr, 4), crop_border=4))


def test_16bit_greyscale_image_gives_the_psnr_of_its_8bit_version(tmp_path, capsys):
    """A 16-bit grey PNG (each 8-bit level v stored as v * 257) is measured as its 8-bit version, not clipped white."""
    camera = skimage_data.camera()[100:196, 150:250]  # (96, 100) uint8, a real photo
    Image.fromarray(camera).save(tmp_path / "camera8.png")
    Image.fromarray(camera.astype(np.uint16) * 257).save(tmp_path / "camera16.png")
    assert Image.open(tmp_path / "camera16.png").mode == "I;16"
    write_list(tmp_path, "Grey8", [tmp_path / "camera8.png"])
    write_list(tmp_path, "Grey16", [tmp_path / "camera16.png"])
    torch.manual_seed(0)
    tiny = models.build_generator("srresnet", n_channels=8, n_blocks=1, scaling_factor=4)
    checkpoints.save_checkpoint({"kind": "srresnet", "iteration": 1, "generator_arch": "srresnet",
                           "generator": tiny.state_dict(), "generator_kwargs": tiny.generator_kwargs},
                          tmp_path / "tiny.pth")
    results = eval_script.main(["--data_folder", str(tmp_path), "--test_sets", "Grey8", "Grey16",
                                "--model", "bicubic", str(tmp_path / "tiny.pth")])
    by_set = {(r["model"], r["test_set"]): r for r in results}
    for model in ("bicubic", str(tmp_path / "tiny.pth")):
        grey8, grey16 = by_set[(model, "Grey8")], by_set[(model, "Grey16")]
        assert 5 < grey8["psnr"] < 40  # a real score, not inf (the random tiny network scores low)
        assert grey16["psnr"] == pytest.approx(grey8["psnr"], abs=0.01)
        assert grey16["ssim"] == pytest.approx(grey8["ssim"], abs=1e-4)
    assert "inf" not in capsys.readouterr().out


def test_an_infinite_psnr_is_explained_wherever_it_appears(tmp_path, capsys):
    """A flat image is reproduced exactly by bicubic: its PSNR, and its set's mean, are infinite -- and said why."""
    Image.new("RGB", (48, 48), (90, 120, 30)).save(tmp_path / "flat.png")
    Image.fromarray(skimage_data.astronaut()[:48, :48]).save(tmp_path / "photo.png")
    write_list(tmp_path, "Mixed", [tmp_path / "flat.png", tmp_path / "photo.png"])
    result = eval_script.main(["--data_folder", str(tmp_path), "--test_sets", "Mixed"])[0]
    captured = capsys.readouterr()
    assert result["psnr"] == float("inf")
    assert "note: the PSNR of flat is infinite: the output equals the HR image exactly" in captured.err
    table = captured.out.strip().splitlines()
    assert "inf* / " in table[2]
    assert table[-1].startswith("* infinite: some output equals its HR image exactly")


# ------------------------------------------------------------------------------------------------------
# CLI, table and JSON (no shared data needed)
# ------------------------------------------------------------------------------------------------------
def test_table_and_json(photo_lists, tmp_path, capsys):
    json_path = tmp_path / "out" / "results.json"
    results = eval_script.main(["--data_folder", str(photo_lists), "--test_sets", "Photos", "Missing",
                                "--scaling_factor", "2", "--json", str(json_path)])
    captured = capsys.readouterr()
    saved = json.loads(json_path.read_text())
    assert saved == {"results": results}
    assert len(results) == 1
    assert set(results[0]) == {"model", "test_set", "scale", "lr_degradation", "psnr", "ssim", "n_images", "images"}
    assert [set(image) for image in results[0]["images"]] == [{"image", "psnr", "ssim"}] * 2
    assert results[0]["lr_degradation"] == "bicubic"
    assert results[0]["model"] == "bicubic" and results[0]["test_set"] == "Photos"
    assert results[0]["scale"] == 2 and results[0]["n_images"] == 2
    assert 20 < results[0]["psnr"] < 45 and 0.5 < results[0]["ssim"] < 1
    # The markdown table: header, separator, one row; no published figures for this set.
    lines = captured.out.strip().splitlines()
    assert lines[0].startswith("| Model (x2)") and "Photos PSNR / SSIM" in lines[0]
    assert set(lines[1]) <= {"|", "-"}
    assert lines[2].startswith("| bicubic") and f"{results[0]['psnr']:.2f} / {results[0]['ssim']:.4f}" in lines[2]
    assert len(lines) == 3
    # The missing set is skipped with a note, not an error.
    assert "skipping Missing" in captured.err


def test_json_that_cannot_be_written_is_one_line_after_the_table(photo_lists, tmp_path, capsys):
    """--json naming a folder (or a file in a folder that refuses writes): the table is printed, then one line."""
    (tmp_path / "results.json").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        run_main(["--data_folder", str(photo_lists), "--test_sets", "Photos", "--scaling_factor", "2", "--json",
                  str(tmp_path / "results.json")])
    captured = capsys.readouterr()
    assert exit_info.value.code == 1 and "| bicubic" in captured.out
    errors = [line for line in captured.err.splitlines() if "error" in line.lower() or "Traceback" in line]
    assert len(errors) == 1 and errors[0].startswith("error: ") and "results.json" in errors[0], captured.err


def test_table_shows_published_figures_and_differences():
    results = [{"model": "bicubic", "test_set": "Set5", "scale": 4, "psnr": 28.43, "ssim": 0.8111, "n_images": 5}]
    table = eval_script.markdown_table(results, ["bicubic"], ["Set5", "Set14"], 4, {"bicubic": "Bicubic"}, "standard")
    cells = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in table.splitlines()]
    assert cells[0] == ["Model (x4)", "Set5 PSNR / SSIM", "Set14 PSNR / SSIM"]
    assert cells[2] == ["bicubic", "28.43 / 0.8111", "-"]
    assert cells[3] == ["published: Bicubic", "28.42 / 0.8104", "26.00 / 0.7027"]
    assert cells[4] == ["diff", "+0.010 / +0.0007", "-"]
    assert len(cells) == 5
    # The classic protocol is not comparable with papers: no published rows.
    assert len(eval_script.markdown_table(results, ["bicubic"], ["Set5"], 4, {"bicubic": "Bicubic"},
                                          "classic").splitlines()) == 3


def test_table_with_niqe_and_a_degraded_setting():
    """NIQE is a third number in each cell, the header says lower is better, the published rows have '-' for it;
    under a degraded setting the header and every model row name it, and there are no published rows."""
    results = [{"model": "bicubic", "test_set": "Set5", "scale": 4, "lr_degradation": "bicubic", "psnr": 28.43,
                "ssim": 0.8111, "niqe": 8.444, "n_images": 5}]
    table = eval_script.markdown_table(results, ["bicubic"], ["Set5"], 4, {"bicubic": "Bicubic"}, "standard",
                                       ("psnr", "ssim", "niqe"))
    cells = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in table.splitlines()]
    assert cells[0] == ["Model (x4; NIQE: lower is better)", "Set5 PSNR / SSIM / NIQE"]
    assert cells[2:] == [["bicubic", "28.43 / 0.8111 / 8.44"], ["published: Bicubic", "28.42 / 0.8104 / -"],
                         ["diff", "+0.010 / +0.0007 / -"]]
    results[0]["lr_degradation"] = "jpeg"
    table = eval_script.markdown_table(results, ["bicubic"], ["Set5"], 4, {"bicubic": "Bicubic"}, "standard",
                                       ("niqe",), "jpeg")
    cells = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in table.splitlines()]
    assert cells[0] == ["Model (x4, jpeg LR; NIQE: lower is better)", "Set5 NIQE"]
    assert cells[2:] == [["bicubic (jpeg LR)", "8.44"]]


@pytest.fixture(scope="module")
def niqe_photo_lists(tmp_path_factory):
    """Two real photos large enough for NIQE at x4 (at least two 96x96 blocks after the 4-pixel border crop)."""
    folder = tmp_path_factory.mktemp("niqe_photos")
    paths = []
    for name in ("astronaut", "chelsea"):
        paths.append(folder / f"{name}.png")
        Image.fromarray(getattr(skimage_data, name)()[:204, :300]).save(paths[-1])
    write_list(folder, "Photos", paths)
    return folder


def test_spectral_columns_and_each_images_numbers(niqe_photo_lists, tmp_path, capsys):
    """--metrics spectral: three columns in dB (HF gain, lattice, lattice/HR), each image's numbers in the JSON, the
    set's the mean of them; bicubic is blurrier than HR (hf_gain < 0)."""
    results = eval_script.main(["--data_folder", str(niqe_photo_lists), "--test_sets", "Photos", "--metrics",
                                "spectral", "psnr", "--json", str(tmp_path / "r.json")])
    header = capsys.readouterr().out.splitlines()[0]
    assert "Photos PSNR / HF gain / lattice / lattice/HR" in header and "spectral in dB" in header
    row = results[0]
    assert list(row)[4:8] == ["psnr", "hf_gain", "lattice", "lattice_hr"]
    for key in ("psnr", "hf_gain", "lattice", "lattice_hr"):
        assert row[key] == pytest.approx(np.mean([image[key] for image in row["images"]]))
    assert row["hf_gain"] < -10
    with pytest.raises(ValueError, match="standard protocol"):
        eval_script.main(["--data_folder", str(niqe_photo_lists), "--test_sets", "Photos", "--metrics", "spectral",
                          "--protocol", "classic"])


def test_degraded_setting_is_the_same_for_every_model_and_every_run(niqe_photo_lists, tmp_path):
    """--lr_degradation noise_jpeg: bicubic and a model see the same LR images (metrics.load_test_pairs with the
    setting), two runs write identical JSON, and the rows carry the setting and NIQE."""
    checkpoint = tmp_path / "tiny_srresnet.pth"
    model = tiny_checkpoint(checkpoint).eval()
    data = ["--data_folder", str(niqe_photo_lists), "--test_sets", "Photos"]
    argv = data + ["--model", "bicubic", str(checkpoint), "--lr_degradation", "noise_jpeg",
                   "--metrics", "niqe", "psnr", "ssim"]
    eval_script.main(argv + ["--json", str(tmp_path / "first.json")])
    eval_script.main(argv + ["--json", str(tmp_path / "second.json")])
    first = json.loads((tmp_path / "first.json").read_text())["results"]
    assert (tmp_path / "first.json").read_bytes() == (tmp_path / "second.json").read_bytes()
    assert [list(r) for r in first] == [["model", "test_set", "scale", "lr_degradation", "psnr", "ssim", "niqe",
                                         "n_images", "images"]] * 2
    assert {r["lr_degradation"] for r in first} == {"noise_jpeg"}
    pairs = metrics.load_test_pairs(metrics.read_test_list(niqe_photo_lists, "Photos"), 4,
                                    lr_degradation="noise_jpeg")
    for generator, row in zip((None, model), first):
        assert metrics.measure_set(generator, pairs, 4, ("psnr", "ssim", "niqe")) == {
            m: row[m] for m in ("psnr", "ssim", "niqe")}
    clean = eval_script.main(data + ["--metrics", "psnr"])[0]                       # bicubic, clean LR
    assert clean["psnr"] > first[0]["psnr"] + 0.5  # the noise and JPEG cost bicubic PSNR


def test_classic_protocol_runs_and_is_labelled(photo_lists, capsys):
    standard = eval_script.main(["--data_folder", str(photo_lists), "--test_sets", "Photos"])[0]
    classic = eval_script.main(["--data_folder", str(photo_lists), "--test_sets", "Photos", "--protocol", "classic"])[0]
    out = capsys.readouterr().out
    assert "FOR COMPARISON ONLY" in out
    assert abs(classic["psnr"] - standard["psnr"]) > 0.01


def tiny_checkpoint(path, scaling_factor=4):
    """A real (untrained) tiny SRResNet checkpoint, saved as train_srresnet.py saves them."""
    import models
    kwargs = dict(n_channels=8, n_blocks=1, scaling_factor=scaling_factor)
    torch.manual_seed(0)
    model = models.build_generator("srresnet", **kwargs)
    checkpoints.save_checkpoint({"kind": "srresnet", "generator_arch": "srresnet", "generator_kwargs": kwargs,
                           "generator": model.state_dict(), "iteration": 0}, path)
    return model


def test_checkpoint_model_is_evaluated_with_its_formats(photo_lists, tmp_path, capsys):
    """A generator runs on the LR image in its input format, its output is brought back to [0, 1], quantised to
    8 bits and measured: the same numbers as doing those steps by hand."""
    checkpoint = tmp_path / "tiny_srresnet.pth"
    model = tiny_checkpoint(checkpoint).eval()
    results = eval_script.main(["--model", "bicubic", str(checkpoint), "--data_folder", str(photo_lists),
                                "--test_sets", "Photos"])
    out = capsys.readouterr().out
    assert [r["model"] for r in results] == ["bicubic", str(checkpoint)]
    assert "published: SRResNet" not in out  # no published SRResNet figures for this set ...
    # ... and the numbers, by hand.
    hr_paths = json.loads((photo_lists / "Photos_test_images.json").read_text())
    psnrs = []
    for path in hr_paths:
        hr = np.asarray(Image.open(path))
        lr = metrics.imresize(metrics.modcrop_array(hr, 4), scale=1 / 4)
        with torch.no_grad():
            sr = model(torch.from_numpy(lr).permute(2, 0, 1).float().div(255).unsqueeze(0))   # [-1, 1] (tanh)
        sr = ((sr[0].permute(1, 2, 0).double().numpy() + 1) / 2).clip(0, 1)
        psnrs.append(metrics.evaluate_pair(sr, hr, 4)[0])
    assert results[1]["psnr"] == pytest.approx(np.mean(psnrs), abs=1e-4)


def test_evaluate_set_gives_eval_pys_numbers_and_scale_keeps_its_old_name(photo_lists, tmp_path, capsys):
    """metrics.evaluate_set, which a training script can call on its generator, measures exactly what eval.py
    prints; --scale, the old name of --scaling_factor, still works and says what replaced it."""
    checkpoint = tmp_path / "tiny_srresnet.pth"
    model = tiny_checkpoint(checkpoint).eval()
    results = eval_script.main(["--model", str(checkpoint), "--data_folder", str(photo_lists), "--test_sets", "Photos",
                                "--scale", "4"])
    assert "note: --scale is deprecated, use --scaling_factor" in capsys.readouterr().err
    pairs = metrics.load_test_pairs(metrics.read_test_list(photo_lists, "Photos"), 4)
    psnr, ssim = metrics.evaluate_set(model, pairs, 4)
    assert (psnr, ssim) == (results[0]["psnr"], results[0]["ssim"])
    bicubic = eval_script.main(["--data_folder", str(photo_lists), "--test_sets", "Photos"])[0]
    assert metrics.evaluate_set(None, pairs, 4) == (bicubic["psnr"], bicubic["ssim"])  # None: the bicubic baseline


def test_interpolated_model_gets_its_own_row(photo_lists, tmp_path, capsys):
    """--model A --interpolate_with B --alpha a evaluates the blend (1 - a) A + a B, here of two official-layout
    compact files, in a row named 'A ~ B @ a'."""
    import models
    states = []
    for seed, name in enumerate(("a.pth", "b.pth")):
        torch.manual_seed(seed)
        states.append({key: torch.randn_like(value) * 0.1 for key, value in
                       models.SRVGGNetCompact(num_feat=8, num_conv=1, upscale=4).state_dict().items()})
        torch.save({"params": states[-1]}, tmp_path / name)
    results = eval_script.main(["--model", "bicubic", str(tmp_path / "a.pth"), "--interpolate_with",
                                str(tmp_path / "b.pth"), "--alpha", "0.25", "--data_folder", str(photo_lists),
                                "--test_sets", "Photos"])
    name = f"{tmp_path / 'a.pth'} ~ {tmp_path / 'b.pth'} @ 0.25"
    assert [r["model"] for r in results] == ["bicubic", name] and f"| {name}" in capsys.readouterr().out
    blended = models.SRVGGNetCompact(num_feat=8, num_conv=1, upscale=4).eval()
    blended.load_state_dict({key: 0.75 * states[0][key] + 0.25 * states[1][key] for key in states[0]})
    pairs = metrics.load_test_pairs(metrics.read_test_list(photo_lists, "Photos"), 4)
    assert metrics.evaluate_set(blended, pairs, 4) == pytest.approx((results[1]["psnr"], results[1]["ssim"]))
    with pytest.raises(SystemExit):  # which of two checkpoints would be blended?
        eval_script.main(["--model", str(tmp_path / "a.pth"), str(tmp_path / "b.pth"), "--interpolate_with",
                          str(tmp_path / "b.pth"), "--alpha", "0.5", "--data_folder", str(photo_lists)])
    assert "one --model file" in capsys.readouterr().err


def x1_checkpoint(path, seed, data_scaling_factor=4, unshuffle_scale=4):
    """A tiny x1 pixel-unshuffle SRResNet (an x4 body behind a fold by 4), saved as train_srresnet.py saves it after
    training on data of `data_scaling_factor` (None: a file that does not say); unshuffle_scale 1: the x4 network."""
    kwargs = dict(n_channels=8, n_blocks=1, scaling_factor=4 // unshuffle_scale,
                  **({"unshuffle_scale": unshuffle_scale} if unshuffle_scale > 1 else {}))
    torch.manual_seed(seed)
    model = models.build_generator("srresnet", **kwargs)
    with torch.no_grad():  # random batch-norm statistics too, so that every tensor shows in the output
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.add_(0.1 * torch.randn_like(buffer))
    hyperparameters = {} if data_scaling_factor is None else {"scaling_factor": data_scaling_factor}
    checkpoints.save_checkpoint({"kind": "srresnet", "generator_arch": "srresnet", "generator_kwargs": kwargs,
                                 "generator": model.state_dict(), "iteration": 0, "hyperparameters": hyperparameters},
                                path)
    return model.eval()


def x1_by_hand(model, photo_lists):
    """PSNR / SSIM on Photos x4 of an x1 model fed each LR image with every pixel repeated 4 x 4, by hand."""
    scores = []
    for path in json.loads((photo_lists / "Photos_test_images.json").read_text()):
        hr = np.asarray(Image.open(path))
        lr = metrics.imresize(metrics.modcrop_array(hr, 4), scale=1 / 4)            # (h, w, 3) uint8
        lr_up = lr.repeat(4, axis=0).repeat(4, axis=1)                              # (4 h, 4 w, 3): nearest x4
        with torch.no_grad():
            sr = model(torch.from_numpy(lr_up).permute(2, 0, 1).float().div(255).unsqueeze(0))   # [-1, 1] (tanh)
        scores.append(metrics.evaluate_pair(((sr[0].permute(1, 2, 0).double().numpy() + 1) / 2).clip(0, 1), hr, 4))
    return tuple(np.mean(scores, axis=0))


def test_an_x1_model_of_x4_data_is_evaluated_at_x4_on_the_nearest_upscaled_lr(photo_lists, tmp_path, capsys):
    """eval.py --scaling_factor 4 with an x1 model trained on x4 data (its checkpoint says so): it is fed the LR
    image enlarged x4 with nearest neighbour, as in training, and says so in one line; and blended with an x4 model
    of the same network (its first convolution folded to the x1 input), in a row that names the blend."""
    model = x1_checkpoint(tmp_path / "x1.pth", seed=0)
    results = eval_script.main(["--model", str(tmp_path / "x1.pth"), "--data_folder", str(photo_lists),
                                "--test_sets", "Photos", "--scaling_factor", "4"])
    err = capsys.readouterr().err
    assert "srresnet x1 from train_srresnet.py" in err and "an x1 network trained on x4 data: fed the LR image " \
        "enlarged x4 with nearest neighbour, as in training" in err
    assert (results[0]["psnr"], results[0]["ssim"]) == pytest.approx(x1_by_hand(model, photo_lists), abs=1e-6)
    # Network interpolation across scales: every layer blended, the x4 model's first convolution folded first.
    x4 = x1_checkpoint(tmp_path / "x4.pth", seed=1, unshuffle_scale=1)
    results = eval_script.main(["--model", str(tmp_path / "x1.pth"), "--interpolate_with", str(tmp_path / "x4.pth"),
                                "--alpha", "0.5", "--data_folder", str(photo_lists), "--test_sets", "Photos"])
    captured = capsys.readouterr()
    name = f"{tmp_path / 'x1.pth'} ~ {tmp_path / 'x4.pth'} @ 0.5"
    assert results[0]["model"] == name and f"| {name}" in captured.out
    assert "x1 with x4: the first convolution conv_block1.conv_block.0.weight of" in captured.err
    first, x1_state, x4_state = "conv_block1.conv_block.0.weight", model.state_dict(), x4.state_dict()
    x4_state[first] = x4_state[first].repeat_interleave(16, dim=1) / 16  # folded to the x1 model's input
    blend = models.build_generator("srresnet", **model.generator_kwargs).eval()
    blend.load_state_dict({key: value if not value.is_floating_point() else 0.5 * value + 0.5 * x4_state[key]
                           for key, value in x1_state.items()})
    # (float32 sums in eval.py's channels_last layout and in NCHW differ in the last bits: 1e-5 dB)
    assert (results[0]["psnr"], results[0]["ssim"]) == pytest.approx(x1_by_hand(blend, photo_lists), abs=1e-5)
    # An x1 file that does not say which data it was trained on is an x1 model: not evaluated at x4.
    x1_checkpoint(tmp_path / "x1_unknown.pth", seed=0, data_scaling_factor=None)
    with pytest.raises(SystemExit) as excinfo:
        run_main(["--model", str(tmp_path / "x1_unknown.pth"), "--data_folder", str(photo_lists), "--test_sets",
                  "Photos", "--scaling_factor", "4"])
    assert_one_line_error(capsys, excinfo, "upscales x1, not x4")
    # Networks that differ beyond the first convolution cannot be blended: one line.
    models_kwargs = dict(n_channels=8, n_blocks=2, scaling_factor=4)
    checkpoints.save_checkpoint({"kind": "srresnet", "generator_arch": "srresnet", "generator_kwargs": models_kwargs,
                                 "generator": models.build_generator("srresnet", **models_kwargs).state_dict(),
                                 "iteration": 0}, tmp_path / "x4_deeper.pth")
    with pytest.raises(SystemExit) as excinfo:
        run_main(["--model", str(tmp_path / "x1.pth"), "--interpolate_with", str(tmp_path / "x4_deeper.pth"),
                  "--alpha", "0.5", "--data_folder", str(photo_lists), "--test_sets", "Photos"])
    assert_one_line_error(capsys, excinfo, "not the same network")


def test_checkpoint_rows_get_published_figures_on_benchmark_sets(shared_data, tmp_path, capsys):
    checkpoint = tmp_path / "tiny_srresnet.pth"
    tiny_checkpoint(checkpoint)
    write_list(tmp_path, "Set5", sorted((shared_data / "Set5" / "HR").glob("*.png"))[:1])
    eval_script.main(["--model", str(checkpoint), "--data_folder", str(tmp_path), "--test_sets", "Set5"])
    out = capsys.readouterr().out
    assert "| published: SRResNet" in out and "32.05 / 0.9019" in out


# ------------------------------------------------------------------------------------------------------
# Errors a user can cause: one line on stderr, non-zero exit, nothing computed lost
# ------------------------------------------------------------------------------------------------------
def assert_one_line_error(capsys, excinfo, *words):
    assert excinfo.value.code == 1
    err_lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err_lines) == 1
    for word in words:
        assert word in err_lines[0]


def test_docstring_names_every_shipped_model():
    """eval.py's docstring (its --help) says which names --model takes: every shipped model's."""
    assert all(f"`{name}`" in eval_script.__doc__ for name in inference.SHIPPED_MODELS)


def test_missing_data_folder_or_lists(tmp_path, capsys):
    with pytest.raises(SystemExit) as excinfo:
        run_main(["--data_folder", str(tmp_path / "nowhere")])
    assert_one_line_error(capsys, excinfo, "Data folder not found")
    with pytest.raises(SystemExit) as excinfo:
        run_main(["--data_folder", str(tmp_path)])  # exists, but holds no list
    assert_one_line_error(capsys, excinfo, "No test list", "create_data_lists.py")


def test_unreadable_image_keeps_results_of_finished_sets(photo_lists, tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png at all")
    write_list(tmp_path, "Broken", [broken])
    write_list(tmp_path, "Photos", json.loads((photo_lists / "Photos_test_images.json").read_text()))
    json_path = tmp_path / "partial.json"
    with pytest.raises(SystemExit) as excinfo:
        run_main(["--data_folder", str(tmp_path), "--test_sets", "Photos", "Broken", "--json", str(json_path)])
    captured_json = json.loads(json_path.read_text())
    assert_one_line_error(capsys, excinfo, "broken.png")
    assert [r["test_set"] for r in captured_json["results"]] == ["Photos"]


def test_wrong_checkpoints(photo_lists, tmp_path, capsys):
    not_a_checkpoint = tmp_path / "junk.pth"
    not_a_checkpoint.write_bytes(b"junk")
    with pytest.raises(SystemExit) as excinfo:
        run_main(["--model", str(not_a_checkpoint), "--data_folder", str(photo_lists), "--test_sets", "Photos"])
    assert_one_line_error(capsys, excinfo, "junk.pth")
    with pytest.raises(SystemExit) as excinfo:
        run_main(["--model", str(tmp_path / "missing.pth"), "--data_folder", str(photo_lists)])
    assert_one_line_error(capsys, excinfo, "missing.pth")
    # A x4 model asked to evaluate at x2.
    checkpoint = tmp_path / "tiny_x4.pth"
    tiny_checkpoint(checkpoint)
    with pytest.raises(SystemExit) as excinfo:
        run_main(["--model", str(checkpoint), "--data_folder", str(photo_lists), "--test_sets", "Photos",
                  "--scaling_factor", "2"])
    assert_one_line_error(capsys, excinfo, "x4", "--scaling_factor 4")


def test_missing_provided_lr(photo_lists, capsys):
    with pytest.raises(SystemExit) as excinfo:
        run_main(["--data_folder", str(photo_lists), "--test_sets", "Photos", "--lr_source", "provided"])
    assert_one_line_error(capsys, excinfo, "LR_bicubic", "--lr_source generated")



def test_rgb_psnr_column(photo_lists, capsys):
    """--metrics psnr psnr_rgb: each cell 'PSNR / RGB PSNR', the RGB one metrics.calculate_rgb_psnr's mean, lower
    than Y's on colour photos; refused under the classic protocol."""
    results = eval_script.main(["--data_folder", str(photo_lists), "--test_sets", "Photos",
                                "--metrics", "psnr_rgb", "psnr"])
    assert "Photos PSNR / RGB PSNR" in capsys.readouterr().out
    pairs = metrics.load_test_pairs(metrics.read_test_list(photo_lists, "Photos"), 4)
    expected = np.mean([metrics.calculate_rgb_psnr(metrics.imresize(lr, scale=4), hr, 4) for _, hr, lr in pairs])
    assert results[0]["psnr_rgb"] == pytest.approx(expected, abs=1e-12) and results[0]["psnr_rgb"] < results[0]["psnr"]
    with pytest.raises(SystemExit) as excinfo:
        run_main(["--data_folder", str(photo_lists), "--test_sets", "Photos", "--metrics", "psnr_rgb",
                  "--protocol", "classic"])
    assert_one_line_error(capsys, excinfo, "psnr_rgb", "standard protocol")


def test_degraded_settings_and_niqe_refuse_what_they_cannot_do(photo_lists, capsys):
    with pytest.raises(SystemExit) as excinfo:
        run_main(["--data_folder", str(photo_lists), "--test_sets", "Photos", "--lr_degradation", "jpeg",
                  "--lr_source", "provided"])
    assert_one_line_error(capsys, excinfo, "--lr_degradation jpeg", "--lr_source generated")
    with pytest.raises(SystemExit) as excinfo:
        run_main(["--data_folder", str(photo_lists), "--test_sets", "Photos", "--metrics", "niqe",
                  "--protocol", "classic"])
    assert_one_line_error(capsys, excinfo, "niqe", "standard protocol")
    # The photos are 150x130: after the border crop, one 96x96 block only, too few for NIQE.
    with pytest.raises(SystemExit) as excinfo:
        run_main(["--data_folder", str(photo_lists), "--test_sets", "Photos", "--metrics", "niqe"])
    assert_one_line_error(capsys, excinfo, "astronaut", "96x96 blocks", "without niqe")
    with pytest.raises(SystemExit) as excinfo:  # argparse: not one of the listed choices
        eval_script.main(["--data_folder", str(photo_lists), "--lr_degradation", "blur"])
    assert excinfo.value.code == 2 and "realesrgan" in capsys.readouterr().err
