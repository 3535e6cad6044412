"""Suite-wide settings. pytest-xdist runs one worker per core, so each worker uses one thread:
two workers with two threads each on a 2-core machine oversubscribe and run slower."""

import torch

torch.set_num_threads(1)
