"""Stand-ins for outside systems, run as their own processes (not part of the service)."""
