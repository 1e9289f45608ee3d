"""`python -m vggt_train.train --config CFG key=value ...`: the entry `accelerate launch` and the deepspeed launcher run."""

import sys

from vggt_train.train.train_cli import main

if __name__ == "__main__":
    sys.exit(main())
