import sys

from pixdex.cli import main

sys.exit(main())
