"""Daemon layer: the scheduler, the long-running service and backfill coordination."""
