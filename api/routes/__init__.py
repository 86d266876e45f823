"""HTTP routes, one module per resource: each parses, calls a service, and serialises.

A route module imports no other route module; what several share lives in api/services/.
"""
