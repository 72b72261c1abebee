"""qcore-plugin-torchao: torchao configs, checkpoints and CPU kernels through qcore."""
