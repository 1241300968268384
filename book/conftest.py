"""pytest configuration for `pytest --nbval book`.

The kernels nbval starts inherit this process's environment;
scripts/execute_notebooks.py sets the same NOTEBOOK_ENV, so committed outputs
and test runs see the same settings.
"""

from __future__ import annotations

import os

from notebook_tools import NOTEBOOK_ENV

for name, value in NOTEBOOK_ENV.items():
    os.environ[name] = value

collect_ignore_glob = ["**/.ipynb_checkpoints/*"]
