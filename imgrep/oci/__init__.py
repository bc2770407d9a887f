"""The OCI distribution protocol: image references, digests, manifests, the auth flow, retries, what a
check found, and which addresses may be contacted, as pure data and functions. ``io/`` speaks it.
"""
