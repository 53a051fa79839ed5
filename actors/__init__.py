"""batchfarm's actors: the runtime, every actor, the backends and the handlers.

Installed as ``batchfarm.actors``. Modules import downwards only: settings and messages,
then backends, then the runtime, then actors and handlers (see ARCHITECTURE.md).
"""
