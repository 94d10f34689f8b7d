"""`python -m modernlm` is the `modernlm` command."""

import sys

from modernlm.cli.__main__ import main

sys.exit(main())
