import sys

from decspec.cli import main

sys.exit(main())
