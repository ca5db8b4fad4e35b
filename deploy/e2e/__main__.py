"""``python -m deploy.e2e``: see deploy/e2e/run.py."""

from __future__ import annotations

import sys

from deploy.e2e.run import main

sys.exit(main())
