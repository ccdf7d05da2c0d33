"""MDL, the listener: the single Massive connection, routing raw events by type into RabbitMQ.

Not built yet (issue 3).
"""
