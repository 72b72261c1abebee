"""qcore-plugin-bnb: bitsandbytes 4-bit (NF4/FP4, double quant) and LLM.int8, without bitsandbytes."""
