"""vaereg's built-in plugins: model formats and key layouts.

Installed as the import package ``vaereg_plugins`` and loaded through the ``vaereg`` entry-point group,
exactly like a third-party plugin.
"""
