import sys

from pynet.plugin.cli import main

sys.exit(main())
