"""``python -m VSPCoreLib.terminology --write | --check``: the Slicer terminology context file."""

import sys

from . import main

sys.exit(main())
