"""`make bench`: gan-run's training speed against a plain PyTorch loop (gan_runner.bench.run)."""

import sys

from gan_runner.bench.run import main

if __name__ == "__main__":
    sys.exit(main())
