"""The TLS and plain-HTTP servers (``http.server`` with its defaults' pitfalls fixed).
"""
