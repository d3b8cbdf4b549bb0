"""Hardware presets and the prefill/decode cost model (roofline + calibration from profiles)."""
