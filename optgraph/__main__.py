import sys

from optgraph.cli import main

sys.exit(main())
