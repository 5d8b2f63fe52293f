"""``python -m dsqc`` runs the command line."""

import sys

from dsqc.driver.cli import main

sys.exit(main())
