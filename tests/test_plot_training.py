"""Tests of plot_training.py: it reads back what the training scripts log (training_log.LogFiles) and draws two pictures.
(tests/test_training.py also draws a real tiny run with it.)"""
import numpy as np
import pytest
from PIL import Image

import plot_training
import training_log

ITERATIONS = (0, 10, 20, 30, 40)


def write_run(folder):
    """The logs of a made-up train_srgan.py run, written by training_log.LogFiles as training writes them: two validated
    sets, bicubic's scores, and an SR crop per validation whose pixels all equal the iteration."""
    log = training_log.LogFiles(folder, "srgan", 0)
    log.write({"iteration": 0, "time": 0.0, "bicubic": {"Set5": {"psnr": 28.4, "ssim": 0.81},
                                                        "Set14": {"psnr": 26.0, "ssim": 0.70}}})
    for name, value in (("hr", 255), ("bicubic", 128)):
        log.add_image(f"val_crop/{name}", np.full((8, 8, 3), value, np.uint8), 0)
    for iteration in ITERATIONS:
        log.write({"iteration": iteration, "time": float(iteration), "losses": {"pixel": 0.1}})
        log.write({"iteration": iteration, "time": float(iteration),
                   "val": {"Set5": {"psnr": 20 + iteration / 10, "ssim": 0.5}, "Set14": {"psnr": 19.0, "ssim": 0.4}}})
        log.add_image("val_crop/sr", np.full((8, 8, 3), iteration, np.uint8), iteration)
    log.close()


def test_reads_the_logs_and_draws_the_curve_and_the_strip(tmp_path):
    write_run(tmp_path)
    scores, bicubic = plot_training.read_validation(tmp_path, "srgan")
    assert scores == {"Set5": [(i, 20 + i / 10, 0.5) for i in ITERATIONS],
                      "Set14": [(i, 19.0, 0.4) for i in ITERATIONS]}
    assert bicubic == {"Set5": {"psnr": 28.4, "ssim": 0.81}, "Set14": {"psnr": 26.0, "ssim": 0.70}}
    crops = plot_training.read_crops(tmp_path, "srgan")  # through TensorBoard's reader, every image (not a sample)
    assert [step for step, _ in crops["sr"]] == list(ITERATIONS)
    assert all(np.array_equal(image, np.full((8, 8, 3), step, np.uint8)) for step, image in crops["sr"])
    assert crops["hr"].max() == crops["hr"].min() == 255 and crops["bicubic"].max() == 128
    assert plot_training.spread(list(ITERATIONS), 3) == [0, 20, 40] and plot_training.spread([1, 2], 5) == [1, 2]
    paths = plot_training.main([str(tmp_path), "--kind", "srgan", "--output_folder", str(tmp_path / "plots"),
                                "--strip_count", "3"])
    assert paths == [tmp_path / "plots" / "validation_curve.png", tmp_path / "plots" / "validation_strip.png"]
    curve, strip = (Image.open(path) for path in paths)
    assert curve.format == strip.format == "PNG"
    assert strip.width > 3 * strip.height  # a strip: bicubic, three SR crops, HR side by side


def test_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="No training log.*--kind srgan"):
        plot_training.main([str(tmp_path)])
    log = training_log.LogFiles(tmp_path, "srresnet", 0)  # a run that never validated
    log.write({"iteration": 1, "time": 1.0, "losses": {"loss": 0.5}})
    log.close()
    with pytest.raises(ValueError, match="holds no validation.*--val_every"):
        plot_training.main([str(tmp_path)])


def test_pictures_that_cannot_be_written_give_one_line(tmp_path, monkeypatch, capsys):
    import sys

    import cli

    write_run(tmp_path)
    (tmp_path / "plots" / "validation_curve.png").mkdir(parents=True)  # a folder where the picture should go
    monkeypatch.setattr(sys, "argv", ["plot_training.py", str(tmp_path), "--kind", "srgan", "--output_folder",
                                      str(tmp_path / "plots")])
    with pytest.raises(SystemExit):
        cli.run_cli(plot_training.main)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "validation_curve.png" in lines[0], lines


def test_a_damaged_log_is_read_around_and_named(tmp_path, capsys):
    """Lines of the JSON-lines log that are not records (a list, a string, a record without its iteration, binary
    bytes, a validation without its SSIM) are left out with a note that names the file; the rest is drawn."""
    write_run(tmp_path)
    path = tmp_path / "log_srgan.jsonl"
    with open(path, "ab") as file:
        file.write(b'[1, 2, 3]\n"a string"\n{"val": {"Set5": {"psnr": 1.0, "ssim": 0.1}}}\n')
        file.write(b"\x00\xff\xfe binary \x80\n")
        file.write(b'{"iteration": 50, "time": 50.0, "val": {"Set5": {"psnr": 30.0}}}\n')
    scores, bicubic = plot_training.read_validation(tmp_path, "srgan")
    assert scores == {"Set5": [(i, 20 + i / 10, 0.5) for i in ITERATIONS],
                      "Set14": [(i, 19.0, 0.4) for i in ITERATIONS]}
    assert str(path) in capsys.readouterr().err
    assert len(plot_training.main([str(tmp_path), "--kind", "srgan", "--output_folder", str(tmp_path / "plots")])) == 2


def test_an_output_folder_that_is_a_file_is_one_line(tmp_path):
    write_run(tmp_path)
    (tmp_path / "afile").write_text("not a folder")
    for folder in (tmp_path / "afile", tmp_path / "afile" / "sub"):
        with pytest.raises(ValueError, match=r"^The output folder .*afile.* is a file, not a folder"):
            plot_training.main([str(tmp_path), "--kind", "srgan", "--output_folder", str(folder)])
