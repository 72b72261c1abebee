"""qcore-plugin-awq: AWQ (activation-aware weight quantization) for qcore."""
