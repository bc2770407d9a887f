"""Registry I/O: the transport (the only ``http.client`` user for registries), the registry client,
the copy engine and the per-registry bulkheads their work runs in.
"""
