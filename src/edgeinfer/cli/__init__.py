"""The ``edgeinfer`` command line (see :mod:`edgeinfer.cli.main`)."""
