"""Tests for create_data_lists.py: test-set names, skipping bad images, atomic lists, CLI errors, quick start, real sets."""
import csv
import hashlib
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from skimage import data as skimage_data

import create_data_lists as cdl
from create_data_lists import create_data_lists


def save_noise_image(path, width, height, mode="RGB", format=None):
    """Save a random-noise image (noise does not compress, so chopping the file really removes pixel data)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    channels = {"RGB": 3, "L": 1}[mode]
    pixels = np.random.default_rng(0).integers(0, 256, size=(height, width, channels), dtype=np.uint8)
    Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels).save(path, format=format)  # (H, W) -> L
    return str(path)


def save_truncated_png(path):
    """A real PNG with the second half of its bytes cut off: it opens, but decoding it fails."""
    save_noise_image(path, 200, 200)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return str(path)


def list_files_in(folder):
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def run_cli(*args, cwd):
    """Run the script as a user would, with this Python."""
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "create_data_lists.py")
    return subprocess.run([sys.executable, script, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("folder, name", [
    ("../shared/data/Set5/HR", "Set5"),
    ("/data/Set14/HR/", "Set14"),
    ("/data/BSD100/hr", "BSD100"),
    ("/data/Urban100", "Urban100"),
    ("/data/DIV2K_valid_HR", "DIV2K_valid_HR"),
    ("relative/Manga109/", "Manga109"),
])
def test_test_set_named_after_folder_or_parent_of_hr(folder, name):
    assert cdl.name_of_test_set(folder) == name


def test_bad_images_skipped_and_reported(tmp_path, capsys):
    train = tmp_path / "train"
    kept = [
        save_noise_image(train / "colour.png", 120, 130),
        save_noise_image(train / "grey.jpg", 150, 110, mode="L"),  # greyscale is fine
        save_noise_image(train / "exactly_min.bmp", 100, 100),  # min(w, h) == min_size is kept
        save_noise_image(train / "nested" / "deeper" / "UPPER.PNG", 101, 200),  # training folders are recursive
    ]
    save_truncated_png(train / "truncated.png")
    (train / "text.png").write_text("this is not an image")
    save_noise_image(train / "small.png", 99, 300)
    Image.fromarray(np.full((120, 120), 0.5, np.float32)).save(train / "float.tif")  # mode 'F': no known range
    (train / "notes.txt").write_text("ignored: not an image extension")
    (train / ".hidden.png").write_text("ignored: hidden file")

    test = tmp_path / "MySet" / "HR"
    test_kept = [save_noise_image(test / "tiny.png", 20, 20)]  # test images are never filtered by size
    (test / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    save_noise_image(test / "sub" / "not_included.png", 120, 120)  # test folders are not recursive

    output = tmp_path / "lists"
    summary = create_data_lists([str(train)], [str(test)], min_size=100, output_folder=str(output))
    report = capsys.readouterr().out

    # The lists hold exactly the usable images, sorted absolute paths.
    assert summary["train_images"] == sorted(kept)
    assert summary["test_images"] == {"MySet": test_kept}
    assert list_files_in(output) == ["MySet_test_images.json", "train_images.json"]  # no temp files left
    assert json.loads((output / "train_images.json").read_text()) == sorted(kept)
    assert json.loads((output / "MySet_test_images.json").read_text()) == test_kept
    for path in summary["train_images"] + test_kept:
        assert os.path.isabs(path) and os.path.isfile(path)

    # Every skipped image is named, with its reason, in the summary and in the printed report.
    reasons = {os.path.basename(path): reason for path, reason in summary["skipped"]}
    assert set(reasons) == {"truncated.png", "text.png", "small.png", "broken.png", "float.tif"}
    assert reasons["float.tif"].startswith("unreadable") and "floating-point" in reasons["float.tif"]
    assert reasons["truncated.png"].startswith("unreadable")
    assert reasons["text.png"].startswith("unreadable")
    assert reasons["broken.png"].startswith("unreadable")
    assert reasons["small.png"].startswith("too small: 99x300")
    assert "Skipped images: 5" in report
    assert "Training images: 4" in report and "Test set 'MySet': 1 images" in report
    for name in reasons:
        assert name in report


def test_lists_are_reproducible(tmp_path):
    train = tmp_path / "train"
    for index in (3, 1, 2):
        save_noise_image(train / f"image_{index}.png", 100 + index, 100)
    create_data_lists([str(train)], [], output_folder=str(tmp_path / "a"))
    create_data_lists([str(train)], [], output_folder=str(tmp_path / "b"))
    first = (tmp_path / "a" / "train_images.json").read_bytes()
    assert first == (tmp_path / "b" / "train_images.json").read_bytes()
    assert json.loads(first) == sorted(json.loads(first))


def test_cli_missing_folder_fails_cleanly(tmp_path):
    result = run_cli("--train_folders", str(tmp_path / "no_such_folder"), "--output_folder", "lists", cwd=tmp_path)
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0, result.stderr  # one line, no traceback
    assert "no_such_folder does not exist; check the path or run without folders for the bundled sample images" \
        in result.stderr
    assert not (tmp_path / "lists").exists()  # nothing written


def test_lists_that_cannot_be_written_give_one_line(tmp_path, monkeypatch, capsys):
    """A list where a folder is, or an output folder that refuses writes: one line naming the file, no traceback,
    and the lists that were there are untouched."""
    import cli
    import utils

    save_noise_image(tmp_path / "train" / "a.png", 120, 120)
    output = tmp_path / "lists"
    (output / "train_images.json").mkdir(parents=True)  # a folder where the list should go

    def one_line(**kwargs):
        with pytest.raises(SystemExit) as exit_info:
            cli.run_cli(lambda: create_data_lists([str(tmp_path / "train")], [], output_folder=str(output), **kwargs))
        lines = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 1 and len(lines) == 1 and lines[0].startswith("error: "), lines
        return lines[0]

    assert "train_images.json" in one_line()
    (output / "train_images.json").rmdir()
    (output / "Set5_test_images.json").write_text('["old test list"]')

    def read_only(*args, **kwargs):  # what a read-only folder answers (chmod would not stop root)
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(utils.tempfile, "mkstemp", read_only)
    assert "Permission denied" in one_line() and "train_images.json" in one_line()
    assert (output / "Set5_test_images.json").read_text() == '["old test list"]'


def test_failed_run_keeps_existing_lists(tmp_path):
    # A previous good run left lists behind.
    output = tmp_path / "lists"
    output.mkdir()
    (output / "train_images.json").write_text('["old training list"]')
    (output / "Set5_test_images.json").write_text('["old test list"]')

    # This run finds only a too-small training image: it must fail and touch nothing. (The CLI turns this
    # ValueError into one line on stderr and exit status 1, as test_cli_missing_folder_fails_cleanly checks.)
    train = tmp_path / "train"
    save_noise_image(train / "small.png", 50, 50)
    save_noise_image(tmp_path / "Set5" / "HR" / "ok.png", 50, 50)
    with pytest.raises(ValueError, match="No usable training images .*small.png"):
        create_data_lists([str(train)], [str(tmp_path / "Set5" / "HR")], output_folder=str(output))
    assert (output / "train_images.json").read_text() == '["old training list"]'
    assert (output / "Set5_test_images.json").read_text() == '["old test list"]'
    assert list_files_in(output) == ["Set5_test_images.json", "train_images.json"]

    # Same when one test folder of several is missing (checked before any image is read).
    with pytest.raises(FileNotFoundError, match="does not exist"):
        create_data_lists([str(train)], [str(tmp_path / "Set5" / "HR"), str(tmp_path / "Set14")],
                          min_size=10, output_folder=str(output))
    assert (output / "train_images.json").read_text() == '["old training list"]'


def test_lists_are_replaced_all_or_nothing(tmp_path):
    # The second list cannot be serialised: the first must not have been replaced either.
    (tmp_path / "a.json").write_text('["old a"]')
    with pytest.raises(TypeError):
        cdl.write_lists({"a.json": ["new a"], "b.json": [object()]}, str(tmp_path))
    assert (tmp_path / "a.json").read_text() == '["old a"]'
    assert list_files_in(tmp_path) == ["a.json"]  # no temporary files left behind

    cdl.write_lists({"a.json": ["new a"], "b.json": ["new b"]}, str(tmp_path))
    assert json.loads((tmp_path / "a.json").read_text()) == ["new a"]
    assert json.loads((tmp_path / "b.json").read_text()) == ["new b"]


def test_test_folder_mistakes_get_clear_errors(tmp_path):
    save_noise_image(tmp_path / "Set5" / "HR" / "baby.png", 30, 30)
    # Giving the set's top folder instead of its HR folder: say which folder was meant.
    with pytest.raises(ValueError, match="did you mean .*HR"):
        create_data_lists([], [str(tmp_path / "Set5")], output_folder=str(tmp_path / "lists"))
    # Two different folders that would both be called 'Set5'.
    save_noise_image(tmp_path / "other" / "Set5" / "baby.png", 30, 30)
    with pytest.raises(ValueError, match="would all be named 'Set5'"):
        create_data_lists([], [str(tmp_path / "Set5" / "HR"), str(tmp_path / "other" / "Set5")],
                          output_folder=str(tmp_path / "lists"))
    assert not (tmp_path / "lists").exists()
    # The same folder twice is simply one set.
    summary = create_data_lists([], [str(tmp_path / "Set5" / "HR"), str(tmp_path / "Set5" / "HR") + "/"],
                                output_folder=str(tmp_path / "lists"))
    assert list(summary["test_images"]) == ["Set5"] and summary["train_images"] is None
    assert list_files_in(tmp_path / "lists") == ["Set5_test_images.json"]  # no training list without train folders


def test_overlap_between_train_and_test_is_warned(tmp_path, capsys):
    save_noise_image(tmp_path / "images" / "a.png", 120, 120)
    create_data_lists([str(tmp_path)], [str(tmp_path / "images")], output_folder=str(tmp_path / "lists"))
    assert "1 of the 1 images of test set 'images' are also training images" in capsys.readouterr().out


def test_sample_images_without_folders_work_offline(tmp_path, monkeypatch, capsys):
    # Any attempt to reach the network (e.g. scikit-image fetching a non-bundled image) fails the test.
    def no_network(*args, **kwargs):
        raise AssertionError("create_data_lists tried to use the network")
    monkeypatch.setattr(socket.socket, "connect", no_network)

    summary = create_data_lists([], [], output_folder=str(tmp_path / "lists"))
    report = capsys.readouterr().out
    assert summary["used_sample_images"]
    assert "bundled with scikit-image" in report and "--train_folders" in report

    train_images, test_sets = summary["train_images"], summary["test_images"]
    assert len(train_images) == 11 and {name: len(paths) for name, paths in test_sets.items()} == {
        "Samples": 2, "Unseen": 5}
    assert json.loads((tmp_path / "lists" / "train_images.json").read_text()) == train_images
    for name, paths in test_sets.items():
        assert json.loads((tmp_path / "lists" / f"{name}_test_images.json").read_text()) == paths
    pixel_hashes = []
    for path in train_images + test_sets["Samples"] + test_sets["Unseen"]:
        assert path.startswith(str(tmp_path / "lists" / "sample_images"))
        with Image.open(path) as img:
            assert img.format == "PNG" and img.mode == "RGB" and min(img.size) >= 170
            pixels = np.asarray(img)
        pixel_hashes.append(hashlib.sha256(pixels.tobytes()).hexdigest())
        # The photo as scikit-image gives it; a grey one repeated into R = G = B.
        name = os.path.splitext(os.path.basename(path))[0]
        original = skimage_data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skimage_data, name)()
        assert np.array_equal(pixels, original if original.ndim == 3 else np.stack([original] * 3, axis=2))
    assert len(set(pixel_hashes)) == 18  # eighteen different photos: no test photo is also a training photo
    assert "camera.png" in str(test_sets["Unseen"]) and "brick.png" in str(train_images)


def manifest_sizes(shared_data, folder):
    """{file name: (width, height)} of one folder, read from the data's MANIFEST.tsv (an independent record)."""
    with open(shared_data / "MANIFEST.tsv", newline="") as file:
        rows = list(csv.DictReader(file, delimiter="\t"))
    return {os.path.basename(row["path"]): (int(row["width"]), int(row["height"]))
            for row in rows if os.path.dirname(row["path"]) == folder}


def test_real_benchmark_sets(shared_data, tmp_path):
    folders = [str(shared_data / name / "HR") for name in ("Set5", "Set14", "BSD100")]
    summary = create_data_lists([], folders, output_folder=str(tmp_path))
    assert {name: len(paths) for name, paths in summary["test_images"].items()} == \
        {"Set5": 5, "Set14": 14, "BSD100": 100}
    assert summary["skipped"] == []
    for name, paths in summary["test_images"].items():
        assert [os.path.basename(path) for path in paths] == sorted(manifest_sizes(shared_data, f"{name}/HR"))
        assert json.loads((tmp_path / f"{name}_test_images.json").read_text()) == paths
    # bridge.png is single-channel grey and must still be in Set14.
    bridge = str(shared_data.resolve() / "Set14" / "HR" / "bridge.png")
    assert os.path.realpath(bridge) in {os.path.realpath(path) for path in summary["test_images"]["Set14"]}
    with Image.open(bridge) as img:
        assert img.mode == "L"


def test_real_training_set_min_size(shared_data, tmp_path):
    # Which T91 images are too small is computed from the MANIFEST, not from the images themselves.
    sizes = manifest_sizes(shared_data, "train/T91")
    too_small = sorted(name for name, (width, height) in sizes.items() if min(width, height) < 100)
    assert too_small  # T91 has such images, so this test checks something
    summary = create_data_lists([str(shared_data / "train" / "T91")], [], min_size=100, output_folder=str(tmp_path))
    assert sorted(os.path.basename(path) for path, _ in summary["skipped"]) == too_small
    assert sorted(os.path.basename(path) for path in summary["train_images"]) == \
        sorted(set(sizes) - set(too_small))


# ------------------------------------------------------------------------------------------------------
# Paired training data (--train_lr_folders)
# ------------------------------------------------------------------------------------------------------
def test_paired_lists_match_by_name_and_report_mismatches(tmp_path, capsys):
    hr, lr = tmp_path / "HR", tmp_path / "LR"
    save_noise_image(hr / "a.png", 120, 100)
    save_noise_image(lr / "a.png", 30, 25)  # a plain LR folder with the same names
    save_noise_image(hr / "sub" / "b.jpg", 130, 101)  # sides not multiples of 4: LR = HR // 4
    save_noise_image(lr / "sub" / "bx4.png", 32, 25)  # the benchmark packs' <name>x<s>, another extension
    save_noise_image(hr / "wrong_size.png", 120, 100)
    save_noise_image(lr / "wrong_size.png", 40, 33)  # an x3 image, not x4
    save_noise_image(hr / "alone.png", 120, 100)  # no LR image at all
    summary = create_data_lists([str(hr)], [], min_size=96, output_folder=str(tmp_path / "lists"),
                                train_lr_folders=[str(lr)], scaling_factor=4)
    written = json.loads((tmp_path / "lists" / "train_images.json").read_text())
    assert written == summary["train_images"] == [
        {"hr": str(hr / "a.png"), "lr": str(lr / "a.png"), "scaling_factor": 4},
        {"hr": str(hr / "sub" / "b.jpg"), "lr": str(lr / "sub" / "bx4.png"), "scaling_factor": 4}]
    reasons = dict(summary["skipped"])
    assert "40x33" in reasons[str(hr / "wrong_size.png")] and "30x25" in reasons[str(hr / "wrong_size.png")]
    assert "no LR image" in reasons[str(hr / "alone.png")]
    assert len(reasons) == 2  # the LR folder's own images are not taken for HR images
    report = capsys.readouterr().out
    assert "Training pairs" in report and "wrong_size.png" in report and "alone.png" in report
    # Training reads the pairs (and still reads plain lists), and refuses pairs of another scale.
    import datasets
    assert datasets.paired_lists(written, 4) == ([str(hr / "a.png"), str(hr / "sub" / "b.jpg")],
                                                 [str(lr / "a.png"), str(lr / "sub" / "bx4.png")])
    assert datasets.paired_lists(["x.png", "y.png"], 4) == (["x.png", "y.png"], None)
    with pytest.raises(ValueError, match="--scaling_factor 4"):
        datasets.paired_lists(written, 2)
    # An LR folder inside the HR folder: its images are not listed as HR images too.
    nested = tmp_path / "nested"
    save_noise_image(nested / "c.png", 120, 100)
    save_noise_image(nested / "LR" / "c.png", 30, 25)
    summary = create_data_lists([str(nested)], [], min_size=96, output_folder=str(tmp_path / "nested_lists"),
                                train_lr_folders=[str(nested / "LR")])
    assert [entry["hr"] for entry in summary["train_images"]] == [str(nested / "c.png")] and not summary["skipped"]
    with pytest.raises(ValueError, match="one --train_lr_folders folder per --train_folders"):
        create_data_lists([str(hr), str(hr / "sub")], [], output_folder=str(tmp_path / "lists"),
                          train_lr_folders=[str(lr)])


def test_paired_real_benchmark_set(shared_data, tmp_path):
    """Set14's HR images (several with sides that are not multiples of 4) pair with its LR_bicubic/X4 images."""
    summary = create_data_lists([str(shared_data / "Set14" / "HR")], [], min_size=0, output_folder=str(tmp_path),
                                train_lr_folders=[str(shared_data / "Set14" / "LR_bicubic" / "X4")])
    assert len(summary["train_images"]) == 14 and not summary["skipped"]
    assert summary["train_images"][0]["lr"].endswith("baboonx4.png")


def test_an_output_folder_that_is_a_file_is_one_line_before_any_work(tmp_path):
    save_noise_image(tmp_path / "train" / "a.png", 120, 120)
    (tmp_path / "afile").write_text("not a folder")
    for folder in ("afile", "afile/sub"):
        result = run_cli("--train_folders", "train", "--output_folder", folder, cwd=tmp_path)
        assert result.returncode == 1 and result.stderr.strip().count("\n") == 0, result.stderr
        assert result.stderr.startswith("error: The output folder afile") and "is a file" in result.stderr
        assert "Train set" not in result.stdout  # refused before the images were read
