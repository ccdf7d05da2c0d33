"""SCP, the control plane: py4web app, users and login, the SPA, the REST API.

Not built yet (issue 6).
"""
