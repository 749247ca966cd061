"""Sphinx configuration of the API reference: the public modules' docstrings, rendered.

Build (warnings are errors, as in CI)::

    pip install -e '.[docs]'
    python -m sphinx -W --keep-going -b html docs/api build/api
"""

import sys
from pathlib import Path

# the source tree's package, whether or not it is installed
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from ddchm import __version__  # noqa: E402

project = "ddchm"
author = "the ddchm authors"
release = __version__
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon"]
napoleon_google_docstring = True  # the codebase's "Args:" / "Returns:" sections
napoleon_numpy_docstring = False
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"  # signatures stay short; types go beside the arguments
html_theme = "alabaster"
