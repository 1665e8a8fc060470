"""Datasets: (LR, HR) pairs from the JSON data lists, and Real-ESRGAN-style degradations."""

# ======================================================================================================
# Section: SRDataset (lead) -- (LR, HR) pairs from the JSON lists written by create_data_lists.py.
# ======================================================================================================

# --- end of section: SRDataset ---


# ======================================================================================================
# Section: Real-ESRGAN degradations and CutBlur (degradations engineer).
# ======================================================================================================

# --- end of section: degradations ---
