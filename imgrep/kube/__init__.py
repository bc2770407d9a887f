"""The Kubernetes API as data: kubeconfig and in-cluster access, requests, Status errors, paged lists,
pull-secret parsing and copy-Lease decisions. ``io/`` talks to the API server.
"""
