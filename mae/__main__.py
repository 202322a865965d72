import sys

from mae.cli import main

sys.exit(main())
