"""The manager's actors: job manager, results, telemetry, ..."""
