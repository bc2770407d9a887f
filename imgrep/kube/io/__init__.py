"""The Kubernetes API client and the Lease-guarded copies built on it.
"""
