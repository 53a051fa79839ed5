"""The node supervisor (``batchfarm node``): spawns, pins, restarts and drains worker actors.

Installed as ``batchfarm.supervisor`` so that it never collides with supervisord's
``supervisor`` package, which worker machines often run beside it.
"""
