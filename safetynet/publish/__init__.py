"""Layer 7, publish and export: versioned snapshots, warning exports, policy backtests."""
