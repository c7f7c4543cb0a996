"""``python -m cvtrain`` (what torchrun launches: ``torchrun --nproc_per_node 2 -m cvtrain fit ...``)."""
import sys

from cvtrain.cli import main

sys.exit(main())
