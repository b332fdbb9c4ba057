"""The message bus: kombu connections, queues and exchanges, the msgpack codec, the wire protocol.

This package stands alone (it imports neither ``workerflow`` nor ``worker``) and is imported
lazily, so a purely local flow never loads kombu.
"""
