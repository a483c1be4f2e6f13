import sys

from formula.cli.main import main

sys.exit(main())
