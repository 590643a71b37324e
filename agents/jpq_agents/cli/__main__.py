"""``python -m jpq_agents.cli``: the ``jpq`` command without its console script.

Tests start searches this way in a subprocess (to send them signals); it runs ``main`` exactly as
the ``jpq`` entry point does.
"""

import sys

from . import main

sys.exit(main())
