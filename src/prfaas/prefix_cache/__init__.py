"""Hybrid prefix cache bookkeeping: block hashes, pools and the global index (no tensors)."""
