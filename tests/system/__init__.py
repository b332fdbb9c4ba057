"""System tests: real worker subprocesses on the real Redis and RabbitMQ."""
