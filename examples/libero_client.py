"""Drive a LIBERO task suite with a policy served by `graphvla serve`.

LIBERO (robosuite + MuJoCo) is not installable in this project's environment; this example is
written against its public API (`libero.libero.benchmark`, `OffScreenRenderEnv`), as openpi's
LIBERO client is. The observation layout is openpi's, so the server needs a key map:

    # in the graph's spec (or with --key-map on the command line)
    serve:
      key_map:
        observation/image: images[0]          # agent view -> view 0 of the `images` port
        observation/wrist_image: images[1]    # wrist camera -> view 1
        observation/state: state
        prompt: instruction

    graphvla serve runs/libero --port 8000
    python examples/libero_client.py --suite libero_spatial --host 127.0.0.1 --port 8000

The benchmark adapter (graphvla/configs/benchmarks/libero.yaml) rotates the images by 180 degrees
(robosuite renders them upside down), resizes them to 224x224, executes 5 of the H predicted
actions before asking again, binarizes the gripper to -1 (open) / +1 (close) and clips.
"""
from __future__ import annotations

import argparse

import numpy as np

from graphvla.client import PolicyClient, load_adapter

NUM_WAIT_STEPS = 10  # LIBERO objects settle during the first steps; send no-ops meanwhile
MAX_STEPS = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520, "libero_90": 400}


def quat_to_axis_angle(q: np.ndarray) -> np.ndarray:
    """robosuite quaternion (x, y, z, w) -> axis-angle (3,)."""
    w = np.clip(q[3], -1.0, 1.0)
    den = np.sqrt(1.0 - w * w)
    if den < 1e-8:
        return np.zeros(3, np.float32)
    return (q[:3] * 2.0 * np.arccos(w) / den).astype(np.float32)


def libero_request(obs: dict, instruction: str) -> dict:
    """The raw request in openpi's LIBERO layout; the adapter flips and resizes the images."""
    state = np.concatenate([obs["robot0_eef_pos"], quat_to_axis_angle(obs["robot0_eef_quat"]),
                            obs["robot0_gripper_qpos"]]).astype(np.float32)
    return {"observation/image": obs["agentview_image"], "observation/wrist_image": obs["robot0_eye_in_hand_image"],
            "observation/state": state, "prompt": instruction}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--suite", default="libero_spatial")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--episodes", type=int, default=10, help="trials per task")
    args = ap.parse_args()

    from libero.libero import benchmark  # needs LIBERO installed
    from libero.libero.envs import OffScreenRenderEnv

    suite = benchmark.get_benchmark_dict()[args.suite]()
    adapter = load_adapter("libero")
    successes = total = 0
    with PolicyClient(args.host, args.port, api_key=args.api_key) as policy:
        print(f"serving {policy.metadata['name']}, expects {policy.metadata['observation_keys']}")
        for task_id in range(suite.n_tasks):
            task = suite.get_task(task_id)
            init_states = suite.get_task_init_states(task_id)
            env = OffScreenRenderEnv(bddl_file_name=suite.get_task_bddl_file_path(task_id),
                                     camera_heights=256, camera_widths=256)
            for ep in range(args.episodes):
                env.reset()
                obs = env.set_init_state(init_states[ep % len(init_states)])
                adapter.reset()
                policy.reset()
                done = False
                for t in range(MAX_STEPS[args.suite] + NUM_WAIT_STEPS):
                    if t < NUM_WAIT_STEPS:
                        obs, _, done, _ = env.step([0.0] * 6 + [-1.0])
                        continue
                    action = adapter.act(libero_request(obs, task.language), policy.infer)
                    obs, _, done, _ = env.step(action.tolist())
                    if done:
                        break
                successes += int(done)
                total += 1
                print(f"{task.language}: episode {ep} {'success' if done else 'failure'} "
                      f"({successes}/{total} so far)")
            env.close()
    print(f"{args.suite}: {100.0 * successes / max(total, 1):.1f}% success over {total} episodes")


if __name__ == "__main__":
    main()
