"""The image inventory (README "Inventory"): entries, filters and rendering, and the images running
in the cluster. ``io/`` persists it and fills it from the API server and the other replicas.
"""
