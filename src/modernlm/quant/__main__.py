"""`python -m modernlm.quant`: build modernlm's quantized decode kernels for this CPU (see native.py)."""

import sys

from .native import main

sys.exit(main())
