import sys

from vggt_train.cli import main

sys.exit(main())
