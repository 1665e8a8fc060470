"""Checkpoints: saving them so that a crash never leaves half a file, loading them so that a file can never run code.

  save_checkpoint         a dict of tensors and plain values, written atomically
  load_checkpoint         onto the CPU, weights only (pickled code is refused with one line), .pth or .safetensors
  check_checkpoint_kind   which training script must have written a file
  read_safetensors        export.py's .safetensors files, in the form of its .pth files

What a training checkpoint holds, and how a run resumes from one, is in training.py; which generator a file holds
(ours, exported, official) is read by inference.load_generator.
"""
import json
import pickle
import re
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

import utils

def save_checkpoint(state, path):
    """
    Save a checkpoint (a dict of state dicts, numbers and strings) atomically.

    A crash or Ctrl+C while saving leaves the previous checkpoint intact instead of half a file. Only tensors and
    plain Python values are saved (never pickled modules), so the file loads with weights_only=True on any device.

    :raises RuntimeError: when the file cannot be written (a full disk, no permission), saying which file, why, and
                          that the previous one is intact; the partial temporary file is removed
    """
    path = Path(path)
    try:
        # (The system's own refusals, 'No space left on device', 'Permission denied', come from atomic_write as
        # that one line already.)
        utils.atomic_write(path, lambda file: torch.save(state, file))
    except RuntimeError as error:  # torch's zip writer says only "unexpected pos 3696640 vs 3696532" on a full disk
        if "inline_container" not in str(error):
            raise  # not a short write: atomic_write's line, or a DataLoader worker's death (from a signal handler)
        free = free_bytes(path.parent)
        reason = f"the disk is full ({free / 2 ** 20:.1f} MB free)" if free is not None and free < 2 ** 20 * 64 \
            else str(error).strip()
        previous = f"the previous {path.name} there is intact" if path.is_file() else "no earlier file was replaced"
        raise RuntimeError(f"Could not write {path}: {reason}; {previous}, and no partial file is left.") from None


def free_bytes(folder):
    """The space left for files in `folder` (None if it cannot be told)."""
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None

# The files this project loads a generator from (--model, --pretrained, --srresnet_checkpoint), as the messages about
# other files list them.
MODEL_FILES = ("checkpoints of train_srresnet.py / train_srgan.py (.pth); export.py's .pth and .safetensors; official "
               "ESRGAN / Real-ESRGAN / BasicSR weights (.pth, .safetensors)")


def load_checkpoint(path, expected_kind=None):
    """
    Load a checkpoint safely: onto the CPU (so a GPU checkpoint loads anywhere) and with weights_only=True
    (so loading a file can never run code hidden in it).

    A .safetensors file (export.py writes them) holds no pickle at all: it is read with the safetensors package and
    returned in the form of export.py's .pth files (read_safetensors).

    :param path: the .pth (or .safetensors) file
    :param expected_kind: if given ('srresnet' or 'srgan'), the script that must have written it
    :return: the checkpoint dict
    :raises FileNotFoundError, ValueError: with a message that says what to do
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint not found: {path}.")
    if path.suffix.lower() == ".safetensors":
        checkpoint = read_safetensors(path)
        check_checkpoint_kind(checkpoint, expected_kind, path)
        return checkpoint
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # not a torch file (zip error, truncated, ...), or one naming Python objects
        raise unreadable_checkpoint(path, error) from None
    check_checkpoint_kind(checkpoint, expected_kind, path)
    return checkpoint


def unreadable_checkpoint(path, error):
    """The one-line ValueError for a file torch.load refused with `error`: an ONNX graph, a pickle that names Python
    objects (which could run code), or anything else that is not a PyTorch checkpoint."""
    if path.suffix.lower() == ".onnx":  # e.g. export.py's own output, given back as a model
        return ValueError(f"{path} is an ONNX graph: ONNX files are run by ONNX Runtime (or chaiNNer), not loaded "
                          f"here. Give the file it was exported from; this project loads {MODEL_FILES}.")
    # The file names Python classes or functions (torch's weights-only unpickler says "GLOBAL <name>", as
    # "Unsupported global: GLOBAL io.open ..." or "unsupported GLOBAL posix.system whose module posix is blocked"):
    # unpickling them could run arbitrary code.
    offending = re.search(r"GLOBAL (\S+)", str(error)) if isinstance(error, pickle.UnpicklingError) else None
    if offending is not None:
        return ValueError(f"Refused to load {path}: it holds Python objects ({offending.group(1)}) besides tensors "
                          f"and plain values, and loading those could run code. Only load files you trust; save "
                          f"models as state dicts.")
    if isinstance(error, pickle.UnpicklingError):
        return ValueError(f"Cannot read checkpoint {path}: it is not a PyTorch checkpoint or it is damaged.")
    return ValueError(f"Cannot read checkpoint {path}: it is not a PyTorch checkpoint or it is damaged ({error}).")


def check_checkpoint_kind(checkpoint, expected_kind, path):
    """Raise ValueError, saying which script wrote it, unless train_<expected_kind>.py wrote `checkpoint` (any file
    passes when expected_kind is None)."""
    if expected_kind is not None:
        kind = checkpoint.get("kind") if isinstance(checkpoint, dict) else None
        if kind != expected_kind:
            what = f"was written by train_{kind}.py" if kind else "is not a checkpoint of this project"
            raise ValueError(f"{path} {what}, but a checkpoint of train_{expected_kind}.py is needed here.")


def read_safetensors(path):
    """
    A .safetensors file as a dict in the form of export.py's .pth files: {weights: state dict, 'generator_arch': ...,
    'generator_kwargs': {...}}, with `weights` 'params_ema' or 'params' and the architecture from the string metadata
    export.py writes (see there). A file without that metadata (a model converted by another program) is returned
    as its bare state dict, which load_generator recognises by its key names when it is an official layout.
    """
    try:
        with safe_open(path, framework="pt", device="cpu") as file:
            metadata = file.metadata() or {}
            state_dict = {name: file.get_tensor(name) for name in file.keys()}
    except (SafetensorError, OSError) as error:
        raise ValueError(f"Cannot read {path}: it is not a safetensors file or it is damaged ({error}).") from None
    if "generator_arch" not in metadata:
        return state_dict
    try:
        kwargs = json.loads(metadata["generator_kwargs"])
    except (KeyError, json.JSONDecodeError) as error:
        raise ValueError(f"Cannot read {path}: its metadata names a generator_arch but no readable generator_kwargs "
                         f"({type(error).__name__}: {error}); the file is damaged.") from None
    checkpoint = {metadata.get("weights", "params"): state_dict, "generator_arch": metadata["generator_arch"],
                  "generator_kwargs": kwargs}
    if "data_scaling_factor" in metadata:  # the scale of the data it was trained on (an x1 model's: e.g. 4)
        checkpoint["data_scaling_factor"] = int(metadata["data_scaling_factor"])
    return checkpoint
