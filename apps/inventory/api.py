"""API routes of this app, registered by controlplane/api.py: (prefix, viewset, basename)."""

routes: list = []
