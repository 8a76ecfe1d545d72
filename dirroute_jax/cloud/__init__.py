"""Launchers for clusters: Cloud TPU slices (tpu.py) and SLURM GPU clusters (slurm.py).

Each builds the commands that run launch/train.py on every host, as pure functions of a job
description (tested without a cloud in tests/test_launchers.py); launch/tpu.py and
launch/slurm.py are their command lines. Both check the flags meant for launch/train.py
locally first (`cli.check_train_args`) and act on its exit statuses (exit_codes.py).
"""

import os

# The checkout this package lives in (the launchers run from one, installed with
# `pip install -e .`): what is copied to TPU workers, and where SLURM nodes find the code.
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
