"""The checker, the replicator, tenants' pull secrets, and the validating and mutating services.
"""
