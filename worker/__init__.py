"""The worker daemon: task registry, consumer loop, execution pools, heartbeats."""
