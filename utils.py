"""Helpers shared by every script: image conversions, crops, checkpoints, MATLAB-style resizing and metrics."""

# ======================================================================================================
# Section: core helpers (lead) -- conversions, crops, checkpoints, loading.
# ======================================================================================================

# --- end of section: core helpers ---


# ======================================================================================================
# Section: MATLAB-compatible bicubic resize (imresize) and evaluation metrics (evaluation engineer).
# ======================================================================================================

# --- end of section: imresize and metrics ---
