"""Admission decisions as pure functions: decoding AdmissionReviews, triage, the policy, the mutation
patch, the TTL cache. ``io/`` checks and replicates images and answers the endpoints.
"""
