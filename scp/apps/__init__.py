"""py4web's apps folder of the control plane: one app, ``_default``, mounted at ``/``."""
