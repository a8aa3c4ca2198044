"""Tools only the tests use, kept out of the installed package: link fault injectors (``faults``),
the C reference build (``ctools``) and the generated sections of PROTOCOL.md (``docgen``).

Tests import them as ``from support import ...`` (pytest puts tests/ on ``sys.path``).
"""
