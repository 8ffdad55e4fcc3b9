import sys

from torchspine.cli import main

sys.exit(main())
