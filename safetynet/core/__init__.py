"""Layer 2, core: settings, the object store and every path in it, leases, the log mask (the error
classes by handling are in layer 1, `schemas.errors`, so every layer can raise them)."""
