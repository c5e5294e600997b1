"""Layer 2, core: settings, the object store and its paths, leases, the log mask, errors."""
