import sys

from benchmarks.mini_repro.run import main

sys.exit(main())
