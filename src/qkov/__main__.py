import sys

from qkov.cli import main

sys.exit(main())
