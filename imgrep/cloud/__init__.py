"""Cloud registries without static secrets (README "Cloud registries"): which provider a host gets,
SigV4, when to renew, and each cloud's requests and answers as data. ``io/`` fetches the credentials.
"""
