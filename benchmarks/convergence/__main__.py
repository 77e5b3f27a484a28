import sys

from benchmarks.convergence.run import main

if __name__ == "__main__":
    sys.exit(main())
