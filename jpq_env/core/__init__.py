"""The compression core: what a policy is and what it costs (no data, no RL)."""
