"""Layer 5, the monitoring build: clean feeds -> person and household tables (低收入人口动态监测)."""
