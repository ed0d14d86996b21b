"""Asynchronous inference: a front door that queues invocations on Redis Streams, and a
worker beside each replica that answers them into object storage."""
