"""edgeinfer's version, in a module of its own.

Bundles, the update agent and the server record the version that made or served
something; they import it from here, not from the package root, because the root
imports them (``edgeinfer/__init__.py`` is the public face, at the top of the arrows).
"""

__version__ = "0.1.0"
