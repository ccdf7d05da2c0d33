"""The py4web app of the control plane. Everything lives in ``scp.web`` (routes) and ``scp.api`` (the
REST API); this module only builds the worker's ``App`` and declares its routes when py4web imports it."""

from scp.web import App, load_config, register

app = App(load_config())
register(app)
