"""The training script behind ``cyclealign train`` and ``examples/hh_rlhf.py``."""
