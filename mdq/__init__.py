"""MDQ, the queue contract: RabbitMQ topology, message format, batching publisher and consumer helper.

Not built yet (issue 3).
"""
