"""Model specs from Hugging Face config.json: layer kinds, KV bytes per token, fixed state bytes."""
