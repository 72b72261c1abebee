"""Loaded by pytest before any test module, for every tox env.

Without a CUDA GPU, the Triton kernel tests run on CPU under Triton's interpreter. Triton reads
TRITON_INTERPRET when it is first imported (its own library functions are decorated then), so it
is set here, before anything can import triton.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
