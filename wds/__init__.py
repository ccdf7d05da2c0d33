"""WDS, the widget data service: the authenticated WebSocket gateway for browsers and bots.

Not built yet (issue 5).
"""
