"""Drive a SimplerEnv (WidowX / Bridge) task with a policy served by `graphvla serve`.

SimplerEnv (ManiSkill2 real-to-sim) is not installable in this project's environment; this
example is written against its public API (`simpler_env.make`,
`get_image_from_maniskill2_obs_dict`). Start the server with a key map for this layout:

    graphvla serve runs/bridge --key-map observation/image=images[0] \\
        --key-map observation/state=state --key-map prompt=instruction
    python examples/simplerenv_client.py --task widowx_spoon_on_towel

The adapter (graphvla/configs/benchmarks/simplerenv.yaml) resizes the image to 224x224, queries every
step and averages overlapping chunks with ACT-style exponential weights, and maps the gripper
from the [0, 1] (1 = open) of Bridge data to the [-1, 1] SimplerEnv expects, binarized.
"""
from __future__ import annotations

import argparse

import numpy as np

from graphvla.client import PolicyClient, load_adapter


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", default="widowx_spoon_on_towel")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--episodes", type=int, default=24)
    ap.add_argument("--max-steps", type=int, default=120)
    args = ap.parse_args()

    import simpler_env  # needs SimplerEnv + ManiSkill2_real2sim installed
    from simpler_env.utils.env.observation_utils import get_image_from_maniskill2_obs_dict

    env = simpler_env.make(args.task)
    adapter = load_adapter("simplerenv")
    successes = 0
    with PolicyClient(args.host, args.port, api_key=args.api_key) as policy:
        for ep in range(args.episodes):
            obs, _ = env.reset(seed=ep)
            instruction = env.get_language_instruction()
            adapter.reset()
            policy.reset()
            success = False
            for _ in range(args.max_steps):
                request = {"observation/image": get_image_from_maniskill2_obs_dict(env, obs),
                           "observation/state": np.asarray(obs["agent"]["eef_pos"], dtype=np.float32),
                           "prompt": instruction}
                action = adapter.act(request, policy.infer)  # [dx, dy, dz, droll, dpitch, dyaw, gripper]
                obs, _, terminated, truncated, info = env.step(action)
                success = bool(info.get("success", False))
                if terminated or truncated:
                    break
            successes += int(success)
            print(f"{args.task} episode {ep}: {'success' if success else 'failure'}")
    print(f"{args.task}: {100.0 * successes / args.episodes:.1f}% success over {args.episodes} episodes")


if __name__ == "__main__":
    main()
