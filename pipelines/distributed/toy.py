"""A toy reaching task whose step cost is known, for testing and benchmarking the rollout pool.

A point on a line must reach a goal; every step burns `step_cost_s` of CPU (a busy loop, not a
sleep, so parallel speed-up is bounded by real cores, as a simulator's would be).
"""

from __future__ import annotations

import time

import numpy as np


class ToyReachEnv:
    def __init__(self, task: str = "reach", step_cost_s: float = 0.002, horizon: int = 50,
                 stop_on_success: bool = True) -> None:
        self.task, self.step_cost_s, self.horizon = task, step_cost_s, horizon
        self.stop_on_success = stop_on_success
        self.rng = np.random.default_rng(0)

    def reset(self, seed: int | None = None):
        self.rng = np.random.default_rng(seed)
        self.pos, self.goal, self.t = 0.0, float(self.rng.uniform(-1, 1)), 0
        return np.array([self.pos, self.goal], np.float32), {}

    def step(self, action):
        end = time.perf_counter() + self.step_cost_s
        while time.perf_counter() < end:
            pass
        self.pos += float(np.clip(action, -0.1, 0.1)) + float(self.rng.normal(0, 0.01))
        self.t += 1
        dist = abs(self.pos - self.goal)
        success = dist < 0.05
        return (np.array([self.pos, self.goal], np.float32), -dist, success and self.stop_on_success,
                self.t >= self.horizon, {"success": success})

    def close(self) -> None:
        pass


class ToyPolicy:
    """Proportional controller with a gain (its 'weights') and seeded exploration noise."""

    def __init__(self, gain: float = 0.5, noise: float = 0.05) -> None:
        self.gain, self.noise = gain, noise
        self.rng = np.random.default_rng(0)

    def reset(self, seed: int | None = None) -> None:
        self.rng = np.random.default_rng(None if seed is None else seed + 1_000_003)

    def act(self, obs, task: str):
        return self.gain * (obs[1] - obs[0]) + self.rng.normal(0, self.noise)

    def state_dict(self) -> dict:
        return {"gain": self.gain}

    def load_state_dict(self, state: dict) -> None:
        self.gain = float(state["gain"])
