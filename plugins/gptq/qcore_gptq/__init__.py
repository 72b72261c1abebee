"""qcore-plugin-gptq: GPTQ quantization (with calibration) and GPTQ checkpoints in and out."""
