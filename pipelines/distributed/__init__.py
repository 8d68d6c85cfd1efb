"""Ray orchestration: distributed fit from the same YAML (ray_fit.py) and rollout workers (rollout_pool.py)."""
