"""Fine-grained FP8 (e4m3 weights, block scales) for qcore."""
