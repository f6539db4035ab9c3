"""The composition root: the ``narrative`` command line, the demo, and the wiring of settings into running parts.

The one package allowed to import all the others (lore <- narrative <- bridge <- app);
nothing imports it. ``python -m app`` is the ``narrative`` command.
"""
